"""Who may do what, on the real stack: API keys, roles, tenants, quotas, browsers, TLS, the audit trail."""
from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
import uuid

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from test.conftest import pick_people
from test.stack import ROOT, Stack, photo_files, self_signed_cert
from test.waits import wait_until


def make_key(stack: Stack, tenant: str, role: str) -> str:
    """`run.py keys create` while the service runs: the key is the last line of its output."""
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "keys", "create", "--tenant", tenant, "--role",
                          role, "--data-dir", str(stack.data_dir)], capture_output=True, text=True, check=True,
                         env=stack.env).stdout
    key = out.strip().splitlines()[-1]
    assert re.fullmatch(r"fr_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key), out
    return key


def key_id(key: str) -> str:
    return key.split("_")[1]


# the module's `stack` (conftest.py). Its tests send hundreds of wrong keys from one address on purpose: the
# limit on failed key checks (tested in test_tenant_attacks.py) would answer them 429, so it is off here.
STACK = {"workers": 1, "env": {"FR_CORS_ORIGINS": "https://console.example", "FR_AUTH_FAILURES_PER_MIN": "0"}}


@pytest.fixture(scope="module")
def keys(stack):
    k = {(t, r): make_key(stack, t, r) for t in ("acme", "globex") for r in ("builder", "user")}
    k["revoked"] = make_key(stack, "acme", "builder")
    subprocess.run([sys.executable, str(ROOT / "run.py"), "keys", "revoke", key_id(k["revoked"]), "--data-dir",
                    str(stack.data_dir)], check=True, capture_output=True, env=stack.env)
    return k


@pytest.fixture(scope="module")
def models(stack, keys, faces_dir):
    """One finished model per tenant, each built with its tenant's builder key."""
    out = {}
    for tenant, skip in (("acme", 0), ("globex", 2)):
        people = dict(list(pick_people(faces_dir, 2 + skip, 3).items())[skip:])
        r = stack.post("/build_recognizer", key=keys[(tenant, "builder")], timeout=120,
                       files=[("images", (n, d)) for n, d in photo_files(people)])
        assert r.status_code == 202, r.text
        out[tenant] = r.json()["id"]
    for job in out.values():
        stack.wait_state(job, ("done",))
    return out


GROUP, FACE = "0123456789abcdef", "fedcba9876543210"  # an unknown-face group and face that do not exist
NO_ID = str(uuid.uuid4())  # a video and a camera that do not exist


def routes(models: dict, photo: bytes, victim_key: str) -> list[tuple[str, str, str, dict]]:
    """(method, path, action, request arguments) for every route but GET /is_alive, on acme's model."""
    model = models["acme"]
    return [
        ("POST", "/build_recognizer", "build",
         {"files": [("images", ("a/1.jpg", photo)), ("images", ("b/1.jpg", photo))]}),
        ("GET", f"/is_available/{model}", "read", {}),
        ("GET", f"/is_available?id={model}", "read", {}),
        ("GET", "/models", "read", {}),
        ("GET", f"/models/{model}", "read", {}),
        ("GET", f"/models/{model}/report", "read", {}),
        ("GET", f"/models/{model}/summary", "read", {}),
        ("GET", f"/models/{model}/search", "read", {}),
        ("GET", "/metrics", "admin", {}),
        ("POST", f"/models/{model}/predict", "predict", {"files": {"image": ("p.jpg", photo)}}),
        ("POST", f"/models/{model}/verify", "predict",
         {"files": {"image": ("p.jpg", photo), "image2": ("q.jpg", photo)}}),
        ("GET", f"/models/{model}/card", "read", {}),
        # derivations refused after the role and tenant checks (no photo / no such person): no work is made
        ("POST", f"/models/{model}/people", "build", {"files": [("images", ("c/1.jpg", b"not a photo"))]}),
        ("DELETE", f"/models/{model}/people/Nobody_Here", "build", {}),
        ("DELETE", "/people/Nobody_Here", "delete", {}),
        # unknown faces (issue #28): groups and faces that do not exist, refused after the role and tenant checks
        ("GET", f"/models/{model}/unknown", "read", {}),
        ("GET", f"/models/{model}/unknown/{GROUP}/faces/{FACE}", "read", {}),
        ("POST", f"/models/{model}/unknown/{GROUP}/name", "build", {"json": {"label": "Nobody_Here"}}),
        ("POST", f"/models/{model}/unknown/merge", "build", {"json": {"clusters": [GROUP, FACE]}}),
        ("POST", f"/models/{model}/unknown/{GROUP}/faces/{FACE}/move", "build", {"json": {}}),
        ("DELETE", f"/models/{model}/unknown/{GROUP}", "build", {}),
        ("POST", f"/models/{model}/corrections", "build", {"json": {"label": "Nobody_Here", "faces": [FACE]}}),
        # recorded videos and cameras (issue #27): a file that is not a video, a camera without a URL, and ids
        # that do not exist, refused after the role and tenant checks
        ("POST", f"/models/{model}/video", "predict", {"files": {"video": ("v.mp4", b"not a video")}}),
        ("GET", "/videos", "read", {}),
        ("GET", f"/videos/{NO_ID}", "read", {}),
        ("GET", f"/videos/{NO_ID}/tracks/1.jpg", "read", {}),
        ("DELETE", f"/videos/{NO_ID}", "delete", {}),
        ("POST", "/cameras", "build", {"json": {"name": "door"}}),
        ("GET", "/cameras", "read", {}),
        ("GET", f"/cameras/{NO_ID}", "read", {}),
        ("GET", f"/cameras/{NO_ID}/events", "read", {}),
        ("GET", f"/cameras/{NO_ID}/events/1/snapshot", "read", {}),
        ("DELETE", f"/cameras/{NO_ID}", "delete", {}),
        ("DELETE", f"/models/{uuid.uuid4()}", "delete", {}),
        ("POST", "/keys", "admin", {"json": {"tenant": "acme", "role": "user"}}),
        ("GET", "/keys", "admin", {}),
        ("DELETE", f"/keys/{key_id(victim_key)}", "admin", {}),
    ]


def error_code(r: requests.Response) -> tuple[int, str | None]:
    try:
        return r.status_code, r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return r.status_code, None


def test_every_route_of_the_app_is_in_the_table(stack, models, keys, faces_dir):
    """The table below is the contract: a route added without a role check fails here."""
    from app.web.factory import create_app
    from constants import Settings
    app = create_app(Settings.from_env(data_dir=stack.data_dir))
    rules = {(m, re.sub(r"<[^>]+>", "X", rule.rule)) for rule in app.url_map.iter_rules()
             for m in rule.methods - {"HEAD", "OPTIONS"} if rule.endpoint != "static"}
    photo = b"x"
    listed = {(m, re.sub(r"[0-9a-f-]{36}|[0-9a-f]{16}|[0-9a-f]{12}|(?<=/people/)[^/]+|(?<=/tracks/)\d+|(?<=/events/)\d+",
                                    "X", p.split("?")[0]))
              for m, p, _, _ in
              routes(models, photo, keys["revoked"])}
    public = {("GET", "/is_alive"), ("GET", "/"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/static/X")}
    assert rules - public == listed


@pytest.mark.parametrize("credential", ["none", "malformed", "basic", "unknown", "revoked"])
def test_every_route_refuses_a_caller_without_a_working_key(stack, models, keys, faces_dir, credential):
    photo = next((faces_dir / "lfw62").glob("*/*.jpg")).read_bytes()
    unknown = f"fr_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)[:43]}"
    headers = {"none": {}, "malformed": {"X-API-Key": "not a key"}, "basic": {"Authorization": "Basic YTpi"},
               "unknown": {"X-API-Key": unknown}, "revoked": {"X-API-Key": keys["revoked"]}}[credential]
    for method, path, _, kw in routes(models, photo, keys[("globex", "user")]):
        r = stack.request(method, path, key="", headers=headers, timeout=60, **kw)
        assert error_code(r) == (401, "UNAUTHORIZED"), (method, path, r.text[:200])
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert stack.get("/is_alive", key="", timeout=10).status_code == 200  # the only open route


def test_a_role_may_do_what_it_allows_and_no_more(stack, models, keys, faces_dir):
    photo = next((faces_dir / "lfw62").glob("*/*.jpg")).read_bytes()
    allowed = {"builder": {"build", "read", "predict", "delete"}, "user": {"read", "predict"}}
    for role, actions in allowed.items():
        for method, path, action, kw in routes(models, photo, keys[("globex", "user")]):
            r = stack.request(method, path, key=keys[("acme", role)], timeout=60, **kw)
            if action in actions:
                assert r.status_code not in (401, 403), (role, method, path, r.text[:200])
            else:
                assert error_code(r) == (403, "FORBIDDEN"), (role, method, path, r.text[:200])


def test_another_tenants_model_is_not_found(stack, models, keys, faces_dir):
    photo = next((faces_dir / "lfw62").glob("*/*.jpg")).read_bytes()
    theirs = models["acme"]
    person = next(faces_dir.glob("lfw62/*/*.jpg"))
    derive = {"files": [("images", (f"{person.parent.name}/1.jpg", person.read_bytes()))]}
    for key in (keys[("globex", "builder")], keys[("globex", "user")]):
        for method, path in (("GET", f"/is_available/{theirs}"), ("GET", f"/models/{theirs}"),
                             ("GET", f"/models/{theirs}/report"), ("POST", f"/models/{theirs}/predict"),
                             ("POST", f"/models/{theirs}/verify"), ("GET", f"/models/{theirs}/card"),
                             ("POST", f"/models/{theirs}/people"), ("DELETE", f"/models/{theirs}/people/x"),
                             ("DELETE", f"/models/{theirs}")):
            kw = {"files": {"image": ("p.jpg", photo)}} if path.endswith("predict") else \
                {"files": {"image": ("p.jpg", photo), "image2": ("q.jpg", photo)}} if path.endswith("verify") else \
                derive if path.endswith("people") else {}
            r = stack.request(method, path, key=key, timeout=60, **kw)
            if (method == "DELETE" or "/people" in path) and key == keys[("globex", "user")]:
                assert error_code(r) == (403, "FORBIDDEN")  # its role is checked first: a user changes nothing
                continue
            assert error_code(r) == (404, "NOT_FOUND"), (method, path, r.text[:200])
            assert r.json()["error"]["message"] == f"no model with id {theirs}"  # as for an id that never was
        listed = stack.get("/models", key=key, timeout=10).json()["models"]
        assert theirs not in [m["id"] for m in listed] and models["globex"] in [m["id"] for m in listed]
    assert stack.get(f"/models/{theirs}", key=keys[("acme", "user")], timeout=30).status_code == 200
    everyone = stack.get("/models", timeout=10).json()["models"]  # the admin sees every tenant, and filters
    assert {models["acme"], models["globex"]} <= {m["id"] for m in everyone}
    only = stack.get("/models?tenant=globex", timeout=10).json()["models"]
    assert [m["id"] for m in only] == [models["globex"]]


def test_erasing_a_person_touches_only_the_callers_tenant(stack, keys, faces_dir):
    """Two tenants each have someone labelled "Pat_Same_Name" (different people, different photos): erasing
    that label with one tenant's key rebuilds that tenant's model alone; the other's is untouched."""
    people = list(pick_people(faces_dir, 6, 3).values())
    shared = "Pat_Same_Name"
    built = {}
    for tenant, photos in (("acme", people[0:3]), ("globex", people[3:6])):
        labelled = {shared: photos[0], photos[1][0].parent.name: photos[1], photos[2][0].parent.name: photos[2]}
        r = stack.post("/build_recognizer", key=keys[(tenant, "builder")], timeout=120,
                       files=[("images", (n, d)) for n, d in photo_files(labelled)])
        assert r.status_code == 202, r.text
        built[tenant] = r.json()["id"]
    for job in built.values():
        stack.wait_state(job, ("done",))
    # who may erase, and where
    assert error_code(stack.delete(f"/people/{shared}", key=keys[("acme", "user")], timeout=30)) == (403, "FORBIDDEN")
    assert error_code(stack.delete(f"/people/{shared}?tenant=acme", key=keys[("globex", "builder")],
                                   timeout=30)) == (403, "FORBIDDEN")  # only an admin names another tenant
    assert error_code(stack.delete(f"/people/{shared}?tenant=Not%20A%20Tenant", timeout=30)) == (400, "BAD_PARAMETER")

    r = stack.delete(f"/people/{shared}", key=keys[("globex", "builder")], timeout=120)
    assert r.status_code == 200, r.text
    touched = r.json()["models"]
    assert [m["id"] for m in touched] == [built["globex"]] and touched[0]["action"] == "rebuilt", touched
    new_id = touched[0]["new_id"]
    # acme's model and its Pat are as they were
    acme = stack.get(f"/models/{built['acme']}/report", key=keys[("acme", "user")], timeout=30)
    assert acme.status_code == 200 and acme.json()["state"] == "done"
    assert shared in acme.json()["manifest"]["labels"]
    # globex's old model is gone; its rebuild is globex's, without Pat, and derived from it
    assert error_code(stack.get(f"/is_available/{built['globex']}", key=keys[("globex", "user")], timeout=30)) == \
        (404, "NOT_FOUND")
    stack.wait_state(new_id, ("done",))
    again = stack.get(f"/models/{new_id}/report", key=keys[("globex", "user")], timeout=30).json()
    assert shared not in again["manifest"]["labels"] and len(again["manifest"]["labels"]) == 2
    assert again["parent"] == built["globex"]
    assert error_code(stack.get(f"/models/{new_id}", key=keys[("acme", "user")], timeout=30)) == (404, "NOT_FOUND")
    # the audit trail has the erasure, and no person's name
    lines = [json.loads(line) for line in (stack.data_dir / "var/logs/audit.log").read_text().splitlines()]
    erasures = [e for e in lines if e["event"] == "erase" and e["outcome"]["status"] == 200]
    assert erasures and all(e["tenant"] in ("acme", "globex") for e in erasures)
    assert shared not in (stack.data_dir / "var/logs/audit.log").read_text()


def test_keys_over_http_for_admins(stack):
    r = stack.post("/keys", json={"tenant": "initech", "role": "user", "name": "tv wall"}, timeout=10)
    assert r.status_code == 201 and r.json()["tenant"] == "initech"
    key = r.json()["key"]
    assert stack.get("/models", key=key, timeout=10).status_code == 200
    listed = stack.get("/keys", timeout=10).json()["keys"]
    entry = next(k for k in listed if k["id"] == key_id(key))
    assert "key" not in entry and key not in json.dumps(listed)  # a key is shown once, when it is made
    for bad in ({"tenant": "Bad Tenant!", "role": "user"}, {"tenant": "x", "role": "root"}, {"role": "user"}):
        assert error_code(stack.post("/keys", json=bad, timeout=10))[0] == 400
    assert stack.delete(f"/keys/{key_id(key)}", timeout=10).status_code == 200
    assert error_code(stack.get("/models", key=key, timeout=10)) == (401, "UNAUTHORIZED")
    assert error_code(stack.delete(f"/keys/{key_id(key)}", timeout=10)) == (404, "NOT_FOUND")


def test_a_revocation_holds_at_once_in_every_web_process(stack):
    key = make_key(stack, "acme", "user")
    pids = set()
    for _ in range(40):  # until both web processes have checked (and cached) this key
        assert stack.get("/models", key=key, timeout=10).status_code == 200
        pids = set(re.findall(r"\[pid: (\d+)\] 127\.0\.0\.1 \[[^\]]+\] GET /models =>", stack.log.read_text()))
        if len(pids) >= 2:
            break
    assert len(pids) >= 2, "both web processes should have served this key"
    subprocess.run([sys.executable, str(ROOT / "run.py"), "keys", "revoke", key_id(key), "--data-dir",
                    str(stack.data_dir)], check=True, capture_output=True, env=stack.env)
    assert all(error_code(stack.get("/models", key=key, timeout=10)) == (401, "UNAUTHORIZED") for _ in range(20))


def test_keys_list_and_revoke_on_the_command_line(stack):
    key = make_key(stack, "cli-tenant", "builder")
    run = [sys.executable, str(ROOT / "run.py"), "keys"]
    out = subprocess.run([*run, "list", "--data-dir", str(stack.data_dir)], capture_output=True, text=True,
                         check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith(key_id(key)))
    assert line.split()[:4] == [key_id(key), "cli-tenant", "builder", "active"]
    assert key.split("_", 2)[2] not in out  # the secret (it may itself hold a "_")
    r = subprocess.run([*run, "revoke", "000000000000", "--data-dir", str(stack.data_dir)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "no active key" in r.stderr


def test_answers_carry_the_browser_safety_headers(stack, models):
    for path in ("/models", f"/models/{models['acme']}", f"/models/{models['acme']}/report", "/is_alive"):
        r = stack.get(path, timeout=30)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["Cache-Control"] == "no-store", path


def test_a_page_of_another_origin_cannot_change_anything(stack, models):
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}):
        for method, path in (("POST", "/build_recognizer"), ("DELETE", f"/models/{models['acme']}"),
                             ("POST", "/keys")):
            r = stack.request(method, path, headers=headers, timeout=30)
            assert error_code(r) == (403, "FORBIDDEN"), (headers, method, path, r.text[:200])
    # listed in FR_CORS_ORIGINS, or the service's own pages: the request is judged on its merits
    r = stack.post("/build_recognizer", headers={"Origin": "https://console.example"}, timeout=30)
    assert error_code(r) == (400, "NO_FILES") and r.headers["Access-Control-Allow-Origin"] == "https://console.example"
    assert error_code(stack.post("/build_recognizer", headers={"Origin": stack.url}, timeout=30)) == (400, "NO_FILES")
    # reads are not refused (a browser keeps the answer from the other page: no CORS header)
    r = stack.get("/models", headers={"Origin": "https://evil.example"}, timeout=30)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_the_audit_trail_has_a_line_per_build_download_delete_and_key_change(stack, models, keys):
    stack.get(f"/models/{models['acme']}", key=keys[("acme", "user")], timeout=30)
    stack.get(f"/models/{models['acme']}", key=keys[("globex", "user")], timeout=30)  # refused: audited too
    lines = [json.loads(line) for line in (stack.data_dir / "var/logs/audit.log").read_text().splitlines()]
    events = {(e["event"], e["key_id"], e["outcome"]["status"]) for e in lines}
    assert ("build", key_id(keys[("acme", "builder")]), 202) in events
    assert ("download", key_id(keys[("acme", "user")]), 200) in events
    assert ("download", key_id(keys[("globex", "user")]), 404) in events
    assert any(e["event"] == "key_create" for e in lines) and any(e["event"] == "key_revoke" for e in lines)
    build = next(e for e in lines if e["event"] == "build" and e["model_id"] == models["acme"])
    assert build["tenant"] == "acme" and build["remote"] == "127.0.0.1"


def test_no_key_ever_appears_in_a_log(stack, keys):
    texts = [stack.log.read_text(errors="replace")] + [
        f.read_text(errors="replace") for f in (stack.data_dir / "var/logs").glob("*.log")]
    for key in [*keys.values(), stack.admin_key]:
        secret = key.split("_", 2)[2] if key.startswith("fr_") else key
        assert not any(secret in t for t in texts)


# --- bootstrap ---------------------------------------------------------------------------------------
def test_first_start_makes_an_admin_key_file_that_only_its_owner_reads(stacks):
    s = stacks.make("boot", warm_up=False)
    del s.env["FR_ADMIN_KEY"]
    s.start()
    key_file = s.data_dir / "var" / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert s.get("/models", key=key, timeout=10).status_code == 200
    log = s.log.read_text()
    assert str(key_file) in log and key.split("_", 2)[2] not in log
    assert s.get("/models", key=s.admin_key, timeout=10).status_code == 401  # no FR_ADMIN_KEY here
    s.stop()
    again = stacks.make(data_dir=s.data_dir, warm_up=False)  # the next start keeps that key and makes no other
    del again.env["FR_ADMIN_KEY"]
    again.start()
    assert (again.data_dir / "var" / "admin.key").read_text().strip() == key
    assert again.get("/models", key=key, timeout=10).status_code == 200


def test_an_operators_admin_key_means_no_key_file(stack):
    assert not (stack.data_dir / "var" / "admin.key").exists()
    assert stack.get("/keys", timeout=10).status_code == 200


def test_keys_off_only_on_loopback(tmp_path, stacks):
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "serve", "--host", "0.0.0.0", "--data-dir",
                        str(tmp_path)], env={**os.environ, "FR_AUTH": "0"}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "FR_AUTH=0" in r.stderr and "loopback" in r.stderr
    s = stacks.start("open", env={"FR_AUTH": "0"}, warm_up=False)
    assert s.get("/models", key="", timeout=10).status_code == 200


# --- quotas ---------------------------------------------------------------------------------------
def test_quotas_active_builds_bytes_and_rate(stacks, faces_dir):
    s = stacks.start("quota", env={"FR_MAX_ACTIVE_BUILDS": "1", "FR_RATE_LIMIT_PER_MIN": "30",
                                   "FR_TENANT_MAX_BYTES": "300000"}, warm_up=False)
    a, b = make_key(s, "acme", "builder"), make_key(s, "globex", "builder")
    files = [("images", (n, d)) for n, d in photo_files(pick_people(faces_dir, 2, 3))]
    assert s.post("/build_recognizer", key=a, files=files, timeout=60).status_code == 202
    r = s.post("/build_recognizer", key=a, files=files, timeout=60)
    assert error_code(r) == (429, "TOO_MANY_BUILDS") and int(r.headers["Retry-After"]) > 0
    assert s.post("/build_recognizer", key=b, files=files, timeout=60).status_code == 202  # its own count
    big = [("images", (f"p{i}/x.jpg", data)) for i, (_, (_, data)) in enumerate(files * 20)]
    r = s.post("/build_recognizer", key=make_key(s, "initech", "builder"), files=big, timeout=60)
    assert error_code(r) == (507, "QUOTA_EXCEEDED"), r.text[:200]
    user = make_key(s, "acme", "user")
    # the limit counts per clock minute: the 36 calls below start early in one (the clock is the state)
    wait_until(lambda: time.time() % 60 <= 40, timeout=30, interval=0.5)
    codes = [s.get("/models", key=user, timeout=10).status_code for _ in range(35)]  # over both processes
    assert codes[:30] == [200] * 30 and codes[-1] == 429
    r = s.get("/models", key=user, timeout=10)
    assert error_code(r) == (429, "RATE_LIMITED") and 0 < int(r.headers["Retry-After"]) <= 61
    assert s.get("/models", key=a, timeout=10).status_code == 200  # another key has its own count


# --- TLS ------------------------------------------------------------------------------------------
def test_https_with_a_certificate_made_here(tmp_path, stacks, monkeypatch):
    cert, key = self_signed_cert(tmp_path, "127.0.0.1")
    s = stacks.make("tls", env={"FR_TLS_CERT": str(cert), "FR_TLS_KEY": str(key)}, warm_up=False)
    s.url = s.url.replace("http://", "https://")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    s.start()
    r = s.get("/models", timeout=10)
    assert r.status_code == 200 and r.url.startswith("https://")
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP is not served on that port
        requests.get(s.url.replace("https://", "http://") + "/is_alive", timeout=5)


# --- any header at all ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from app.web.factory import create_app
    from constants import Settings
    app = create_app(Settings.from_env(data_dir=tmp_path_factory.mktemp("hyp-auth")))
    return app.test_client()


header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_categories=("Cs",)),
                      max_size=120)


@hyp_settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(api_key=st.one_of(st.none(), header_text, st.builds(lambda a, b: f"fr_{a}_{b}", header_text, header_text)),
       authorization=st.one_of(st.none(), header_text, st.builds("Bearer {}".format, header_text)),
       path=st.sampled_from(["/models", "/keys", f"/models/{uuid.uuid4()}", "/is_available/x", "/build_recognizer"]))
def test_random_headers_never_make_a_500(client, api_key, authorization, path):
    headers = {k: v for k, v in (("X-API-Key", api_key), ("Authorization", authorization)) if v is not None}
    r = client.get(path, headers=headers) if path != "/build_recognizer" else client.post(path, headers=headers)
    # (429: past FR_AUTH_FAILURES_PER_MIN wrong keys from this address, the next are refused before any check)
    assert r.status_code in (401, 403, 404, 405, 429), (r.status_code, r.get_data()[:200])
