"""The model views the console reads (#20), with Flask's client on a job store made here (the broker runs in
a thread: the front asks it for everything): a running search read from the broker's checkpoint, a
model's summary, and the same errors as the API's routes."""
from __future__ import annotations

import io
import json
import uuid
import zipfile

import pytest

from app.broker.store import JobStore
from app.web.factory import create_app
from constants import Settings
from constants.states import JobState
from modelization.bundle import BUNDLE_FILE, MANIFEST_FILE
from optimization.evolution import Controls, Evolution
from test.stack import BrokerThread, free_port
from test.test_evolution import fake


@pytest.fixture
def service(tmp_path):
    settings = Settings.from_env(data_dir=tmp_path, admin_key="reports-test-admin-key-of-32-characters",
                                 broker_back=f"tcp://127.0.0.1:{free_port()}")
    with BrokerThread(settings):
        app = create_app(settings)
        store = JobStore(settings.db_path, settings.uploads_dir)
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = settings.admin_key
        yield client, store, settings
        store.close()


def new_job(store: JobStore, optimize: bool) -> str:
    job_id = str(uuid.uuid4())
    store.create(job_id, "a search" if optimize else "plain", {"optimize": optimize, "seed": 1}, 12, 3)
    return job_id


def test_a_running_search_is_read_from_its_checkpoint(service):
    client, store, settings = service
    job_id = new_job(store, optimize=True)
    (settings.uploads_dir / job_id).mkdir()
    r = client.get(f"/models/{job_id}/search")
    assert r.status_code == 200 and r.json["requested"] and r.json["source"] is None and r.json["candidates"] == []

    evolution = Evolution(Controls(population=8, generations=3, budget_s=1e9, seed=1))
    for generation in range(2):  # two batches told, the third not
        for k in evolution.needed():
            evolution.tell(k, fake(k))
        evolution.advance()
        assert evolution.generation == generation + 1
    store.save_search(job_id, evolution.to_json())
    store.progress(job_id, JobState.OPTIMIZING, "generation 2 of 3", 2, 3, evolution.progress())
    body = client.get(f"/models/{job_id}/search").json
    assert body["source"] == "checkpoint" and body["state"] == "optimizing"
    assert body["progress"]["generation"] == 2 and body["progress"]["evaluations"] == evolution.evaluations
    assert len(body["candidates"]) == evolution.evaluations == len(evolution.results)
    assert {c["generation"] for c in body["candidates"]} == {0, 1}
    assert body["logbook"] == evolution.logbook and len(body["logbook"]) == 2
    assert [p["genome"] for p in body["pareto_front"]] == [p["genome"] for p in evolution.pareto_front()]
    assert body["chosen"] is None and body["finalists"] == []


def test_a_build_without_a_search_says_so(service):
    client, store, _ = service
    job_id = new_job(store, optimize=False)
    body = client.get(f"/models/{job_id}/search").json
    assert body["status"] == 0 and body["requested"] is False and body["candidates"] == []


@pytest.mark.parametrize("path", ["summary", "search"])
def test_bad_ids_unknown_models_and_unbuilt_ones_answer_as_the_api_does(service, path):
    client, store, _ = service

    def error(url):
        r = client.get(url)
        return r.status_code, r.json["error"]["code"]

    assert error(f"/models/not-an-id/{path}") == (400, "BAD_ID")
    assert error(f"/models/{uuid.uuid4()}/{path}") == (404, "NOT_FOUND")
    job_id = new_job(store, optimize=True)
    if path == "summary":
        assert error(f"/models/{job_id}/summary") == (409, "NOT_READY")
        store.fail(job_id, "NO_FACE_FOUND", "no usable face")
        assert error(f"/models/{job_id}/summary") == (409, "BUILD_FAILED")
    else:
        store.fail(job_id, "NO_FACE_FOUND", "no usable face")
        assert client.get(f"/models/{job_id}/search").json["state"] == "failed"


def test_pages_are_public_static_files_stay_in_their_folder_and_carry_a_strict_policy(service):
    client, _, _ = service
    for path in ("/", "/docs", "/static/console.css", "/static/js/console.js"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "default-src 'self'" in r.headers["Content-Security-Policy"], path
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/static/js/console.js").mimetype in ("text/javascript", "application/javascript")
    for path in ("/static/../app/web/factory.py", "/static/%2e%2e/run.py", "/static/nothing.js"):
        r = client.get(path)
        assert r.status_code == 404 and r.json["error"]["code"] == "NOT_FOUND", path


def finished(store: JobStore, settings: Settings, people: list[dict]) -> str:
    """A done job whose bundle in dumps/ holds a manifest with these people (nothing else is read here)."""
    job_id = str(uuid.uuid4())
    store.create(job_id, "many people", {}, len(people), len(people))
    store.progress(job_id, JobState.TRAINING, JobState.TRAINING, 0, 1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(MANIFEST_FILE, json.dumps({"model_id": job_id, "people": people}))
    (settings.dumps_dir / job_id).mkdir(parents=True)
    (settings.dumps_dir / job_id / BUNDLE_FILE).write_bytes(buf.getvalue())
    assert store.finish(job_id)
    return job_id


def test_a_models_people_come_a_page_at_a_time(service):
    """Issue #28: a model of thousands of people is listed page by page, filtered by a part of the label."""
    client, store, settings = service
    people = [{"label": f"Person_{i:04d}", "photos": 1 + i % 3, "used": 1, "in_model": True} for i in range(2500)]
    job_id = finished(store, settings, people)
    first = client.get(f"/models/{job_id}/people").json
    assert first["status"] == 0 and first["total"] == first["people_total"] == 2500
    assert first["limit"] == 100 and first["offset"] == 0 and first["people"] == people[:100]
    seen = []
    for offset in range(0, 2500, 500):
        page = client.get(f"/models/{job_id}/people?limit=500&offset={offset}").json
        seen += page["people"]
    assert seen == people  # every person once, in the manifest's order
    assert client.get(f"/models/{job_id}/people?offset=2500").json["people"] == []
    found = client.get(f"/models/{job_id}/people?q=person_012&limit=5").json
    assert found["total"] == 10 and found["people_total"] == 2500
    assert [p["label"] for p in found["people"]] == [f"Person_{i:04d}" for i in range(120, 125)]
    assert client.get(f"/models/{job_id}/people?q=nobody").json["total"] == 0


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=ten", "offset=-1", "q=" + "x" * 201])
def test_a_bad_page_of_people_is_refused(service, query):
    client, store, settings = service
    job_id = finished(store, settings, [{"label": "a"}, {"label": "b"}])
    r = client.get(f"/models/{job_id}/people?{query}")
    assert r.status_code == 400 and r.json["error"]["code"] == "BAD_PARAMETER"


def test_people_of_a_model_not_built_answer_as_the_api_does(service):
    client, store, _ = service
    assert client.get("/models/not-an-id/people").json["error"]["code"] == "BAD_ID"
    assert client.get(f"/models/{uuid.uuid4()}/people").status_code == 404
    job_id = new_job(store, optimize=False)
    r = client.get(f"/models/{job_id}/people")
    assert r.status_code == 409 and r.json["error"]["code"] == "NOT_READY"
