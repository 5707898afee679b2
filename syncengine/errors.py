"""The one place where an exception becomes an HTTP error: status, code and a message for people.

Every error body has one shape:

    {"status": "error", "status_code": 404, "error": "unknown_entity",
     "message": "unknown entity 'x' (known: ...every entity of the descriptors)"}

Handlers raise; `error_response` answers. Bad input is always a 4xx with the reason; anything
unexpected is a 500 that names the request id and keeps the details in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from syncengine.channels import ChannelRefused
from syncengine.engine import ContendedError
from syncengine.exceptions import (
    BadInput,
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    NotFound,
    SyncEngineError,
    Unavailable,
    UnstorableValue,
)
from syncengine.fetching import ZohoUnreachable
from syncengine.idempotency import IdempotencyKeyInUse, IdempotencyKeyReused
from syncengine.moodle import MoodleError, MoodleUnavailable
from syncengine.store import translate
from syncengine.tenants import CredentialError
from syncengine.zoho import ZohoError, ZohoUnavailable

logger = logging.getLogger("syncengine.http")


@dataclass
class ApiError(Exception):
    """An answer of the HTTP edge's own (a header, the body's size or type, a key): raised where
    the problem is found, answered as it is. The engine's failures are mapped by `HTTP`."""

    status_code: int
    error: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Http:
    """How a failure of the engine is answered: a status, and headers it always carries."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)


#: What to do, said after a database failure's own message.
_AGAIN = "send the request again after Retry-After seconds (a batch is one transaction: applied whole or not at all)"

#: The one table from the engine's exceptions to HTTP: a failure is answered as the first of its
#: classes (its own, then its branch's) found here, with its `code` and message. A failure found
#: nowhere here (`Misconfigured`: the server's setup) is a 500 for the log. Moodle's and Zoho's
#: failures are theirs, not the caller's: a 502 naming what they said, or a 503 while they are away.
HTTP: dict[type[SyncEngineError], Http] = {
    BadInput: Http(400),
    NotFound: Http(404),
    Conflict: Http(409),
    Unavailable: Http(503),
    CredentialError: Http(401, {"WWW-Authenticate": 'Bearer error="invalid_request"'}),
    ChannelRefused: Http(401),
    IdempotencyKeyReused: Http(422),
    IdempotencyKeyInUse: Http(409, {"Retry-After": "5"}),
    ContendedError: Http(409, {"Retry-After": "1"}),
    DatabaseUnavailable: Http(503, {"Retry-After": "5"}),
    DatabaseBusy: Http(503, {"Retry-After": "1"}),
    ZohoUnreachable: Http(503, {"Retry-After": "30"}),  # or Zoho's own wait (`retry_after`)
    MoodleError: Http(502),
    MoodleUnavailable: Http(503, {"Retry-After": "30"}),
    ZohoError: Http(502),
    ZohoUnavailable: Http(503, {"Retry-After": "30"}),
}
#: The database's failures any statement may meet, the engine's or an edge's (a key's lookup).
_OF_ANY_STATEMENT = (DatabaseUnavailable, DatabaseBusy, UnstorableValue)
#: Failures whose message over HTTP says what to do next, after their own.
THEN: dict[type[SyncEngineError], str] = {DatabaseUnavailable: _AGAIN, DatabaseBusy: _AGAIN}


def http_of(kind: type[SyncEngineError]) -> Http | None:
    """The answer for a failure of class `kind`, or None: not one to answer (a 500)."""
    return next((HTTP[cls] for cls in kind.__mro__ if cls in HTTP), None)


def to_api_error(exc: Exception) -> ApiError:
    """The HTTP meaning of an exception: the edge's own, the engine's (`HTTP`), a database
    failure the store translates, or litestar's."""
    if isinstance(exc, ApiError):
        return exc
    failure = exc if isinstance(exc, SyncEngineError) else translate(exc)
    if failure is not exc and not isinstance(failure, _OF_ANY_STATEMENT):
        failure = None  # a table gone or a race outside the engine's transactions: a bug, logged whole
    answer = None if failure is None else http_of(type(failure))
    if failure is not None and answer is not None:
        then = next((THEN[cls] for cls in type(failure).__mro__ if cls in THEN), None)
        message = str(failure) if then is None else f"{failure}; {then}"
        headers = dict(answer.headers)
        if isinstance(failure, Unavailable) and failure.retry_after is not None:  # the failure's own wait
            headers["Retry-After"] = str(round(failure.retry_after))
        return ApiError(answer.status, failure.code, message, headers)
    if isinstance(exc, ValidationException):
        return ApiError(400, "invalid_request", _validation_message(exc))
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = {k: v for k, v in (exc.headers or {}).items()}
        return ApiError(exc.status_code, code, _http_message(exc, code), headers)
    return ApiError(500, "internal_error", "internal error")


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
