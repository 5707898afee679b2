"""The one place where an exception becomes an HTTP error: status, code and a message for people.

Every error body has one shape:

    {"status": "error", "status_code": 404, "error": "unknown_entity",
     "message": "unknown entity 'studnets' (known: programs, students, ...)"}

Handlers raise; `error_response` answers. Bad input is always a 4xx with the reason; anything
unexpected is a 500 that names the request id and keeps the details in the log.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import sqlalchemy as sa
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from syncengine.descriptors import UnknownEntity
from syncengine.engine import ContendedError, SchemaError
from syncengine.idempotency import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from syncengine.payloads import PayloadError, TooDeep
from syncengine.store import Trouble, unavailable

logger = logging.getLogger("syncengine.http")


@dataclass
class ApiError(Exception):
    """An error the service answers as such; raised where the problem is found."""

    status_code: int
    error: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


def to_api_error(exc: Exception) -> ApiError:
    """The HTTP meaning of an exception."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, TooDeep):
        return ApiError(400, "json_too_deep", str(exc))
    if isinstance(exc, PayloadError):
        code = "malformed_json" if str(exc).startswith("malformed JSON") else "invalid_body"
        return ApiError(400, code, str(exc))
    if isinstance(exc, UnknownEntity):
        return ApiError(404, "unknown_entity", str(exc.args[0]))
    if isinstance(exc, InvalidIdempotencyKey):
        return ApiError(400, "invalid_idempotency_key", str(exc))
    if isinstance(exc, IdempotencyKeyReused):
        return ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body; use a new key for a new request",
        )
    if isinstance(exc, IdempotencyKeyInUse):
        return ApiError(
            409,
            "idempotency_key_in_use",
            "the first request with this Idempotency-Key is still being processed; retry in a few seconds",
            {"Retry-After": "5"},
        )
    reason = _unstorable(exc)
    if reason is not None:
        return ApiError(
            400,
            "unstorable_value",
            f"a value in this request cannot be stored ({reason}); nothing was written: "
            "check the records for numbers beyond 64 bits and text with NUL characters",
        )
    trouble = unavailable(exc)
    if trouble is not None:
        return _database_trouble(*trouble)
    if isinstance(exc, SchemaError):
        return ApiError(503, "schema_missing", str(exc))
    if isinstance(exc, ContendedError):
        return ApiError(409, "write_conflict", str(exc), {"Retry-After": "1"})
    if isinstance(exc, ValidationException):
        return ApiError(400, "invalid_request", _validation_message(exc))
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = {k: v for k, v in (exc.headers or {}).items()}
        return ApiError(exc.status_code, code, _http_message(exc, code), headers)
    return ApiError(500, "internal_error", "internal error")


def _database_trouble(kind: Trouble, reason: str) -> ApiError:
    """503 for a database that cannot be reached or did not answer in time, or that is there but
    made a wait run past its budget (SYNCENGINE_DB_*_TIMEOUT)."""
    then = "send the request again after Retry-After seconds (a batch is one transaction: applied whole or not at all)"
    if kind == "busy":
        return ApiError(503, "database_busy", f"the database is busy: {reason}; {then}", {"Retry-After": "1"})
    return ApiError(
        503, "database_unavailable", f"the database cannot be reached: {reason}; {then}", {"Retry-After": "5"}
    )


def render(error: ApiError, request_id: str | None = None) -> bytes:
    message = error.message
    if error.status_code == 500 and request_id:
        message = f"{message}; the server log has the details under request id {request_id}"
    body = {"status": "error", "status_code": error.status_code, "error": error.error, "message": message}
    return msgspec.json.encode(body)


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's exception handler for every exception."""
    error = to_api_error(exc)
    request_id = request.scope.get("state", {}).get("request_id")
    if error.status_code == 500:
        logger.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id}})
    elif error.status_code > 500:  # a known state (database away, busy): no traceback to read
        fields = {"request_id": request_id, "error": error.error, "reason": error.message}
        logger.warning("service unavailable", extra={"fields": fields})
    # A client gone (499) is said once, by the request's log line: it is no error of ours.
    log = request.scope.get("state", {}).get("log")
    if isinstance(log, dict):
        log["error"] = error.error
    return Response(
        render(error, request_id),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def _unstorable(exc: Exception) -> str | None:
    """The reason, when the database (or its driver) refused a value that validation let through."""
    if isinstance(exc, (OverflowError, UnicodeEncodeError)):
        return str(exc)
    if isinstance(exc, sa.exc.DBAPIError):  # SQLite, and SQLAlchemy's own statements
        orig: BaseException | None = exc.orig
    elif isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError)):  # the PostgreSQL store's
        orig = exc
    else:
        return None
    sqlstate = str(getattr(orig, "sqlstate", None) or "")
    if (
        isinstance(exc, (sa.exc.DataError, asyncpg.DataError))
        or sqlstate.startswith("22")
        or "invalid input for query argument" in str(orig)
    ):
        text = str(orig).splitlines()[0]
        return re.sub(r": \[.*\] \(", " (", text)  # without the values: they are record contents
    return None


def _validation_message(exc: ValidationException) -> str:
    problems = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            where = item.get("key") or item.get("source") or "request"
            problems.append(f"{where}: {item.get('message', 'invalid')}")
    return "invalid request: " + ("; ".join(problems) if problems else str(exc.detail))


def _http_message(exc: HTTPException, code: str) -> str:
    if code == "not_found":
        return "no such endpoint; GET /v1/entities lists the sync endpoints, /schema documents them all"
    if code == "method_not_allowed":
        return f"method not allowed here ({exc.detail})"
    return str(exc.detail)
