"""Small JSON bodies (the unknown faces' acts, cameras, keys) as a hostile client sends them: nested past
Python's parser, larger than any of these routes needs, not an object. Each is a clear 400 or 413, never
a 500, and refused before the broker is asked."""
from __future__ import annotations

import uuid

import pytest
from werkzeug.test import EnvironBuilder

from app.web.errors import ApiError
from app.web.forms import SMALL_JSON_BYTES, small_json

K = "attack-admin-key-" + "k" * 40
# a model that does not exist; fixed, not random: test ids must be the same in every xdist process
M = uuid.UUID("6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5")
DEEP = b"[" * 60_000  # under the 64 KB limit, far past the parser's depth
BODIES = {"deep": (DEEP, 400, "BAD_JSON"), "deep-object": (b'{"a":' * 10_000, 400, "BAD_JSON"),
          "large": (b'{"clusters": "' + b"a" * (SMALL_JSON_BYTES + 10) + b'"}', 413, "REQUEST_TOO_LARGE"),
          "not-json": (b"{'a': 1}", 400, "BAD_JSON"), "a-list": (b"[1, 2]", 400, "BAD_JSON"),
          "bad-utf8": (b'{"a": "\xff\xfe"}', 400, "BAD_JSON")}


def request_of(data: bytes, chunked: bool = False):
    builder = EnvironBuilder(method="POST", data=data, content_type="application/json")
    environ = builder.get_environ()
    if chunked:  # no Content-Length: read until the limit, no further
        del environ["CONTENT_LENGTH"]
        environ["wsgi.input_terminated"] = True
    from flask import Request
    return Request(environ)


@pytest.mark.parametrize("name", list(BODIES))
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_hostile_small_body_is_a_clear_error(name, chunked):
    data, status, code = BODIES[name]
    with pytest.raises(ApiError) as refused:
        small_json(request_of(data, chunked))
    assert (refused.value.http_status, refused.value.code) == (status, code)


def test_a_good_small_body_is_read():
    assert small_json(request_of(b'{"clusters": ["0123456789abcdef"]}')) == {"clusters": ["0123456789abcdef"]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from app.web.factory import create_app
    from constants import Settings
    app = create_app(Settings.from_env(environ={"FR_ADMIN_KEY": K}, data_dir=tmp_path_factory.mktemp("json")))
    return app.test_client()


@pytest.mark.parametrize("path", [f"/models/{M}/unknown/merge", f"/models/{M}/unknown/0123456789abcdef/faces/"
                                  "fedcba9876543210/move", "/cameras", "/keys"])
def test_the_routes_answer_a_body_nested_too_deep_with_400_not_500(client, path):
    r = client.post(path, data=DEEP, content_type="application/json", headers={"X-API-Key": K})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "BAD_JSON", r.get_data()[:200]
