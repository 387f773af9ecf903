"""What more than one process keeps or checks: API keys and roles (api_keys), a job as the API shows it and
new job ids (jobs), the failures of what is stored (storage), callbacks' rules and signature (callbacks),
the metrics (metrics) and the warm-up of the face pipeline (warm_up). It imports no process's package."""
