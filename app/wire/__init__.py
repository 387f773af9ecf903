"""What travels between the processes: the ZeroMQ message format and its checks (protocol), the CURVE keys
that say who may talk to the broker (curve), a front's client of the broker (client) and how a call to it
fails (errors). Nothing here knows HTTP."""
