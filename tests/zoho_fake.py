"""A fake of Zoho CRM over real HTTP on 127.0.0.1: the accounts host and the API host in one server.

Shapes follow /work/shared/reference/zoho-crm.md (§2 records, §3 paging and errors, §4 OAuth, §5
deleted records). Where the reference is silent, the fake answers as third-party reports say Zoho
does, and says so:
- a bad client id is `{"error": "invalid_client"}`, a bad refresh token `{"error": "invalid_code"}`,
  both HTTP 200 (community bug reports); the eleventh token within ten minutes is HTTP 400
  `{"error": "Access Denied", "error_description": "You have made too many requests continuously...",
  "status": "failure"}` (Zoho's token-validity page names "Access Denied"; the rest is community text);
- a 429 carries `Retry-After` (seconds) and `X-RATELIMIT-LIMIT/-REMAINING/-RESET` (unverified);
- get by `ids` leaves unknown ids out of `data`, and a record the user may not read is an error
  object in `data` with its id in `details`;
- `fields` is required on a list call from v7 on (the reference: mandatory in v7, origin unknown).

A test loads records, drives failures and reads counters::

    with serve_fake() as fake:
        fake.load("BTEC_Enrollments", [{"id": "1", "Name": "ENR-1", "Modified_Time": "..."}])
        fake.fail_next(429, "TOO_MANY_REQUESTS", retry_after=2)
        ...  # point a client at fake.url
        assert fake.tokens_granted == 1

Run alone: `python -m tests.zoho_fake --port 8765 [--records Module=file.json ...]`.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.threaded_server import serving

CLIENT_ID = "1000.FAKECLIENTID"
CLIENT_SECRET = "fake-client-secret-5f1e"
REFRESH_TOKEN = "1000.fake-refresh-token.9c2b"
TOKEN_LIFETIME = 3600
GRANTS_PER_WINDOW, GRANT_WINDOW = 10, 600.0
API_PATH = re.compile(r"^/crm/v(\d+)/([A-Za-z0-9_]+)(/deleted)?$")
WATCH_PATH = re.compile(r"^/crm/v\d+/actions/watch$")
FIXTURE = Path(__file__).parent / "fixtures" / "zoho" / "btec-enrollments-page.json"
TOO_MANY_TOKENS = "You have made too many requests continuously. Please try again after some time."


@dataclass
class Failure:
    status: int
    code: str
    retry_after: int | None = None


@dataclass
class Call:
    """One API call as the fake saw it."""

    path: str
    params: dict[str, str]
    if_modified_since: str | None


@dataclass
class ZohoFake:
    """The state behind the server: records, issued tokens, counters and failures to inject."""

    url: str = ""
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    refresh_token: str = REFRESH_TOKEN
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deleted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    record_errors: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (code, message)
    forbidden_modules: set[str] = field(default_factory=set)
    rate_limit: tuple[int, float] | None = None  # at most N API calls per window of seconds
    delay: float = 0.0  # seconds before each API answer
    clock: Any = time.monotonic
    token_requests: int = 0
    tokens_granted: int = 0
    calls: list[Call] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (clock)
    issued: list[str] = field(default_factory=list)  # every access token ever granted
    grants: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    call_times: list[float] = field(default_factory=list)
    page_tokens: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # token -> (module, query, offset)
    expired_page_tokens: set[str] = field(default_factory=set)
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)  # channel_id -> its watch details
    watch_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (POST or PUT, one watch item)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, module: str, records: list[dict[str, Any]]) -> None:
        """Make `module` exist with these records (added to any already loaded)."""
        self.records.setdefault(module, []).extend(records)

    def fail_next(self, status: int, code: str, *, times: int = 1, retry_after: int | None = None) -> None:
        """The next `times` API calls answer `status` with Zoho's error JSON for `code`."""
        self.failures.extend(Failure(status, code, retry_after) for _ in range(times))

    def expire_tokens(self) -> None:
        """Every access token issued so far is now expired (INVALID_TOKEN)."""
        with self.lock:
            self.tokens.clear()

    def expire_page_tokens(self) -> None:
        """Every page_token issued so far is now past its 24 hours (`EXPIRED_VALUE`, reference §3.1)."""
        with self.lock:
            self.expired_page_tokens |= set(self.page_tokens)

    @property
    def api_calls(self) -> int:
        return len(self.calls)

    # -- the accounts host ------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.token_requests += 1
            if form.get("grant_type") != "refresh_token":
                return 200, {"error": "unsupported_grant_type"}
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                return 200, {"error": "invalid_client"}
            if form.get("refresh_token") != self.refresh_token:
                return 200, {"error": "invalid_code"}
            now = self.clock()
            self.grants = [at for at in self.grants if now - at < GRANT_WINDOW]
            if len(self.grants) >= GRANTS_PER_WINDOW:
                return 400, {"error_description": TOO_MANY_TOKENS, "error": "Access Denied", "status": "failure"}
            self.grants.append(now)
            self.tokens_granted += 1
            access = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
            self.tokens[access] = now + TOKEN_LIFETIME
            self.issued.append(access)
        scope = "ZohoCRM.modules.ALL"
        return 200, {"access_token": access, "scope": scope, "api_domain": self.url, "token_type": "Bearer",
                     "expires_in": TOKEN_LIFETIME}  # fmt: skip

    # -- the API host -----------------------------------------------------------------------------

    def api(self, path: str, query: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        """One API call: (status, extra headers, JSON body or None for 204)."""
        params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
        with self.lock:
            self.calls.append(Call(path, params, headers.get("if-modified-since")))
            auth = headers.get("authorization", "")
            if not auth.startswith("Zoho-oauthtoken "):
                return 401, {}, error("AUTHENTICATION_FAILURE", "Authentication failed")
            expiry = self.tokens.get(auth.removeprefix("Zoho-oauthtoken "))
            if expiry is None or expiry <= self.clock():
                return 401, {}, error("INVALID_TOKEN", "invalid oauth token")
            if self.failures:
                failure = self.failures.pop(0)
                extra = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
                return failure.status, extra, error(failure.code, failure.code.replace("_", " ").lower())
            if self.rate_limit is not None:
                limit, window = self.rate_limit
                now = self.clock()
                recent = [c for c in self.call_times if now - c < window]
                self.call_times = [*recent, now]
                if len(recent) >= limit:
                    wait = max(1, int(window - (now - recent[0]) + 0.999))
                    return 429, rate_headers(limit, wait), error("TOO_MANY_REQUESTS", "too many requests")
        match = API_PATH.match(path)
        if match is None:
            return 404, {}, error("INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one")
        version, module, deleted = int(match[1]), match[2], bool(match[3])
        if module not in self.records:
            return 400, {}, error("INVALID_MODULE", "the module name given seems to be invalid", resource_path_index=0)
        if module in self.forbidden_modules:
            return 403, {}, error("NO_PERMISSION", "permission denied")
        since = headers.get("if-modified-since")
        if deleted:
            return self._deleted(module, params, since)
        if "ids" in params:
            return self._by_ids(module, params)
        if version >= 7 and not params.get("fields"):
            return (
                400,
                {},
                error("REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", param_name="fields"),
            )
        return self._list(module, params, since)

    def _by_ids(self, module: str, params: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        ids = [i for i in params["ids"].split(",") if i]
        if len(ids) > 100:
            return (
                400,
                {},
                error("LIMIT_EXCEEDED", "the given ids exceed the limit", param_name="ids", maximum_length=100),
            )
        by_id = {record["id"]: record for record in self.records[module]}
        data: list[dict[str, Any]] = []
        for record_id in ids:
            if record_id in self.record_errors:
                code, message = self.record_errors[record_id]
                data.append(error(code, message, id=record_id))
            elif record_id in by_id:
                data.append(pick(by_id[record_id], params.get("fields")))
        if not data:
            return 204, {}, None
        return 200, {}, {"data": data, "info": {"per_page": len(data), "count": len(data), "page": 1,
                                                "more_records": False}}  # fmt: skip

    def _list(self, module: str, params: dict[str, str], since: str | None) -> tuple[int, dict[str, str], Any]:
        per_page = int(params.get("per_page", "200"))
        if not 1 <= per_page <= 200:
            return 400, {}, error("INVALID_DATA", "per_page must be between 1 and 200", param_name="per_page")
        sort_by, sort_order = params.get("sort_by", "id"), params.get("sort_order", "desc")
        bound = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("page", "page_token"))
        bound += f"&since={since}"
        if "page_token" in params and "page" in params:
            return 400, {}, error("INVALID_DATA", "page and page_token cannot be given together", param_name="page")
        if "page_token" in params:
            with self.lock:
                held = self.page_tokens.get(params["page_token"])
            if held is None:
                return 400, {}, error("INVALID_DATA", "invalid page token", param_name="page_token")
            if params["page_token"] in self.expired_page_tokens:
                return 400, {}, error("EXPIRED_VALUE", "the page token has expired", param_name="page_token")
            if held[:2] != (module, bound):
                return 400, {}, error("TOKEN_BOUND_DATA_MISMATCH", "the page token was issued for other parameters")
            offset, page = held[2], held[2] // per_page + 1
        else:
            page = int(params.get("page", "1"))
            offset = (page - 1) * per_page
            if offset + per_page > 2000:
                return 400, {}, error("DISCRETE_PAGINATION_LIMIT_EXCEEDED", "use page_token beyond 2000 records")
        rows = modified_since(self.records[module], since)
        rows.sort(key=lambda r: (str(r.get(sort_by) or ""), int(r["id"])), reverse=sort_order == "desc")
        chunk = rows[offset : offset + per_page]
        if not chunk:
            return 204, {}, None
        more = offset + per_page < len(rows)
        next_token = None
        if more:
            next_token = secrets.token_hex(12)
            with self.lock:
                self.page_tokens[next_token] = (module, bound, offset + per_page)
        info = {"per_page": per_page, "count": len(chunk), "page": page, "sort_by": sort_by, "sort_order": sort_order,
                "more_records": more, "next_page_token": next_token, "previous_page_token": None,
                "page_token_expiry": "2099-01-01T00:00:00+00:00" if more else None, "call": False, "email": False}  # fmt: skip
        return 200, {}, {"data": [pick(r, params.get("fields")) for r in chunk], "info": info}

    def _deleted(self, module: str, params: dict[str, str], since: str | None) -> tuple[int, dict[str, str], Any]:
        kind = params.get("type", "all")
        per_page, page = int(params.get("per_page", "200")), int(params.get("page", "1"))
        rows = [r for r in self.deleted.get(module, []) if kind == "all" or r["type"] == kind]
        rows = modified_since(rows, since, key="deleted_time")
        chunk = rows[(page - 1) * per_page : page * per_page]
        if not chunk:
            return 204, {}, None
        more = page * per_page < len(rows)
        return 200, {}, {"data": chunk, "info": {"per_page": per_page, "count": len(chunk), "page": page,
                                                 "more_records": more}}  # fmt: skip

    # -- notifications (reference §1.2) ----------------------------------------------------------

    def watch(self, method: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`POST|PUT /crm/v8/actions/watch`: subscribe (POST) or replace (PUT) channels. As Zoho's docs
        say: a token is at most 50 characters; an expiry absent or more than a week away gives one
        hour. PUT on a channel the fake does not hold is an error (unverified: Zoho's code for it
        is not documented in what was read)."""
        with self.lock:
            expiry = self.tokens.get(headers.get("authorization", "").removeprefix("Zoho-oauthtoken "))
            if expiry is None or expiry <= self.clock():
                return 401, error("INVALID_TOKEN", "invalid oauth token")
            answers = []
            for item in body.get("watch", []):
                self.watch_calls.append((method, item))
                channel_id = int(item["channel_id"])
                if len(item.get("token") or "") > 50:
                    answers.append(error("INVALID_DATA", "token exceeds 50 characters", api_name="token"))
                    continue
                if method == "PUT" and channel_id not in self.channels:
                    answers.append(error("INVALID_DATA", "the channel is not subscribed", api_name="channel_id"))
                    continue
                now = datetime.now(UTC)
                asked = item.get("channel_expiry")
                until = datetime.fromisoformat(asked) if asked else now
                if not asked or until - now > timedelta(weeks=1):
                    until = now + timedelta(hours=1)
                self.channels[channel_id] = {**item, "channel_expiry": until.isoformat(timespec="seconds")}
                events = [{"channel_expiry": until.isoformat(timespec="seconds"), "resource_uri": f"{self.url}/crm/v2/"
                           f"{e.split('.')[0]}", "resource_id": "1", "resource_name": e.split(".")[0],
                           "channel_id": str(channel_id)} for e in item["events"]]  # fmt: skip
                answers.append({"code": "SUCCESS", "details": {"events": events}, "status": "success",
                                "message": "Successfully subscribed for actions-watch of the given module"})  # fmt: skip
        return 200, {"watch": answers}

    def callback(
        self, module: str, operation: str, ids: list[str], *, token: str | None = None, channel_id: int | None = None
    ) -> tuple[int, Any]:
        """Post a callback to the notify_url of `module`'s channel, as Zoho does: (status, JSON answer).
        `token` and `channel_id` override the subscribed ones (to send a wrong one)."""
        (channel,) = [c for c in self.channels.values() if any(e.startswith(f"{module}.") for e in c["events"])]
        body: dict[str, Any] = {"server_time": int(time.time() * 1000), "query_params": {}, "module": module,
                "resource_uri": f"{self.url}/crm/v2/{module}", "ids": ids, "affected_fields": [],
                "operation": operation, "channel_id": str(channel_id or channel["channel_id"]),
                "token": channel["token"] if token is None else token}  # fmt: skip
        request = urllib.request.Request(
            channel["notify_url"], json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())


def enrollments(count: int, first: int = 1) -> list[dict[str, Any]]:
    """`count` BTEC_Enrollments records in Zoho's full-record shape (tests/fixtures/zoho), ids ascending."""
    template = json.loads(FIXTURE.read_text())["data"][0]
    records = []
    for n in range(first, first + count):
        minute, second = divmod(n % 3600, 60)
        records.append(template | {
            "id": str(6284103000002400000 + n), "Name": f"ENR-{n:05d}",
            "Modified_Time": f"2026-02-10T{9 + n // 3600 % 12:02d}:{minute:02d}:{second:02d}+03:00",
            "$approval_state": "approved", "$editable": True, "$state": "save", "$in_merge": False,
        })  # fmt: skip
    return records


def error(code: str, message: str, **details: Any) -> dict[str, Any]:
    """Zoho's error JSON (reference §3.5)."""
    return {"code": code, "details": details, "message": message, "status": "error"}


def rate_headers(limit: int, wait: int) -> dict[str, str]:
    reset_ms = int((time.time() + wait) * 1000)
    return {"Retry-After": str(wait), "X-RATELIMIT-LIMIT": str(limit), "X-RATELIMIT-REMAINING": "0",
            "X-RATELIMIT-RESET": str(reset_ms)}  # fmt: skip


def pick(record: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """With `fields=`, Zoho returns those keys and `id` only."""
    if not fields:
        return record
    wanted = {"id", *fields.split(",")}
    return {key: value for key, value in record.items() if key in wanted}


def modified_since(rows: list[dict[str, Any]], since: str | None, key: str = "Modified_Time") -> list[dict[str, Any]]:
    if since is None:
        return list(rows)
    after = datetime.fromisoformat(since)
    return [row for row in rows if row.get(key) and datetime.fromisoformat(row[key]) > after]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waited for the
    # client's delayed ACK, ~40 ms a call on loopback that Zoho does not have.
    disable_nagle_algorithm = True
    server: FakeServer

    def do_POST(self) -> None:
        path = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if WATCH_PATH.match(path.path):
            self.answer_watch("POST", body)
            return
        if path.path != "/oauth/v2/token":
            self.answer(
                404, {}, error("INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one")
            )
            return
        form = {key: values[-1] for key, values in parse_qs(path.query + "&" + body).items()}
        status, answer = self.server.fake.token(form)
        self.answer(status, {}, answer)

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.answer_watch("PUT", body)

    def answer_watch(self, method: str, body: str) -> None:
        if not WATCH_PATH.match(urlsplit(self.path).path):
            self.answer(
                404, {}, error("INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one")
            )
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, answer = self.server.fake.watch(method, headers, json.loads(body or "{}"))
        self.answer(status, {}, answer)

    def do_GET(self) -> None:
        path = urlsplit(self.path)
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, extra, answer = self.server.fake.api(path.path, path.query, headers)
        if self.server.fake.delay:
            time.sleep(self.server.fake.delay)
        self.answer(status, extra, answer)

    def answer(self, status: int, headers: dict[str, str], body: Any) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not every request


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: ZohoFake, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.fake = fake
        fake.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out is gone: not news
            super().handle_error(request, client_address)


@contextmanager
def serve_fake(fake: ZohoFake | None = None) -> Iterator[ZohoFake]:
    """Run the fake on a free port of 127.0.0.1 in a thread, for the length of the block."""
    fake = fake or ZohoFake()
    server = FakeServer(fake)
    with serving(server, "zoho-fake"):
        yield fake


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Zoho CRM (accounts and API host) on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--records", action="append", default=[], metavar="MODULE=FILE",
                        help="load a JSON array or {'data': [...]} page as MODULE's records")  # fmt: skip
    args = parser.parse_args()
    fake = ZohoFake()
    for spec in args.records:
        module, _, file = spec.partition("=")
        loaded = json.loads(Path(file).read_text())
        fake.load(module, loaded["data"] if isinstance(loaded, dict) else loaded)
    server = FakeServer(fake, args.port)
    print(f"zoho fake on {fake.url} (client id {fake.client_id}; see tests/zoho_fake.py for the credentials)")
    server.serve_forever()


if __name__ == "__main__":
    main()
