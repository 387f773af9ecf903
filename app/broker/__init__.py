"""The broker process: one loop that owns the job store and the sockets (app/broker/loop.py), and the parts
it is composed of: fronts' requests, intake, planning, the search, the worker pool, results, deletion,
erasure, the reader threads and the callbacks' sender. Entry point: app/broker/loop.run_broker."""
