"""The OpenAPI document (#20): every route of the app is in it, every path in it is a route of the app,
and it is a valid OpenAPI 3.1 document. A route added without its description fails here."""
from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from app.web.factory import create_app
from constants import Settings

IGNORED_METHODS = {"HEAD", "OPTIONS"}  # Flask adds them to every GET route


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return create_app(Settings.from_env(data_dir=tmp_path_factory.mktemp("openapi"))).test_client()


def openapi_path(rule: str) -> str:
    """Flask's `/models/<job_id>` and `/static/<path:filename>` -> OpenAPI's `/models/{job_id}`."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_route_is_documented_and_every_documented_route_exists(client):
    doc = client.get("/openapi.json").get_json()
    served = {(openapi_path(r.rule), m.lower()) for r in client.application.url_map.iter_rules()
              for m in r.methods - IGNORED_METHODS}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served - documented == set(), f"routes missing from app/web/openapi.py: {sorted(served - documented)}"
    assert documented - served == set(), f"documented but not served: {sorted(documented - served)}"


def test_the_document_is_valid_openapi_3_1(client):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any error


def test_every_operation_says_what_it_answers_and_path_parameters_are_declared(client):
    doc = client.get("/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary") and op.get("responses"), (method, path)
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{([a-z_]+)}", path)), (method, path)
            for status, resp in op["responses"].items():
                assert resp.get("description"), (method, path, status)
            if any(s.startswith("4") for s in op["responses"]) and path.startswith(("/models", "/build")):
                errs = [r for s, r in op["responses"].items() if s[0] in "45"]
                assert all(r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                           for r in errs), (method, path)
