"""Moodle's REST web services over httpx: one call in, one answer or one `MoodleError` out.

The client knows a base URL, a token and parameters, nothing of tenants or storage. It encodes
nested parameters the way PHP reads them (`users[0][username]=ana`), counts them for a
`max_input_vars` budget, POSTs with a bounded pool and timeouts, follows no redirect, and turns
every failure into `MoodleError`: Moodle's exception JSON (sent with HTTP 200), HTTP 5xx, network
errors and timeouts, each marked transient (worth a retry) or permanent, and each in the engine's
exception tree (unavailable, misconfigured, or values rejected). The token travels in the
POST body only and never appears in a log, an error or a repr.

    async with MoodleClient("https://moodle.school.test", token) as moodle:
        info = await moodle.site_info()
        created = await moodle.call("core_user_create_users", {"users": [{"username": "ana", ...}]})
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from syncengine.exceptions import BadInput, Misconfigured, SyncEngineError, Unavailable

log = logging.getLogger(__name__)

ENDPOINT = "/webservice/rest/server.php"
WS_PARAMETERS = 3  # wstoken, wsfunction, moodlewsrestformat: they count against max_input_vars too
# Moodle answers worth a retry: the site or its database is briefly unavailable.
TRANSIENT_CODES = frozenset({"sitemaintenance", "dmlreadexception", "dmlwriteexception", "dbconnectionfailed"})
HINTS = {
    "invalidtoken": "check the tenant's Moodle token (Site administration > Server > Web services > Manage tokens)",
    "accessexception": "add {function} to the token's external service, and check the token's user, IP "
    "restriction and expiry",
    "invalidrecord": "check that this Moodle has {function} and that the ids sent exist",
    "nopermissions": "give the web-service user's role the capability Moodle names",
    "invalidparameter": "fix the record's values (a taken username or email, an upper-case username, a missing "
    "field), then retry",
}
#: Moodle answers (and the client's own codes) that say the site, the token or its service is wrong,
#: not the values sent: a call fails alike for every record until the setup is fixed.
SETUP_CODES = frozenset(
    {"invalidtoken", "accessexception", "nopermissions", "redirect", "emptyanswer", "notjson", "truncated"}
)


class MoodleError(SyncEngineError):
    """A failed Moodle call: Moodle's `errorcode` and `message`, and whether a retry may succeed.

    `MoodleError(...)` is built as the branch its answer belongs to: `MoodleUnavailable` when a
    retry may succeed (`transient`), `MoodleMisconfigured` when the site, the token or its service
    is wrong (`SETUP_CODES`, or an HTTP answer other than 200), else `MoodleRejected` (Moodle
    refused the values sent)."""

    code = "moodle_error"

    def __new__(
        cls, function: str, errorcode: str, message: str, *, transient: bool, debuginfo: str | None = None
    ) -> MoodleError:
        kind: type[MoodleError] = cls
        if cls is MoodleError:
            setup = errorcode in SETUP_CODES or errorcode.startswith("http")
            kind = MoodleUnavailable if transient else MoodleMisconfigured if setup else MoodleRejected
        return super().__new__(kind, function, errorcode, message)

    def __init__(
        self, function: str, errorcode: str, message: str, *, transient: bool, debuginfo: str | None = None
    ) -> None:
        self.function, self.errorcode, self.message = function, errorcode, message
        self.transient, self.debuginfo = transient, debuginfo
        hint = HINTS.get(errorcode, "retried later" if transient else "fix the cause, then retry")
        detail = f" ({debuginfo})" if debuginfo else ""
        super().__init__(f"{function}: {errorcode}: {message}{detail}: {hint.format(function=function)}")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.function, self.errorcode, self.message, self.transient, self.debuginfo)


class MoodleUnavailable(MoodleError, Unavailable):
    """Moodle did not answer, answered 5xx or 429, or said it is briefly away: retried later."""

    code = "moodle_unavailable"


class MoodleMisconfigured(MoodleError, Misconfigured):
    """The tenant's Moodle URL, its token, or the token's service and capabilities are wrong."""

    code = "moodle_misconfigured"


class MoodleRejected(MoodleError, BadInput):
    """Moodle refused the values sent (a taken username, a missing field, an unknown id)."""

    code = "moodle_rejected"


def _rebuild(function: str, errorcode: str, message: str, transient: bool, debuginfo: str | None) -> MoodleError:
    return MoodleError(function, errorcode, message, transient=transient, debuginfo=debuginfo)


def encode(params: Mapping[Any, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested parameters into PHP's form names; booleans become 1/0, None is left out.

    >>> encode({"users": [{"username": "ana", "suspended": True}], "field": "id"})
    [('users[0][username]', 'ana'), ('users[0][suspended]', '1'), ('field', 'id')]
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            pairs += encode(value, name)
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            pairs += encode(dict(enumerate(value)), name)
        elif isinstance(value, bool):
            pairs.append((name, "1" if value else "0"))
        elif value is not None:
            pairs.append((name, str(value)))
    return pairs


def count_parameters(params: Mapping[str, Any]) -> int:
    """How many `max_input_vars` variables a call with these parameters uses, ws* ones included."""
    return len(encode(params)) + WS_PARAMETERS


@dataclass(frozen=True)
class SiteInfo:
    sitename: str
    release: str
    version: str
    functions: frozenset[str]  # the web-service functions the token's service allows


class MoodleClient:
    """Calls one Moodle site's REST web services with one token."""

    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, connect_timeout: float = 5.0, max_connections: int = 4
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"MoodleClient(url={self.url!r})"

    async def __aenter__(self) -> MoodleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, function: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call `function`; its decoded JSON answer (None for Moodle's `null`), or MoodleError."""
        form = [("wstoken", self._token), ("wsfunction", function), ("moodlewsrestformat", "json")]
        form += encode(params or {})
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._post(function, form)
        except MoodleError as exc:
            outcome = exc.errorcode
            raise
        finally:
            fields = {"function": function, "parameters": len(form), "outcome": outcome}
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
            log.debug("moodle call", extra={"fields": fields})

    async def _post(self, function: str, form: list[tuple[str, str]]) -> Any:
        endpoint = self.url + ENDPOINT
        try:
            response = await self._http.post(endpoint, data=dict(form))
        except httpx.TimeoutException as exc:
            raise MoodleError(
                function, "timeout", f"no answer from {endpoint} in time ({type(exc).__name__})", transient=True
            ) from None
        except httpx.HTTPError as exc:
            raise MoodleError(
                function, "network", f"could not reach {endpoint}: {type(exc).__name__}: {exc}", transient=True
            ) from None
        status = response.status_code
        if response.is_redirect:
            target = response.headers.get("location", "")
            raise MoodleError(
                function,
                "redirect",
                f"{endpoint} answered {status} redirecting to {target}: set the "
                "tenant's Moodle URL to the site's own address (its wwwroot)",
                transient=False,
            )
        if status != 200:
            transient = status >= 500 or status == 429
            raise MoodleError(function, f"http{status}", f"{endpoint} answered HTTP {status}", transient=transient)
        if not response.content.strip():
            raise MoodleError(
                function,
                "emptyanswer",
                f"{endpoint} answered nothing: enable web services and the REST protocol on the site",
                transient=False,
            )
        try:
            answer = response.json()
        except ValueError:
            raise MoodleError(
                function, "notjson", f"{endpoint} did not answer JSON: check the Moodle URL", transient=False
            ) from None
        if isinstance(answer, dict) and "exception" in answer and "errorcode" in answer:
            code = str(answer["errorcode"])
            raise MoodleError(
                function,
                code,
                str(answer.get("message", "")),
                transient=code in TRANSIENT_CODES,
                debuginfo=answer.get("debuginfo"),
            )
        return answer

    async def site_info(self) -> SiteInfo:
        """`core_webservice_get_site_info`: the site's release and what the token's service allows."""
        info = await self.call("core_webservice_get_site_info")
        names = frozenset(str(f["name"]) for f in info.get("functions", []))
        return SiteInfo(
            str(info.get("sitename", "")), str(info.get("release", "")), str(info.get("version", "")), names
        )
