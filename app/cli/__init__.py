"""The command line (`python run.py ...`): the supervisor that runs the whole service (`serve`), the commands
that start one process, manage keys or predict offline, and the client of a running service (`build`)."""
