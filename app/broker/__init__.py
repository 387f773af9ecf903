"""The broker process: one loop that owns the job store and the sockets, and the parts it is composed of."""
