"""The worker process: a loop that talks to the broker (app/worker/loop.py) and the tasks it runs for a build
(app/worker/tasks.py: extract, evaluate, train)."""
