"""JSON errors: `{"status": 1, "error": {"code", "message"[, "details"]}}`, registered on the app; and what
the broker's answers (app/wire/errors.py) mean over HTTP."""
from __future__ import annotations

import errno

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.shared.api_keys import AuthError
from app.shared.storage import StoreUnavailable
from app.wire.errors import BrokerError, BrokerRefused, BrokerUnavailable
from logger import logger
from preprocessor.errors import InputError


class ApiError(Exception):
    def __init__(self, http_status: int, code: str, message: str, details: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.http_status, self.code, self.message, self.details = http_status, code, message, details
        self.headers = headers or {}


# What the broker's refusals mean over HTTP.
ERR_STATUS = {"INSUFFICIENT_STORAGE": 507, "STORE_UNAVAILABLE": 503, "DEADLINE_PASSED": 503, "CONFLICT": 409,
              "TOO_MANY_BUILDS": 429, "QUOTA_EXCEEDED": 507, "NOT_FOUND": 404, "GONE": 410, "BUSY": 503,
              "NOT_READY": 409, "NOT_DERIVABLE": 409, "UNKNOWN_PERSON": 404, "NO_NEW_PHOTOS": 400,
              "TOO_FEW_PEOPLE": 400, "TOO_MANY_FILES": 413, "CALLBACK_UNAVAILABLE": 503,
              "GROUP_MERGED": 409, "GROUP_NAMED": 409, "BAD_PARAMETER": 400, "TOO_MANY_CAMERAS": 429}
RETRY_AFTER = {"TOO_MANY_BUILDS": "30", "BUSY": "1"}  # seconds: builds take minutes, polling sooner is pointless


def from_broker(exc: BrokerError) -> ApiError:
    """A broker call's failure as the API answers it: a refusal -> the status its code has (500 for a code
    this table does not know), no answer -> 503, an answer this front cannot read -> 502."""
    if isinstance(exc, BrokerRefused):
        retry = RETRY_AFTER.get(exc.code)
        return ApiError(ERR_STATUS.get(exc.code, 500), exc.code, exc.message,
                        headers={"Retry-After": retry} if retry else None)
    return ApiError(503 if isinstance(exc, BrokerUnavailable) else 502, exc.code, exc.message)


# HTTP status for the input error codes the preprocessor raises.
INPUT_STATUS = {"ZIP_BOMB": 413, "ARCHIVE_TOO_LARGE": 413, "TOO_MANY_FILES": 413, "PHOTO_TOO_LARGE": 413}


def error_response(http_status: int, code: str, message: str, details: dict | None = None):
    error: dict[str, object] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return jsonify({"status": 1, "error": error}), http_status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(e: ApiError):
        body, status = error_response(e.http_status, e.code, e.message, e.details)
        return body, status, e.headers

    @app.errorhandler(BrokerError)
    def _broker(e: BrokerError):  # a broker call made outside app/web/broker_client.py
        return _api(from_broker(e))

    @app.errorhandler(AuthError)
    def _auth(e: AuthError):
        body, status = error_response(e.status, "UNAUTHORIZED" if e.status == 401 else "FORBIDDEN", e.message)
        return body, status, ({"WWW-Authenticate": 'Bearer realm="api-facial-recognition"'} if e.status == 401
                              else {})

    @app.errorhandler(InputError)
    def _input(e: InputError):
        return error_response(INPUT_STATUS.get(e.code, 400), e.code, e.message, e.details)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response(413, "REQUEST_TOO_LARGE", f"the request is larger than the limit of {limit} bytes")

    @app.errorhandler(StoreUnavailable)
    def _store(e: StoreUnavailable):
        logger.error("{}", e)
        return error_response(503, "STORE_UNAVAILABLE", "the job store cannot be read right now; try again "
                              "shortly (the operator is told in the service log)")

    @app.errorhandler(OSError)
    def _os(e: OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            logger.error("disk full while serving a request: {}", e)
            return error_response(507, "INSUFFICIENT_STORAGE", "the service's disk is full; nothing was stored")
        logger.exception("unhandled error")
        return error_response(500, "INTERNAL", "internal error; see the service log")

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        code = (e.name or "error").upper().replace(" ", "_")
        return error_response(e.code or 500, code, e.description or e.name)

    @app.errorhandler(Exception)
    def _internal(e: Exception):
        logger.exception("unhandled error")
        return error_response(500, "INTERNAL", "internal error; see the service log")
