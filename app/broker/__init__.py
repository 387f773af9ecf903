"""The broker process: its loop (fronts' requests, workers' tasks, the genetic search), the job store, the
uploads, derivations and erasures, the reader threads and the callbacks' sender. Entry point:
app/broker/loop.run_broker."""
