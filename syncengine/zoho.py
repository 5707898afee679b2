"""The Zoho CRM REST client: OAuth refresh-token flow, records by id, module pages, deleted records.

It is handed credentials and returns records in Zoho's shape (dicts with `id` and API field names);
it knows nothing of tenants or storage. Facts it relies on: ../shared/reference/zoho-crm.md.

    async with ZohoClient(Credentials("1000.ID", secret, refresh_token, dc="eu")) as zoho:
        found = await zoho.get_records(entity.source, zoho_ids)   # the module's API name, from the descriptor
        async for page in zoho.pages(entity.source, [f.source for f in entity.fields]):
            ...  # page.records, page.next_page_token (resume from it)

Access tokens live in a `TokenCache` (get / store / lock): one refresh at a time per credential,
and every caller sharing the cache reuses its token, so 50 concurrent calls make one token request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import msgspec

from syncengine.exceptions import BadInput, Misconfigured, SyncEngineError, Unavailable

log = logging.getLogger("syncengine.zoho")

Record = dict[str, Any]

# data centre -> (accounts host, API host); reference §4.
DATA_CENTRES: dict[str, tuple[str, str]] = {
    "us": ("https://accounts.zoho.com", "https://www.zohoapis.com"),
    "eu": ("https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    "in": ("https://accounts.zoho.in", "https://www.zohoapis.in"),
    "au": ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    "jp": ("https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    "cn": ("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    "sa": ("https://accounts.zoho.sa", "https://www.zohoapis.sa"),
    "uk": ("https://accounts.zoho.uk", "https://www.zohoapis.uk"),
    "ca": ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
}
MAX_IDS = 100  # per get-by-ids call
DEFAULT_TIMEOUT = 30.0  # seconds for each call (connect, and each read)
PER_PAGE = 200  # Zoho's maximum
REFRESH_MARGIN = 300.0  # seconds: a token this close to its expiry is refreshed first
ZOHO_ID = re.compile(r"\d{1,20}")

HINTS = {
    "invalid_client": "check the client id and client secret (api-console.zoho.com) and the data centre",
    "invalid_code": "the refresh token is revoked or from another data centre: mint a new one from the self client",
    "Access Denied": "Zoho allows 10 new access tokens per refresh token per 10 minutes: wait up to ten minutes, "
    "and let every process share the token cache",
    "INVALID_TOKEN": "the access token was refused twice: check the refresh token and the data centre",
    "OAUTH_SCOPE_MISMATCH": "grant the client the scope ZohoCRM.modules.ALL (or ZohoCRM.modules.<module>.READ)",
    "NO_PERMISSION": "give the Zoho user of the refresh token read access to this module or record",
    "INVALID_MODULE": "check the module API name (`source:` in entities.yaml) in Setup > Developer Hub > APIs",
    "TOO_MANY_REQUESTS": "Zoho throttled the calls: retry later, or lower the concurrency",
    "NOT_FOUND": "the record is deleted in Zoho, or the id is wrong",
}
TRANSIENT_HINT = "Zoho or the network failed repeatedly: retry later"


class ZohoError(SyncEngineError):
    """A failed Zoho call: Zoho's code (`zoho_code`) and message, where it happened, and what to do.
    Raised as one of its branches: `ZohoUnavailable`, `ZohoRefused` (and `ZohoAuthError`)."""

    code = "zoho_error"

    def __init__(self, where: str, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        self.where, self.status, self.zoho_code, self.message = where, status, code, message
        self.details = details or {}
        super().__init__(f"{where}: {code} (HTTP {status}): {message}; {HINTS.get(code, TRANSIENT_HINT)}")


class ZohoRefused(ZohoError, Misconfigured):
    """Zoho refused the call for good (a permission, a scope, a module name): fix the setup."""

    code = "zoho_refused"


class ZohoAuthError(ZohoRefused):
    """The credentials are refused: nothing works until they are fixed."""

    code = "zoho_credentials_refused"


class ZohoUnavailable(ZohoError, Unavailable):
    """Throttling, a 5xx or a network error outlasted the retries; `retry_after` is Zoho's wish, if any."""

    code = "zoho_retries_exhausted"  # fetching.ZohoUnreachable, what a request answers then, is zoho_unavailable

    def __init__(self, where: str, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(where, status, code, message)
        self.retry_after = retry_after


class InvalidZohoRequest(BadInput):
    """What a caller asked of the client cannot be sent to Zoho (an id, a data centre, a field list)."""

    code = "invalid_zoho_request"


@dataclass(frozen=True)
class RecordError:
    """Why one requested record did not come back (`NO_PERMISSION`, `NOT_FOUND`, ...)."""

    code: str
    message: str

    @property
    def hint(self) -> str:
        return HINTS.get(self.code, "see Zoho's API documentation for this code")


@dataclass(frozen=True)
class Credentials:
    """What a tenant configures. `accounts_url`/`api_url` override the data centre's hosts (sandboxes, tests)."""

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    dc: str = "us"
    accounts_url: str | None = None
    api_url: str | None = None

    def __post_init__(self) -> None:
        if self.dc not in DATA_CENTRES:
            raise InvalidZohoRequest(f"unknown Zoho data centre {self.dc!r} (known: {', '.join(DATA_CENTRES)})")

    @property
    def accounts(self) -> str:
        return (self.accounts_url or DATA_CENTRES[self.dc][0]).rstrip("/")

    @property
    def cache_key(self) -> str:
        """Names the token in a shared cache without holding a secret."""
        digest = hashlib.sha256(self.refresh_token.encode()).hexdigest()[:16]
        return f"{self.accounts}|{self.client_id}|{digest}"


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    api_domain: str
    expires_at: float  # seconds since the epoch

    def usable(self, now: float) -> bool:
        return now < self.expires_at - REFRESH_MARGIN


class TokenCache(Protocol):
    """Where access tokens are kept. A database-backed one shares them across processes."""

    async def get(self, key: str) -> AccessToken | None: ...

    async def store(self, key: str, token: AccessToken) -> None: ...

    def lock(self, key: str) -> AbstractAsyncContextManager[Any]:
        """Held while one caller refreshes, so the others wait for its token instead of minting their own."""
        ...


class MemoryTokenCache:
    """A token cache for one process."""

    def __init__(self) -> None:
        self._tokens: dict[str, AccessToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str) -> AccessToken | None:
        return self._tokens.get(key)

    async def store(self, key: str, token: AccessToken) -> None:
        self._tokens[key] = token

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


@dataclass(frozen=True)
class Page:
    """One page of a module; `next_page_token` resumes the listing after it (None on the last page).
    Its records are dicts, or with `pages(raw=True)` each record's JSON text (`msgspec.Raw`)."""

    records: list[Any]
    next_page_token: str | None


class _RawPage(msgspec.Struct):
    """A list answer with its records left as JSON text: the pipeline decodes them straight into
    the entity's Struct, as it does a POST body's (see parsing.Parser.parse)."""

    data: list[msgspec.Raw] = msgspec.field(default_factory=list)
    info: dict[str, Any] = msgspec.field(default_factory=dict)


_decode_raw_page = msgspec.json.Decoder(_RawPage).decode


class ZohoClient:
    """Calls Zoho CRM with one credential. Retries 429/5xx/network errors `max_attempts` times in all."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        cache: TokenCache | None = None,
        http: httpx.AsyncClient | None = None,
        api_version: str = "v8",
        max_attempts: int = 5,
        max_wait: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.cache = cache or MemoryTokenCache()
        self.http = http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
        self.api_version = api_version
        self.max_attempts, self.max_wait = max_attempts, max_wait
        self.sleep, self.clock = sleep, clock
        self._secrets = [credentials.client_secret, credentials.refresh_token]

    def __repr__(self) -> str:
        return f"ZohoClient(client_id={self.credentials.client_id!r}, accounts={self.credentials.accounts!r})"

    async def __aenter__(self) -> ZohoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def api_domain(self) -> str:
        """Where the API is, as Zoho names it with an access token (fetched if none is cached): a
        check that the credentials work."""
        token = await self._token()
        return (self.credentials.api_url or token.api_domain).rstrip("/")

    # -- records ----------------------------------------------------------------------------------

    async def get_records(
        self, module: str, ids: Iterable[str], fields: Sequence[str] = ()
    ) -> dict[str, Record | RecordError]:
        """Each id's record or error, in the order asked; ⌈n/100⌉ calls. A missing id is `NOT_FOUND`."""
        wanted = list(dict.fromkeys(ids))
        bad = [i for i in wanted if not isinstance(i, str) or not ZOHO_ID.fullmatch(i)]
        if bad:
            raise InvalidZohoRequest(f"Zoho ids are 1-20 digits; got {bad[:5]!r} for {module}")
        results: dict[str, Record | RecordError] = {}
        for start in range(0, len(wanted), MAX_IDS):
            batch = wanted[start : start + MAX_IDS]
            params = {"ids": ",".join(batch)} | ({"fields": ",".join(fields)} if fields else {})
            body = await self._get(f"/{module}", params)
            found: dict[str, Record | RecordError] = {}
            for item in body["data"] if body else []:
                if item.get("status") == "error":
                    found[str(item.get("details", {}).get("id"))] = RecordError(item["code"], item["message"])
                else:
                    found[str(item["id"])] = item
            for record_id in batch:
                missing = RecordError("NOT_FOUND", f"no {module} record {record_id}")
                results[record_id] = found[record_id] if record_id in found else missing
        return results

    async def pages(
        self,
        module: str,
        fields: Sequence[str],
        *,
        modified_since: datetime | None = None,
        page_token: str | None = None,
        sort_by: str | None = None,
        sort_order: str = "asc",
        raw: bool = False,
    ) -> AsyncGenerator[Page, None]:
        """Every record of `module` (changed after `modified_since`), 200 a page, from `page_token` on;
        with `raw`, each record as its JSON text."""
        if not fields or len(fields) > 50:
            raise InvalidZohoRequest(f"listing {module} needs 1 to 50 fields (Zoho's limit); got {len(fields)}")
        params: dict[str, Any] = {"fields": ",".join(fields), "per_page": PER_PAGE}
        if sort_by:  # a sorted read counts against Zoho's sub-concurrency of 10: only when asked
            params |= {"sort_by": sort_by, "sort_order": sort_order}
        headers = _since(modified_since)
        while True:
            query = params | ({"page_token": page_token} if page_token else {})
            body = await self._get(f"/{module}", query, headers, decode=_decode_raw_page if raw else None)
            if body is None:
                return
            data, info = (body.data, body.info) if raw else (body["data"], body.get("info", {}))
            page_token = info.get("next_page_token") if info.get("more_records") else None
            yield Page(data, page_token)
            if page_token is None:
                return

    async def deleted(
        self, module: str, *, kind: str = "all", modified_since: datetime | None = None
    ) -> AsyncIterator[list[Record]]:
        """Pages of deleted records (`id`, `deleted_time`, `type`...); `kind` is all, recycle or permanent."""
        page = 1
        while True:
            params = {"type": kind, "per_page": PER_PAGE, "page": page}
            body = await self._get(f"/{module}/deleted", params, _since(modified_since))
            if body is None:
                return
            yield body["data"]
            if not body.get("info", {}).get("more_records"):
                return
            page += 1

    # -- notifications ----------------------------------------------------------------------------

    async def watch(
        self, channel_id: int, events: Sequence[str], notify_url: str, token: str, expiry: datetime, *, renew: bool
    ) -> datetime:
        """Subscribe channel `channel_id` to `events` (`[f"{entity.source}.all"]`), or with `renew` replace
        its details (PUT): Zoho then POSTs callbacks to `notify_url`, echoing `token` (at most 50
        characters). Returns the channel's expiry as Zoho states it (at most a week away)."""
        if len(token) > 50:
            raise InvalidZohoRequest(f"a channel token is at most 50 characters (Zoho's limit); got {len(token)}")
        watch = {"channel_id": channel_id, "events": list(events), "notify_url": notify_url, "token": token,
                 "channel_expiry": expiry.isoformat(timespec="seconds")}  # fmt: skip
        body = await self._call("PUT" if renew else "POST", "/actions/watch", json={"watch": [watch]})
        (answer,) = body["watch"]
        if answer.get("status") != "success":
            where = f"Zoho {'PUT' if renew else 'POST'} /crm/{self.api_version}/actions/watch"
            raise ZohoRefused(where, 400, str(answer.get("code")), str(answer.get("message")), answer.get("details"))
        subscribed: list[dict[str, Any]] = (answer.get("details") or {}).get("events") or []
        stated = [datetime.fromisoformat(e["channel_expiry"]) for e in subscribed if e.get("channel_expiry")]
        return min(stated) if stated else expiry

    # -- calls ------------------------------------------------------------------------------------

    async def _get(
        self,
        path: str,
        params: dict[str, Any],
        headers: dict[str, str] | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """A GET on the API with the access token: its JSON (read by `decode` if given), or None
        for 204/304 (nothing)."""
        return await self._call("GET", path, params=params, headers=headers, decode=decode)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """A call of the API with the access token: its JSON (read by `decode` if given), or None
        for 204/304 (nothing)."""
        where = f"Zoho {method} /crm/{self.api_version}{path}"
        token = await self._token()
        for forced in (False, True):
            url = f"{(self.credentials.api_url or token.api_domain).rstrip('/')}/crm/{self.api_version}{path}"
            auth = {"Authorization": f"Zoho-oauthtoken {token.value}"}
            request: dict[str, Any] = {"params": params, "headers": auth | (headers or {})}
            if json is not None:
                request["json"] = json
            response = await self._send(where, method, url, **request)
            if response.status_code in (204, 304):
                return None
            if response.is_success:
                return decode(response.content) if decode is not None else response.json()
            error = self._error(where, response)
            if error.status == 401 and (error.zoho_code != "INVALID_TOKEN" or forced):
                raise ZohoAuthError(where, error.status, error.zoho_code, error.message, error.details)
            if error.zoho_code != "INVALID_TOKEN":
                raise error
            token = await self._token(refused=token.value)
        raise AssertionError("unreachable")

    async def _token(self, refused: str | None = None) -> AccessToken:
        """The cached token if it is usable (and not `refused` by Zoho); else one refresh for all waiters."""
        key = self.credentials.cache_key
        token = await self.cache.get(key)
        if token and token.value != refused and token.usable(self.clock()):
            return token
        async with self.cache.lock(key):
            token = await self.cache.get(key)  # another caller may have refreshed while we waited
            if token and token.value != refused and token.usable(self.clock()):
                return token
            token = await self._refresh()
            await self.cache.store(key, token)
            return token

    async def _refresh(self) -> AccessToken:
        creds, where = self.credentials, "Zoho POST /oauth/v2/token"
        form = {"grant_type": "refresh_token", "client_id": creds.client_id, "client_secret": creds.client_secret,
                "refresh_token": creds.refresh_token}  # fmt: skip
        response = await self._send(where, "POST", f"{creds.accounts}/oauth/v2/token", data=form)
        body = _json(response)
        if "access_token" not in body:
            code = str(body.get("error") or f"HTTP_{response.status_code}")
            raise ZohoAuthError(
                where, response.status_code, code, self._redact(str(body.get("error_description", code)))
            )
        expires_in = float(body.get("expires_in", 3600))
        api_domain = str(body.get("api_domain") or DATA_CENTRES[creds.dc][1])
        log.info("zoho: new access token for client %s, valid %d s", creds.client_id, expires_in)
        return AccessToken(body["access_token"], api_domain, self.clock() + expires_in)

    async def _send(self, where: str, method: str, url: str, **request: Any) -> httpx.Response:
        """The request until it is not throttled, a 5xx or a network error; then the answer, or ZohoUnavailable."""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self.http.request(method, url, **request)
            except httpx.TransportError as exc:
                failure = ZohoUnavailable(where, 0, type(exc).__name__, "no answer from Zoho")
            else:
                code = _json(response).get("code") if response.status_code >= 400 else None
                if response.status_code != 429 and code != "TOO_MANY_REQUESTS" and response.status_code < 500:
                    return response
                retry_after = _retry_after(response)
                message = self._redact(str(_json(response).get("message", response.reason_phrase)))
                failure = ZohoUnavailable(where, response.status_code, str(code or "HTTP_ERROR"), message, retry_after)
            wait = retry_after if retry_after is not None else min(self.max_wait, 2.0 ** (attempt - 1))
            if attempt == self.max_attempts or wait > self.max_wait:
                raise failure
            log.warning(
                "zoho: %s %s, attempt %d of %d, retrying in %.1f s",
                where,
                failure.zoho_code,
                attempt,
                self.max_attempts,
                wait,
            )
            await self.sleep(wait)
        raise AssertionError("unreachable")

    def _error(self, where: str, response: httpx.Response) -> ZohoRefused:
        body = _json(response)
        code = str(body.get("code") or f"HTTP_{response.status_code}")
        message = self._redact(str(body.get("message") or response.reason_phrase))
        return ZohoRefused(where, response.status_code, code, message, body.get("details"))

    def _redact(self, text: str) -> str:
        """Zoho should never echo a secret; if it ever does, it stops here."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _since(moment: datetime | None) -> dict[str, str]:
    if moment is None:
        return {}
    if moment.tzinfo is None:
        raise InvalidZohoRequest(f"If-Modified-Since needs a time with its offset; got {moment.isoformat()}")
    return {"If-Modified-Since": moment.isoformat(timespec="seconds")}


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds or as an HTTP date; None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
