"""The HTTP edge: what a write request must be before its body reaches the pipeline.

- Query parameters: only known ones, each once (`check_write_query`): a misspelled `dry_run`
  must not write for real.
- The body: identity-encoded UTF-8 (`check_encoding`), at most `max_body_bytes`, whole within
  `body_timeout` seconds of the request's start (`RequestBody.read`); a client that goes away
  meanwhile is logged as such (499), not as an error of ours.
- An answer sent before its request's body has arrived (413, 401, 408, ...) first reads and
  discards the rest, up to `LINGER_FACTOR` times the body limit and until the body's deadline,
  and then closes the connection (`RequestBody.linger`). A client that sends its whole body
  before it reads (Python's urllib) then reads the answer instead of a connection reset, as
  nginx's lingering close does.
- The request line and headers: whole within `header_timeout` seconds of the connection's
  opening, or of the answer before on a kept-alive connection (`HeaderTimeout`, the HTTP
  protocol `serve` gives uvicorn, which bounds no such wait itself); past it, 408 and the
  connection closes, so a client that trickles its headers (slowloris) holds nothing for long.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from syncengine.config import Settings
from syncengine.errors import ApiError

#: The query parameters of `POST /v1/sync/{entity}`.
WRITE_PARAMETERS = ("dry_run",)
#: How `dry_run` may be spelled (any case); litestar reads the same spellings.
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
#: The charsets a body may declare: UTF-8, and ASCII, which is UTF-8 too.
CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")
#: An answer sent before the body has arrived reads at most this many times the body limit first.
LINGER_FACTOR = 4
#: The status logged for a request whose client went away before its body had arrived (nginx's).
CLIENT_CLOSED = 499
logger = logging.getLogger("syncengine.http")


async def check_write_query(request: Request[Any, Any, Any]) -> None:
    """Refuse unknown, repeated or unreadable query parameters of a write, before anything runs."""
    known = ", ".join(WRITE_PARAMETERS)
    seen: set[str] = set()
    query = request.scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in WRITE_PARAMETERS:
            raise ApiError(
                400,
                "unknown_query_parameter",
                f"unknown query parameter '{name[:40]}' (known: {known}); nothing was written",
            )
        if name in seen:
            raise ApiError(
                400,
                "repeated_query_parameter",
                f"query parameter '{name}' is given more than once; give it once; nothing was written",
            )
        seen.add(name)
        if value.lower() not in BOOLEANS:
            raise ApiError(
                400,
                "invalid_query_parameter",
                f"query parameter '{name}' must be true or false (or 1 or 0), got '{value[:40]}'; nothing was written",
            )


def check_encoding(request: Request[Any, Any, Any]) -> None:
    """Refuse a compressed body, or one in a charset other than UTF-8, with 415."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise ApiError(
            415,
            "unsupported_content_encoding",
            f"Content-Encoding '{encoding[:40]}' is not accepted: send the body uncompressed "
            "(no Content-Encoding, or identity)",
        )
    for parameter in request.headers.get("content-type", "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in CHARSETS:
            raise ApiError(
                415,
                "unsupported_charset",
                f"charset '{charset[:40]}' is not accepted: send the body as UTF-8 (charset=utf-8, or no charset)",
            )


class RequestBody:
    """A request's body as the app receives it: what has arrived, within which deadline.

    The service wraps every request's `receive` in one (`SyncService`), so that the handler reads
    the body through it (`read`) and the answer can wait for the rest of it (`linger`).
    """

    def __init__(self, scope: dict[str, Any], receive: Any, limit: int, timeout: float) -> None:
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length", b"")
        self._receive = receive
        self.limit, self.timeout = limit, timeout
        self.length = int(length) if length.isdigit() else None
        self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self.complete = not (self.chunked or self.length)  # all of it has arrived (or there is none)
        self.awaits_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        self.received = False  # the app has asked for the body at least once
        self.deadline = asyncio.get_running_loop().time() + timeout

    @property
    def announced(self) -> int | None:
        """The body's size as its headers tell it: Content-Length, 0 for none, None for a
        chunked body (its size is known once it is read)."""
        if self.length is not None:
            return self.length
        return None if self.chunked else 0

    async def receive(self) -> Any:
        self.received = True
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.complete = True
        return message

    async def read(self) -> bytes:
        """The whole body: 413 as soon as it exceeds the limit, 408 past the deadline, 499 if the
        client goes away before it is sent."""
        limit = self.limit
        too_large = ApiError(
            413,
            "body_too_large",
            f"the request body is larger than {limit} bytes (SYNCENGINE_MAX_BODY_BYTES): send smaller batches",
        )
        if self.length is not None and self.length > limit:
            raise too_large
        chunks, size = [], 0
        try:
            async with asyncio.timeout_at(self.deadline):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise ApiError(
                            CLIENT_CLOSED,
                            "client_disconnected",
                            "the client closed the connection before it had sent the whole body",
                        )
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise ApiError(
                408,
                "body_timeout",
                f"the request body did not arrive within {self.timeout:g} seconds (SYNCENGINE_BODY_TIMEOUT): "
                "send it at once, or in smaller batches",
            ) from None

    async def linger(self) -> bool:
        """Before an answer to a request whose body has not all arrived: read and discard the rest,
        within the bounds; True when the connection should close after the answer."""
        if self.complete:
            return False
        if self.awaits_continue and not self.received:
            return True  # the client sends nothing before it is told to go on: nothing to read
        bound = LINGER_FACTOR * self.limit
        if self.length is not None and self.length > bound:
            return True  # too much to wait for: the client may see a reset rather than the answer
        discarded = 0
        try:
            async with asyncio.timeout_at(self.deadline):
                while not self.complete and discarded <= bound:
                    discarded += len((await self.receive()).get("body", b""))
        except TimeoutError:
            pass
        return True


class HeaderTimeout(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), with a bound on the wait for a request's line and
    headers: SYNCENGINE_HEADER_TIMEOUT seconds from the connection's opening, or from the end of
    the answer before. Past it, the connection gets 408 and is closed.

        uvicorn.run(app, http=HeaderTimeout)   # what `syncengine serve` does

    The bound is read from the environment of the process that serves (a worker of `serve
    --workers N` too), since uvicorn makes the protocol itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout()
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))  # asyncio hands a stream its Transport
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        next_has_headers = bool(self.pipeline)  # a pipelined request, whose headers are in already
        super().on_response_complete()
        if not next_has_headers and not self.transport.is_closing():
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_waiting()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_waiting(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        body = msgspec.json.encode(
            {
                "status": "error",
                "status_code": 408,
                "error": "header_timeout",
                "message": f"the request line and headers did not arrive within {self.header_timeout:g} seconds "
                "(SYNCENGINE_HEADER_TIMEOUT): send them at once",
            }
        )
        head = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
        logger.info("request", extra={"fields": {"status": 408, "error": "header_timeout", "client": client}})


@functools.cache
def header_timeout() -> float:
    """SYNCENGINE_HEADER_TIMEOUT of this process's environment (`Settings.header_timeout`)."""
    return Settings.from_env().header_timeout
