"""API keys, for admins: `POST /keys` (a new key, shown once), `GET /keys`, `DELETE /keys/<id>`. The keys'
rows are the broker's (app/web/security.BrokerKeys); roles and tenants: app/shared/api_keys.py."""
from __future__ import annotations

import re

from flask import Blueprint, current_app, g, jsonify, request

from app.shared.api_keys import Action, Role
from app.web.errors import ApiError
from app.web.forms import small_json
from app.web.security import principal, requires
from logger import logger

bp = Blueprint("keys", __name__)


def _keys():
    return current_app.extensions["keys"]


@bp.post("/keys")
@requires(Action.ADMIN)
def create_key():
    """A new key: JSON or form fields `tenant`, `role` (admin, builder, user), `name`. The key is in this
    answer and nowhere else, ever."""
    body = small_json(request) if request.is_json else request.form.to_dict()
    fields: dict = body if isinstance(body, dict) else {}
    tenant, role, name = fields.get("tenant"), fields.get("role"), fields.get("name")
    if not isinstance(tenant, str) or not isinstance(role, str) or role not in {r.value for r in Role} \
            or (name is not None and not isinstance(name, str)):
        raise ApiError(400, "BAD_PARAMETER", "give a tenant and a role (admin, builder or user), and optionally "
                       "a name", {"roles": [r.value for r in Role]})
    try:
        key, info = _keys().create(tenant, role, name)
    except ValueError as exc:
        raise ApiError(400, "BAD_PARAMETER", str(exc)) from None
    g.audit_extra = {"subject_key": info["id"], "subject_tenant": info["tenant"], "subject_role": info["role"]}
    logger.info("key {} made for tenant {} ({}) by {}", info["id"], info["tenant"], info["role"], principal().key_id)
    return jsonify({"status": 0, "key": key, **info}), 201


@bp.get("/keys")
@requires(Action.ADMIN)
def list_keys():
    return jsonify({"status": 0, "keys": _keys().list(request.args.get("tenant") or None)})


@bp.delete("/keys/<key_id>")
@requires(Action.ADMIN)
def revoke_key(key_id: str):
    if not re.fullmatch(r"[0-9a-f]{12}", key_id):
        raise ApiError(404, "NOT_FOUND", "no such key")
    g.audit_extra = {"subject_key": key_id}
    if not _keys().revoke(key_id):
        raise ApiError(404, "NOT_FOUND", f"no working key {key_id}")
    logger.info("key {} revoked by {}", key_id, principal().key_id)
    return jsonify({"status": 0, "id": key_id, "revoked": True})
