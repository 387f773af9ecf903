"""A front on another host: it has no job store, no dumps/ and no auth.sqlite, and gets everything from
the broker over tcp + CURVE (app/wire/client.py, app/broker/reader.py, app/web/bundles.py). A real broker runs in a
thread; the front is the real Flask app with its own data dir, talking over real sockets."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import unicodedata
import uuid
import zipfile
from pathlib import Path

import pytest
import zmq

from app.broker.store import JobStore
from app.shared.api_keys import KeyStore
from app.web.bundles import BundleCache
from app.web.errors import ApiError
from app.web.factory import create_app
from app.wire import curve as keys
from app.wire import protocol as p
from constants import Settings
from constants.states import JobState
from modelization.bundle import BUNDLE_FILE, MANIFEST_FILE
from test.stack import BrokerThread, free_port
from test.waits import wait_until

ADMIN = "an-operator-admin-key-for-the-front-tests"


@pytest.fixture
def broker_settings(tmp_path):
    return Settings.from_env(data_dir=tmp_path / "broker", broker_back=f"tcp://127.0.0.1:{free_port()}",
                             broker_front_tcp=f"tcp://127.0.0.1:{free_port()}", heartbeat_s=0.2,
                             heartbeat_liveness=3, broker_timeout_s=3.0)


@pytest.fixture
def broker(broker_settings):
    with BrokerThread(broker_settings) as b:
        yield b


def front_keys(broker_settings: Settings, folder: Path, allow: bool = True) -> Path:
    """A front's key folder as an operator makes it (`run.py front-key create`), allowed on the broker."""
    keys.create_pair(folder, "front")
    (folder / "broker.key").write_bytes((broker_settings.keys_dir / "broker.key").read_bytes())
    if allow:
        (keys.allowed_dir(broker_settings.keys_dir, keys.FRONTS) / f"{folder.name}.key").write_bytes(
            (folder / "front.key").read_bytes())
    return folder


@pytest.fixture
def front_settings(broker, broker_settings, tmp_path):
    folder = front_keys(broker_settings, tmp_path / "front-keys")
    return Settings.from_env(data_dir=tmp_path / "front", broker_front=broker_settings.broker_front_tcp,
                             front_keys=str(folder), admin_key=ADMIN, broker_timeout_s=3.0)


@pytest.fixture
def front(front_settings):
    app = create_app(front_settings)
    return app, app.test_client()


def admin(**extra) -> dict:
    return {"headers": {"X-API-Key": ADMIN}, **extra}


def finished_model(s: Settings, tenant: str | None, size: int = 2_600_000) -> tuple[str, bytes]:
    """A done job of `tenant` and its bundle in the broker's dumps/ (a zip with a manifest, several
    transfer pieces long)."""
    job_id = str(uuid.uuid4())
    store = JobStore(s.db_path, s.uploads_dir)
    store.create(job_id, "m", {}, 4, 2, tenant)
    store.progress(job_id, JobState.TRAINING, JobState.TRAINING, 0, 1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(MANIFEST_FILE, json.dumps({"model_id": job_id, "metrics": {"accuracy": 0.5}}))
        zf.writestr("padding.bin", os.urandom(size))
    (s.dumps_dir / job_id).mkdir(parents=True)
    (s.dumps_dir / job_id / BUNDLE_FILE).write_bytes(buf.getvalue())
    assert store.finish(job_id)
    store.close()
    return job_id, buf.getvalue()


def raw(settings: Settings, folder: Path, frames: list[bytes], timeout: float = 3.0) -> tuple[bytes, dict, list]:
    """One request on the broker's front socket, as a front with the keys in `folder`; TimeoutError when no
    answer comes within `timeout`, or when the request cannot even leave: a peer whose key the broker
    refused has no pipe once the handshake has failed, and a REQ send then blocks (it did, for good, under
    load: the handshake had failed before the send)."""
    sock = keys.client_socket(zmq.Context.instance(), zmq.REQ, folder, "front")
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    sock.connect(settings.broker_front_tcp)
    try:
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            raise TimeoutError("the request could not be sent") from None
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError("no answer")
        return p.unpack(sock.recv_multipart())
    finally:
        sock.close(0)


def test_a_front_on_another_host_reads_jobs_lists_and_reports_through_the_broker(front, broker_settings,
                                                                                 front_settings):
    app, c = front
    job_id, bundle = finished_model(broker_settings, "admin")
    assert not front_settings.db_path.exists() and not (front_settings.dumps_dir / job_id).exists()
    r = c.get(f"/is_available/{job_id}", **admin())
    assert r.status_code == 200 and r.json["state"] == "done" and r.json["available"] == 1, r.json
    r = c.get("/models", **admin())
    assert r.status_code == 200 and r.json["total"] == 1 and r.json["models"][0]["id"] == job_id
    r = c.get(f"/models/{job_id}/report", **admin())
    assert r.status_code == 200 and r.json["metrics"] == {"accuracy": 0.5}
    r = c.get(f"/models/{job_id}", **admin())
    assert r.status_code == 200 and r.data == bundle
    # fetched once (in pieces), cached under its sha256, checked; the second use reads the cache
    sha = hashlib.sha256(bundle).hexdigest()
    assert (front_settings.front_cache_dir / f"{job_id}.{sha}.zip").read_bytes() == bundle
    assert app.extensions["bundles"].fetches == 1
    assert c.get(f"/models/{job_id}", **admin()).data == bundle
    assert app.extensions["bundles"].fetches == 1
    assert not front_settings.db_path.exists()  # the front never made a store of its own
    r = c.get(f"/is_available/{uuid.uuid4()}", **admin())
    assert r.status_code == 404 and r.json["error"]["code"] == "NOT_FOUND"


def test_api_keys_live_on_the_broker_and_a_revocation_holds_at_the_next_request(front, broker_settings,
                                                                                front_settings):
    _, c = front
    r = c.post("/keys", json={"tenant": "team-a", "role": "builder", "name": "ci"}, **admin())
    assert r.status_code == 201, r.json
    key, key_id = r.json["key"], r.json["id"]
    # the broker's var/auth.sqlite has the row (a hash: the secret never left the front)
    row = KeyStore(broker_settings.auth_db_path).lookup(key_id)
    assert row is not None and row["tenant"] == "team-a" and key.encode() not in bytes(row["hash"])
    assert not front_settings.auth_db_path.exists()
    assert c.get("/models", headers={"X-API-Key": key}).status_code == 200
    listed = c.get("/keys", **admin()).json["keys"]
    assert [k["id"] for k in listed] == [key_id] and "hash" not in listed[0] and "salt" not in listed[0]
    assert c.delete(f"/keys/{key_id}", **admin()).status_code == 200
    r = c.get("/models", headers={"X-API-Key": key})
    assert r.status_code == 401 and r.json["error"]["code"] == "UNAUTHORIZED"
    # a key made with the command line on the broker's host works on the remote front at once
    made, _ = KeyStore(broker_settings.auth_db_path).create("team-b", "user")
    assert c.get("/models", headers={"X-API-Key": made}).status_code == 200
    # the audit line is written by the front that served the change
    audit = (front_settings.audit_log_path).read_text().splitlines()
    # (and the revoked key's refusal: every failed key check is audited, naming the key id, issue #26)
    lines = [json.loads(line) for line in audit]
    assert [line["event"] for line in lines] == ["key_create", "key_revoke", "auth_failed"]
    assert lines[-1]["key_id"] == key_id and lines[-1]["outcome"]["status"] == 401


def test_tenants_hold_through_a_remote_front_and_at_the_broker(front, broker_settings, front_settings):
    _, c = front
    job_id, _ = finished_model(broker_settings, "team-a", size=1000)
    other, _ = KeyStore(broker_settings.auth_db_path).create("team-b", "builder")
    mine, _ = KeyStore(broker_settings.auth_db_path).create("team-a", "user")
    for path in (f"/is_available/{job_id}", f"/models/{job_id}", f"/models/{job_id}/report"):
        r = c.get(path, headers={"X-API-Key": other})
        assert r.status_code == 404 and r.json["error"]["code"] == "NOT_FOUND", (path, r.json)
        assert c.get(path, headers={"X-API-Key": mine}).status_code == 200, path
    assert c.get("/models", headers={"X-API-Key": other}).json["total"] == 0
    assert c.delete(f"/models/{job_id}", headers={"X-API-Key": other}).status_code == 404
    # the broker itself answers another tenant's model as not found (a front that lies gets nothing)
    folder = Path(front_settings.front_keys)
    for frames in (p.pack(p.GETJOB, {"id": job_id, "tenant": "team-b"}),
                   p.pack(p.BUNDLE, {"id": job_id, "tenant": "team-b", "offset": 0})):
        command, header, blobs = raw(broker_settings, folder, frames)
        assert command == p.ERR and header["code"] == "NOT_FOUND" and not blobs
    _, header, _ = raw(broker_settings, folder, p.pack(p.LIST, {"limit": 10, "offset": 0, "tenant": "team-b"}))
    assert header["total"] == 0


def test_deleting_a_model_removes_its_cached_bundle_here_and_at_other_fronts_sweep(front, broker_settings,
                                                                                   front_settings, tmp_path):
    _, c = front
    job_id, bundle = finished_model(broker_settings, "admin", size=5000)
    assert c.get(f"/models/{job_id}", **admin()).status_code == 200
    # a second front host has it cached too
    other = Settings.from_env(data_dir=tmp_path / "front2", broker_front=broker_settings.broker_front_tcp,
                              front_keys=front_settings.front_keys, admin_key=ADMIN)
    app2 = create_app(other)
    assert app2.test_client().get(f"/models/{job_id}", **admin()).data == bundle
    assert c.delete(f"/models/{job_id}", **admin()).status_code == 200
    assert not list(front_settings.front_cache_dir.glob(f"{job_id}.*"))
    assert list(other.front_cache_dir.glob(f"{job_id}.*"))
    assert app2.extensions["bundles"].sweep() == 1
    assert not list(other.front_cache_dir.glob(f"{job_id}.*"))


def labelled_model(s: Settings, tenant: str | None, labels: list[str]) -> tuple[str, bytes]:
    """A done model holding `labels` as the broker knows a model's people (its erase.json), built before models
    kept their photos' features: an erasure deletes it (nothing to rebuild it from, no worker needed)."""
    job_id, bundle = finished_model(s, tenant, size=5000)
    (s.dumps_dir / job_id / "erase.json").write_text(json.dumps({"cache_keys": [], "photos": [], "labels": labels}))
    return job_id, bundle


def test_an_erased_model_is_never_served_again_by_any_front_and_leaves_their_caches(front, broker_settings,
                                                                                   front_settings, tmp_path):
    """DELETE /people/<label> through one front: the erased models' bundles leave that front at once. A front on
    another host that cached them never serves them again: every use asks the broker for the model first (404),
    the broker gives no piece of their bundles, the first request for one drops its copy, its sweep the rest."""
    _, c = front
    asked, _ = labelled_model(broker_settings, "admin", ["alice", "bob"])
    unasked, _ = labelled_model(broker_settings, "admin", ["alice", "carol"])
    kept, bundle = labelled_model(broker_settings, "admin", ["bob", "carol"])
    other = Settings.from_env(data_dir=tmp_path / "front2", broker_front=broker_settings.broker_front_tcp,
                              front_keys=front_settings.front_keys, admin_key=ADMIN)
    app2 = create_app(other)
    c2 = app2.test_client()
    for model in (asked, unasked, kept):
        assert c.get(f"/models/{model}", **admin()).status_code == 200
        assert c2.get(f"/models/{model}", **admin()).status_code == 200
    r = c.delete("/people/alice", **admin())
    assert r.status_code == 200, r.json
    assert {m["id"]: m["action"] for m in r.json["models"]} == {asked: "deleted", unasked: "deleted"}
    for model in (asked, unasked):
        assert not list(front_settings.front_cache_dir.glob(f"{model}.*"))  # the front that asked: at once
        command, header, blobs = raw(broker_settings, Path(front_settings.front_keys),
                                     p.pack(p.BUNDLE, {"id": model, "offset": 0}))
        assert command == p.ERR and header["code"] == "NOT_FOUND" and not blobs
    # the other front still holds both files, but serves neither
    assert list(other.front_cache_dir.glob(f"{asked}.*")) and list(other.front_cache_dir.glob(f"{unasked}.*"))
    for path in (f"/models/{asked}", f"/models/{asked}/card", f"/models/{asked}/report",
                 f"/models/{asked}/summary"):
        r = c2.get(path, **admin())
        assert r.status_code == 404 and r.json["error"]["code"] == "NOT_FOUND", (path, r.json)
    assert not list(other.front_cache_dir.glob(f"{asked}.*"))  # dropped at the first 404
    assert app2.extensions["bundles"].sweep() == 1  # the one nobody asked for: at the sweep
    assert not list(other.front_cache_dir.glob(f"{unasked}.*"))
    assert c2.get(f"/models/{kept}", **admin()).data == bundle  # a model without her is untouched
    assert app2.extensions["bundles"].fetches == 3  # ... and still served from the cache



@pytest.mark.parametrize("label", ["alice\u200b", "a\u00a0b", "Tony\ufe0f"])
def test_a_person_enrolled_before_invisible_characters_were_refused_can_still_be_erased(front, broker_settings,
                                                                                        label):
    """Labels with invisible characters are refused in new uploads (issue #26 row 13), but models built before
    hold such labels: the erasure (and the removal of that person) must still find them, not answer BAD_LABEL
    and leave the person's photos and embeddings in every model. Only the exact label is touched."""
    from urllib.parse import quote
    _, c = front
    held, _ = labelled_model(broker_settings, "admin", [label, "bob"])
    twin, _ = labelled_model(broker_settings, "admin", [unicodedata.normalize("NFC", "".join(
        ch for ch in label if ch.isalnum())), "bob"])
    r = c.delete(f"/people/{quote(label)}", **admin())
    assert r.status_code == 200, r.json
    assert [m["id"] for m in r.json["models"]] == [held]  # its look-alike twin is another person
    assert c.get(f"/models/{twin}", **admin()).status_code == 200

def test_an_erasure_covers_the_callers_tenant_only(front, broker_settings):
    """Two tenants both have someone labelled "pat": a builder's erasure reaches its own tenant's models; an
    admin names a tenant (`?tenant=`), or every tenant with `*` (models from before tenants too)."""
    _, c = front
    mine, _ = labelled_model(broker_settings, "team-a", ["pat", "bob"])
    theirs, _ = labelled_model(broker_settings, "team-b", ["pat", "bob"])
    legacy, _ = labelled_model(broker_settings, None, ["pat", "bob"])
    spare, _ = labelled_model(broker_settings, "team-b", ["pat", "bob"])
    builder, _ = KeyStore(broker_settings.auth_db_path).create("team-a", "builder")
    user, _ = KeyStore(broker_settings.auth_db_path).create("team-a", "user")
    assert c.delete("/people/pat", headers={"X-API-Key": user}).status_code == 403
    r = c.delete("/people/pat?tenant=team-b", headers={"X-API-Key": builder})
    assert r.status_code == 403 and r.json["error"]["code"] == "FORBIDDEN"  # only admins name a tenant
    r = c.delete("/people/pat", headers={"X-API-Key": builder})
    assert r.status_code == 200 and [m["id"] for m in r.json["models"]] == [mine], r.json
    for model in (theirs, legacy, spare):
        assert c.get(f"/is_available/{model}", **admin()).status_code == 200
    r = c.delete("/people/pat?tenant=Team%20B", **admin())
    assert r.status_code == 400 and r.json["error"]["code"] == "BAD_PARAMETER"
    assert c.delete("/people/pat", **admin()).json["models"] == []  # the admin's own tenant holds no pat
    r = c.delete("/people/pat?tenant=team-b", **admin())
    assert sorted(m["id"] for m in r.json["models"]) == sorted([theirs, spare])
    r = c.delete("/people/pat?tenant=*", **admin())
    assert [m["id"] for m in r.json["models"]] == [legacy]


def test_a_bundle_that_arrives_damaged_is_not_kept(broker, broker_settings, front_settings):
    job_id, bundle = finished_model(broker_settings, "admin", size=1_500_000)
    cache = BundleCache(front_settings.front_cache_dir, 10**9, front_settings.front_endpoint,
                        front_settings.front_keys_dir, 3.0)
    wrong = hashlib.sha256(b"not it").hexdigest()
    with pytest.raises(ApiError) as info:  # the broker refuses a piece of another bundle
        cache.path(job_id, wrong, len(bundle), None)
    assert info.value.code == "CONFLICT"
    with pytest.raises(ApiError) as info:  # a size that does not match: the file is checked, then dropped
        cache.path(job_id, hashlib.sha256(bundle).hexdigest(), len(bundle) + 10, None)
    assert info.value.http_status == 502
    assert not any(front_settings.front_cache_dir.iterdir())
    assert cache.path(job_id, hashlib.sha256(bundle).hexdigest(), len(bundle), None).read_bytes() == bundle


def test_the_cache_of_bundles_stays_within_its_bound(broker, broker_settings, front_settings):
    cache = BundleCache(front_settings.front_cache_dir, 25_000, front_settings.front_endpoint,
                        front_settings.front_keys_dir, 3.0)
    paths = []
    probe = front_settings.data_dir / "clock-probe"
    for _ in range(4):
        job_id, bundle = finished_model(broker_settings, "admin", size=10_000)
        paths.append(cache.path(job_id, hashlib.sha256(bundle).hexdigest(), len(bundle), None))
        # the cache evicts the least recently used by mtime: the next file must get a later one (the
        # filesystem's clock moves in ticks of a few ms)
        wait_until(lambda: probe.touch() or probe.stat().st_mtime_ns > paths[-1].stat().st_mtime_ns, 10,
                   interval=0.002)
    assert [q.exists() for q in paths] == [False, False, True, True]


@pytest.mark.parametrize("frames, says", [
    (p.pack(p.GETJOB, {"id": "../../victim"}), "job id"),
    (p.pack(p.GETJOB, {"id": str(uuid.uuid4()), "extra": 1}), "takes"),
    (p.pack(p.LIST, {"limit": 0, "offset": 0}), "limit"),
    (p.pack(p.LIST, {"limit": 10, "offset": -1}), "offset"),
    (p.pack(p.BUNDLE, {"id": str(uuid.uuid4()), "offset": 2**40}), "offset"),
    (p.pack(p.BUNDLE, {"id": str(uuid.uuid4()), "offset": 0, "sha256": "../x"}), "sha256"),
    (p.pack(p.KNOWN, {"ids": [str(uuid.uuid4())] * 1001}), "at most"),
    (p.pack(p.KEYGET, {"id": "' OR 1=1 --"}), "key id"),
    (p.pack(p.KEYADD, {"id": "0123456789ab", "tenant": "t", "role": "root", "salt": "00" * 16,
                       "hash": "00" * 32}), "role"),
    (p.pack(p.KEYADD, {"id": "0123456789ab", "tenant": "t", "role": "user", "salt": "zz" * 16,
                       "hash": "00" * 32}), "salt"),
    (p.pack(p.KEYADD, {"id": "0123456789ab", "tenant": "../t", "role": "user", "salt": "00" * 16,
                       "hash": "00" * 32}), "tenant"),
    (p.pack(p.KEYLIST, {"tenant": 5}), "tenant"),
    (p.pack(p.LIST, {"limit": 1, "offset": 0}, [b"extra"]), "no data frames"),
])
def test_bad_front_requests_are_refused_with_a_reason(broker, broker_settings, front_settings, frames, says):
    command, header, _ = raw(broker_settings, Path(front_settings.front_keys), frames)
    assert command == p.ERR and header["code"] == "BAD_REQUEST" and says in header["message"], header
    assert raw(broker_settings, Path(front_settings.front_keys), p.pack(p.STATUS))[0] == p.OK


def test_a_front_whose_key_is_not_allowed_gets_nothing(broker, broker_settings, tmp_path):
    folder = front_keys(broker_settings, tmp_path / "stranger", allow=False)
    with pytest.raises(TimeoutError):
        raw(broker_settings, folder, p.pack(p.STATUS), timeout=1.0)
    s = Settings.from_env(data_dir=tmp_path / "f", broker_front=broker_settings.broker_front_tcp,
                          front_keys=str(folder), admin_key=ADMIN, broker_timeout_s=1.0)
    r = create_app(s).test_client().get("/models", **admin())
    assert r.status_code == 503 and r.json["error"]["code"] == "BROKER_UNAVAILABLE"


def test_a_key_add_replayed_is_a_conflict(broker, broker_settings, front_settings):
    frames = p.pack(p.KEYADD, {"id": "0123456789ab", "tenant": "t", "role": "user", "salt": "00" * 16,
                               "hash": "00" * 32})
    folder = Path(front_settings.front_keys)
    assert raw(broker_settings, folder, frames)[0] == p.OK
    command, header, _ = raw(broker_settings, folder, frames)
    assert command == p.ERR and header["code"] == "CONFLICT"


def test_a_slow_read_does_not_hold_up_the_loop(broker, broker_settings, front_settings, monkeypatch):
    """Reads run in the broker's reader threads: while one is slow (a store that takes seconds to answer,
    a bundle off a cold disk), STATUS (answered by the loop) and the other reader still answer at once.
    The slow read is held until the others have answered: were they behind it, they would never answer
    (`raw` times out), whatever the machine's speed."""
    import app.broker.reader
    job_id, _ = finished_model(broker_settings, "admin", size=100)
    folder = Path(front_settings.front_keys)
    real = app.broker.reader.read_job
    reading, release = threading.Event(), threading.Event()

    def slow_read(db_path, wanted):
        if wanted == job_id:
            reading.set()
            release.wait(60)
        return real(db_path, wanted)

    monkeypatch.setattr(app.broker.reader, "read_job", slow_read)
    slow: list = []
    t = threading.Thread(target=lambda: slow.append(raw(broker_settings, folder, p.pack(p.GETJOB, {"id": job_id}),
                                                        60)))
    t.start()
    try:
        assert reading.wait(30), "the slow read never started"
        assert raw(broker_settings, folder, p.pack(p.STATUS), 10)[0] == p.OK
        assert raw(broker_settings, folder, p.pack(p.LIST, {"limit": 1, "offset": 0}), 10)[0] == p.OK
        assert raw(broker_settings, folder, p.pack(p.GETJOB, {"id": str(uuid.uuid4())}), 10)[1]["code"] == "NOT_FOUND"
        assert not slow  # all that while, the slow read was still held
    finally:
        release.set()
    t.join(60)
    assert slow and slow[0][0] == p.OK


def in_flight(broker) -> set[str]:
    """The ids of the uploads the broker has taken in and is writing (read from the test's thread)."""
    try:
        return set(broker.intake.storing)
    except RuntimeError:  # changed size while read: the broker's thread is at it
        return set()


def submit_frames(n: int = 2, deadline: float | None = None) -> tuple[str, list[bytes]]:
    job_id = str(uuid.uuid4())
    header: dict = {"id": job_id, "files": [{"label": f"p{i}", "filename": f"p{i}/1.jpg"} for i in range(n)]}
    if deadline is not None:
        header["deadline"] = deadline
    return job_id, p.pack(p.SUBMIT, header, [b"photo%d" % i for i in range(n)])


def test_a_submit_is_written_off_the_loop(broker, broker_settings, front_settings, monkeypatch):
    """The photos of a submit (up to FR_MAX_REQUEST_BYTES) are written by the upload writer: while one is
    being written, the loop still answers; the front gets its answer once the photos are on disk; a submit
    whose deadline passes while it is written is refused with nothing left behind. The writes are held
    until the test lets them go: the loop must answer meanwhile (or `raw` times out), and the late
    submit's deadline has passed by then, whatever the machine's speed."""
    real = JobStore.save_uploads_in
    writing, release = threading.Event(), threading.Event()

    def slow(uploads_dir, job_id, photos, extra=None):
        writing.set()
        release.wait(60)
        real(uploads_dir, job_id, photos, extra)

    monkeypatch.setattr(JobStore, "save_uploads_in", staticmethod(slow))
    folder = Path(front_settings.front_keys)
    answers: dict = {}
    job_id, frames = submit_frames()
    late_deadline = time.time() + 3.0
    late_id, late = submit_frames(deadline=late_deadline)  # passes while it waits to be written
    threads = [threading.Thread(target=lambda k=k, f=f: answers.__setitem__(k, raw(broker_settings, folder, f, 60)))
               for k, f in (("ok", frames), ("late", late))]
    for t in threads:
        t.start()
    try:
        assert writing.wait(30), "no write started"
        wait_until(lambda: {job_id, late_id} <= in_flight(broker), 30)  # both taken in, neither written yet
        command, _, _ = raw(broker_settings, folder, p.pack(p.STATUS), 10)
        assert command == p.OK
        assert "ok" not in answers  # still being written
        wait_until(lambda: time.time() > late_deadline + 0.1, 10)  # the clock is the state here
    finally:
        release.set()
    for t in threads:
        t.join(60)
    assert answers["ok"][0] == p.OK and answers["ok"][1] == {"id": job_id}
    assert raw(broker_settings, folder, p.pack(p.GETJOB, {"id": job_id}))[1]["job"]["state"] == "queued"
    assert answers["late"][0] == p.ERR and answers["late"][1]["code"] == "DEADLINE_PASSED"
    assert not (broker_settings.uploads_dir / late_id).exists()
    assert raw(broker_settings, folder, p.pack(p.GETJOB, {"id": late_id}))[1]["code"] == "NOT_FOUND"
    # the same id again: a conflict
    assert raw(broker_settings, folder, frames)[1]["code"] == "CONFLICT"


def test_an_erasure_refuses_the_uploads_in_flight_that_hold_the_person(broker, broker_settings, front_settings,
                                                                       monkeypatch):
    """A submit or derivation being written when the person is erased is refused once on disk (CONFLICT,
    nothing kept): what it holds of them was sent before the erasure, and its client learns it was not kept.
    Uploads in flight without them, or of another tenant, go on."""
    real = JobStore.save_uploads_in
    release = threading.Event()
    held: set[str] = set()  # the uploads in flight (the erasure writes its rebuilt model's uploads too)

    def slow(uploads_dir, job_id, photos, extra=None):
        if job_id in held:
            release.wait(60)  # held until the erasure has been handled
        real(uploads_dir, job_id, photos, extra)

    monkeypatch.setattr(JobStore, "save_uploads_in", staticmethod(slow))
    parent, _ = labelled_model(broker_settings, "admin", ["pat", "bob", "eve"])
    records = [{"label": who, "filename": f"{who}/1.jpg", "sha256": hashlib.sha256(who.encode()).hexdigest(),
                "key": None, "features": {}} for who in ("pat", "bob", "eve")]
    (broker_settings.dumps_dir / parent / "features.json").write_text(json.dumps(records))

    def submit(tenant: str, labels: list[str]) -> tuple[str, list[bytes]]:
        job_id = str(uuid.uuid4())
        header = {"id": job_id, "tenant": tenant, "files": [{"label": x, "filename": f"{x}/1.jpg"} for x in labels]}
        return job_id, p.pack(p.SUBMIT, header, [x.encode() for x in labels])

    derived = str(uuid.uuid4())
    flights = {
        "derive": (derived, p.pack(p.DERIVE, {"id": derived, "parent": parent, "tenant": "admin", "remove": [],
                                              "files": [{"label": "ann", "filename": "ann/1.jpg"}]}, [b"ann"])),
        "holds": submit("admin", ["pat", "ann"]), "without": submit("admin", ["ann", "bob"]),
        "other_tenant": submit("team-b", ["pat", "ann"])}
    held.update(job_id for job_id, _ in flights.values())
    folder = Path(front_settings.front_keys)
    answers: dict = {}
    threads = [threading.Thread(target=lambda k=k, f=f: answers.__setitem__(k, raw(broker_settings, folder, f, 60)))
               for k, (_, f) in flights.items()]
    for t in threads:
        t.start()
    try:  # all four taken in by the broker and not yet written: in flight
        wait_until(lambda: held <= in_flight(broker), 30)
        command, erased, _ = raw(broker_settings, folder, p.pack(p.ERASE, {"label": "pat", "tenant": "admin"}), 10)
    finally:
        release.set()
    assert command == p.OK and [m["id"] for m in erased["models"]] == [parent]
    for t in threads:
        t.join(60)
    for name in ("derive", "holds"):
        assert answers[name][0] == p.ERR and answers[name][1]["code"] == "CONFLICT", (name, answers[name])
        job_id = flights[name][0]
        assert not (broker_settings.uploads_dir / job_id).exists()
        assert raw(broker_settings, folder, p.pack(p.GETJOB, {"id": job_id}))[1]["code"] == "NOT_FOUND"
    for name in ("without", "other_tenant"):
        assert answers[name][0] == p.OK, (name, answers[name])
        assert raw(broker_settings, folder, p.pack(p.GETJOB, {"id": flights[name][0]}))[0] == p.OK
