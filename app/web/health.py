"""`GET /is_alive`: the one route without an API key, for load balancers and orchestrators."""
from __future__ import annotations

from flask import Blueprint, jsonify

from app.web import broker_client as client
from app.web.context import settings
from app.web.errors import ApiError
from constants import VERSION

bp = Blueprint("health", __name__)


@bp.get("/is_alive")
def is_alive():
    """Alive when the broker answers, at least one worker is connected, the broker can read its store,
    its data disk has its reserve free and its callbacks' sender turns."""
    s = settings()
    try:
        st = client.status(s.front_endpoint, s.front_keys_dir, min(s.broker_timeout_s, 3.0))
    except ApiError as exc:
        return jsonify({"status": 1, "alive": False, "workers": 0, "queued": None, "version": VERSION,
                        "error": {"code": exc.code, "message": exc.message}}), 503
    body = {"status": 0, "alive": True, "workers": st["workers"], "busy": st["busy"],
            "warming": st.get("warming", 0), "queued": st["queued"], "disk_free_bytes": st["disk_free_bytes"],
            "version": VERSION}
    problem = None
    if not st["store"]["ok"]:
        problem = ("STORE_UNAVAILABLE", st["store"].get("message", "the job store cannot be read"))
    else:
        try:  # what the fronts' reads meet: a fresh read-only connection in a broker's reader thread
            client.list_jobs(s.front_endpoint, s.front_keys_dir, 1, 0, min(s.broker_timeout_s, 3.0))
        except ApiError as exc:
            problem = (exc.code, exc.message)
    if problem is None and st.get("disk_full"):
        problem = ("INSUFFICIENT_STORAGE", "the data disk is full: builds wait until there is room")
    if problem is None and st["disk_free_bytes"] < s.min_free_bytes:
        problem = ("INSUFFICIENT_STORAGE", f"{st['disk_free_bytes']} bytes free on the data disk, "
                                           f"{s.min_free_bytes} needed in reserve")
    if problem is None and not st.get("callbacks", {"ok": True})["ok"]:  # a stuck sender: no tenant gets callbacks
        problem = ("CALLBACKS_STUCK", st["callbacks"].get("message", "the callbacks' sender is stuck"))
    if problem is None and st["workers"] == 0:
        problem = ("NO_WORKERS", "no worker is connected to the broker")
    if problem:
        body.update(status=1, alive=False, error={"code": problem[0], "message": problem[1]})
    return jsonify(body), 503 if problem else 200
