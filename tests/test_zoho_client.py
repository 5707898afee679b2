"""The Zoho client against the Zoho fake over real HTTP: tokens, ids, pages, deletions, back-off, secrets."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from syncengine.zoho import (
    DATA_CENTRES,
    AccessToken,
    Credentials,
    InvalidZohoRequest,
    MemoryTokenCache,
    RecordError,
    ZohoAuthError,
    ZohoClient,
    ZohoError,
    ZohoRefused,
    ZohoUnavailable,
)
from tests.zoho_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoFake, enrollments, serve_fake

MODULE = "BTEC_Enrollments"
FIELDS = ["Name", "Modified_Time"]


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        running.load(MODULE, enrollments(1050))
        yield running


class Sleeps:
    """An injected sleep: records the waits, waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def credentials(fake: ZohoFake, **overrides: Any) -> Credentials:
    values = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": REFRESH_TOKEN,
              "accounts_url": fake.url, "api_url": fake.url} | overrides  # fmt: skip
    return Credentials(**values)


def client(fake: ZohoFake, sleeps: Callable[[float], Awaitable[None]] | None = None, **options: Any) -> ZohoClient:
    creds = options.pop("credentials", None) or credentials(fake)
    return ZohoClient(creds, sleep=sleeps or Sleeps(), **options)


def ids(first: int, count: int) -> list[str]:
    return [record["id"] for record in enrollments(count, first)]


@pytest.mark.parametrize(
    ("dc", "accounts", "api"),
    [
        ("us", "https://accounts.zoho.com", "https://www.zohoapis.com"),
        ("eu", "https://accounts.zoho.eu", "https://www.zohoapis.eu"),
        ("in", "https://accounts.zoho.in", "https://www.zohoapis.in"),
        ("au", "https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
        ("jp", "https://accounts.zoho.jp", "https://www.zohoapis.jp"),
        ("cn", "https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
        ("sa", "https://accounts.zoho.sa", "https://www.zohoapis.sa"),
        ("uk", "https://accounts.zoho.uk", "https://www.zohoapis.uk"),
        ("ca", "https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    ],
)
def test_data_centres_name_their_accounts_and_api_hosts(dc: str, accounts: str, api: str) -> None:
    assert DATA_CENTRES[dc] == (accounts, api)
    assert Credentials("id", "secret", "refresh", dc=dc).accounts == accounts
    assert Credentials("id", "secret", "refresh", dc=dc, accounts_url="http://sandbox/").accounts == "http://sandbox"


def test_an_unknown_data_centre_lists_the_known_ones() -> None:
    with pytest.raises(
        InvalidZohoRequest, match=r"unknown Zoho data centre 'de' \(known: us, eu, in, au, jp, cn, sa, uk, ca\)"
    ):
        Credentials("id", "secret", "refresh", dc="de")


async def test_one_token_serves_many_calls_and_the_api_domain_comes_from_zoho(fake: ZohoFake) -> None:
    async with client(fake, credentials=credentials(fake, api_url=None)) as zoho:
        for first in (1, 2, 3):
            found = await zoho.get_records(MODULE, ids(first, 1))
            assert isinstance(found[ids(first, 1)[0]], dict)
    assert (fake.token_requests, fake.api_calls) == (1, 3)


@pytest.mark.parametrize("how", ["expired here", "refused by Zoho"])
async def test_a_stampede_of_50_calls_makes_one_token_request(fake: ZohoFake, how: str) -> None:
    cache = MemoryTokenCache()
    zoho = client(fake, cache=cache)
    await zoho.get_records(MODULE, ids(1, 1))  # a first token
    if how == "expired here":
        stale = await cache.get(zoho.credentials.cache_key)
        assert stale is not None
        await cache.store(zoho.credentials.cache_key, AccessToken(stale.value, stale.api_domain, expires_at=0))
    else:
        fake.expire_tokens()
    results = await asyncio.gather(*(zoho.get_records(MODULE, ids(n, 1)) for n in range(1, 51)))
    assert all(isinstance(next(iter(found.values())), dict) for found in results)
    assert (fake.token_requests, fake.tokens_granted) == (2, 2)
    await zoho.http.aclose()


async def test_a_token_near_its_expiry_is_refreshed_before_the_call(fake: ZohoFake) -> None:
    now = [1_000_000.0]
    async with client(fake, clock=lambda: now[0]) as zoho:
        await zoho.get_records(MODULE, ids(1, 1))
        now[0] += 3600 - 299  # inside the five-minute margin
        await zoho.get_records(MODULE, ids(1, 1))
        now[0] += 200  # a fresh token: no refresh
        await zoho.get_records(MODULE, ids(1, 1))
    assert (fake.tokens_granted, fake.api_calls) == (2, 3)


async def test_invalid_token_forces_one_refresh_and_then_the_call_succeeds(fake: ZohoFake) -> None:
    async with client(fake) as zoho:
        await zoho.get_records(MODULE, ids(1, 1))
        fake.expire_tokens()
        found = await zoho.get_records(MODULE, ids(2, 1))
    assert isinstance(found[ids(2, 1)[0]], dict)
    assert (fake.tokens_granted, fake.api_calls) == (2, 3)


async def test_a_token_refused_twice_is_an_auth_error_after_one_refresh(fake: ZohoFake) -> None:
    ticks = iter(range(0, 10**9, 4000))
    fake.clock = lambda: float(next(ticks))  # every token is expired when it is used
    async with client(fake) as zoho:
        with pytest.raises(ZohoAuthError) as raised:
            await zoho.get_records(MODULE, ids(1, 1))
    assert (fake.tokens_granted, fake.api_calls) == (2, 2)
    assert str(raised.value) == (
        "Zoho GET /crm/v8/BTEC_Enrollments: INVALID_TOKEN (HTTP 401): invalid oauth token; "
        "the access token was refused twice: check the refresh token and the data centre"
    )


async def test_250_ids_in_3_calls_with_each_records_own_error(fake: ZohoFake) -> None:
    wanted = [*ids(1, 249), "6284103000009999999"]
    fake.record_errors[wanted[7]] = ("NO_PERMISSION", "permission denied")
    async with client(fake) as zoho:
        found = await zoho.get_records(MODULE, wanted + wanted[:3], fields=FIELDS)
    assert list(found) == wanted
    assert [len(call.params["ids"].split(",")) for call in fake.calls] == [100, 100, 50]
    assert found[wanted[7]] == RecordError("NO_PERMISSION", "permission denied")
    missing = found["6284103000009999999"]
    assert missing == RecordError("NOT_FOUND", f"no {MODULE} record 6284103000009999999")
    assert isinstance(missing, RecordError) and missing.hint == "the record is deleted in Zoho, or the id is wrong"
    assert found[wanted[0]] == {"id": wanted[0], "Name": "ENR-00001", "Modified_Time": "2026-02-10T09:00:01+03:00"}
    assert sum(isinstance(value, dict) for value in found.values()) == 248


async def test_an_id_that_is_not_a_zoho_id_is_refused_before_any_call(fake: ZohoFake) -> None:
    async with client(fake) as zoho:
        with pytest.raises(InvalidZohoRequest, match=r"Zoho ids are 1-20 digits; got \['\$\{!BTEC_Enrollments.Id\}'\]"):
            await zoho.get_records(MODULE, ["${!BTEC_Enrollments.Id}"])
    assert fake.token_requests == 0


async def test_paging_over_1050_records_with_page_token(fake: ZohoFake) -> None:
    seen: list[str] = []
    async with client(fake) as zoho:
        async for page in zoho.pages(MODULE, FIELDS, sort_by="id"):
            seen += [record["id"] for record in page.records]
    assert seen == ids(1, 1050)
    assert [len(call.params.get("page_token", "")) > 0 for call in fake.calls] == [False] + [True] * 5
    assert {(c.params["fields"], c.params["per_page"]) for c in fake.calls} == {("Name,Modified_Time", "200")}


async def test_a_listing_resumes_from_a_page_token(fake: ZohoFake) -> None:
    async with client(fake) as zoho:
        listing = zoho.pages(MODULE, FIELDS, sort_by="id")
        first = await anext(listing)
        await listing.aclose()
        rest = [r["id"] async for page in zoho.pages(MODULE, FIELDS, sort_by="id", page_token=first.next_page_token)
                for r in page.records]  # fmt: skip
    assert rest == ids(201, 850)


async def test_if_modified_since_pulls_only_newer_records(fake: ZohoFake) -> None:
    since = datetime(2026, 2, 10, 9, 17, 0, tzinfo=timezone(timedelta(hours=3)))
    async with client(fake) as zoho:
        newer = [r["Name"] async for page in zoho.pages(MODULE, FIELDS, modified_since=since) for r in page.records]
        later = [p async for p in zoho.pages(MODULE, FIELDS, modified_since=datetime(2027, 1, 1, tzinfo=UTC))]
        with pytest.raises(InvalidZohoRequest, match="If-Modified-Since needs a time with its offset"):
            await anext(zoho.pages(MODULE, FIELDS, modified_since=datetime(2026, 1, 1)))
    assert sorted(newer) == [f"ENR-{n:05d}" for n in range(1021, 1051)]
    assert later == []
    assert fake.calls[0].if_modified_since == "2026-02-10T09:17:00+03:00"


async def test_deleted_records_page_by_page(fake: ZohoFake) -> None:
    fake.deleted[MODULE] = [{"id": str(n), "display_name": None, "type": "permanent", "deleted_by": None,
                             "created_by": None, "deleted_time": "2026-02-11T10:00:00+03:00"} for n in range(250)]  # fmt: skip
    async with client(fake) as zoho:
        pages = [page async for page in zoho.deleted(MODULE, kind="permanent")]
    assert [len(page) for page in pages] == [200, 50]
    assert [(c.params["type"], c.params["page"]) for c in fake.calls] == [("permanent", "1"), ("permanent", "2")]


async def test_429_with_retry_after_is_honoured(fake: ZohoFake) -> None:
    sleeps = Sleeps()
    fake.fail_next(429, "TOO_MANY_REQUESTS", retry_after=7)
    async with client(fake, sleeps) as zoho:
        found = await zoho.get_records(MODULE, ids(1, 1))
    assert isinstance(found[ids(1, 1)[0]], dict)
    assert (sleeps.waits, fake.api_calls) == ([7.0], 2)


async def test_the_fakes_rate_limit_is_waited_out(fake: ZohoFake) -> None:
    sleeps, now = Sleeps(), [0.0]
    fake.clock = lambda: now[0]
    fake.rate_limit = (1, 30.0)

    async def wait(seconds: float) -> None:
        await sleeps(seconds)
        now[0] += seconds

    async with client(fake, wait) as zoho:
        await zoho.get_records(MODULE, ids(1, 1))
        await zoho.get_records(MODULE, ids(2, 1))
    assert sleeps.waits == [30.0]


async def test_5xx_and_network_errors_back_off_and_give_up_after_max_attempts(fake: ZohoFake) -> None:
    sleeps = Sleeps()
    fake.fail_next(500, "INTERNAL_ERROR", times=2)
    async with client(fake, sleeps) as zoho:
        assert isinstance((await zoho.get_records(MODULE, ids(1, 1)))[ids(1, 1)[0]], dict)
        assert sleeps.waits == [1.0, 2.0]
        fake.fail_next(503, "INTERNAL_ERROR", times=10)
        with pytest.raises(ZohoUnavailable) as raised:
            await zoho.get_records(MODULE, ids(1, 1))
    assert sleeps.waits == [1.0, 2.0, 1.0, 2.0, 4.0, 8.0]
    assert str(raised.value) == (
        "Zoho GET /crm/v8/BTEC_Enrollments: INTERNAL_ERROR (HTTP 503): internal error; "
        "Zoho or the network failed repeatedly: retry later"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    async with client(fake, Sleeps(), credentials=credentials(fake, accounts_url=closed), max_attempts=2) as zoho:
        with pytest.raises(ZohoUnavailable, match=r"Zoho POST /oauth/v2/token: ConnectError \(HTTP 0\): no answer"):
            await zoho.get_records(MODULE, ids(1, 1))


async def test_a_retry_after_beyond_max_wait_is_raised_at_once_with_it(fake: ZohoFake) -> None:
    sleeps = Sleeps()
    fake.fail_next(429, "TOO_MANY_REQUESTS", retry_after=3600)
    async with client(fake, sleeps, max_wait=60) as zoho:
        with pytest.raises(ZohoUnavailable) as raised:
            await zoho.get_records(MODULE, ids(1, 1))
    assert (raised.value.retry_after, raised.value.zoho_code, sleeps.waits) == (3600.0, "TOO_MANY_REQUESTS", [])


async def test_a_slow_zoho_is_retried_as_a_timeout(fake: ZohoFake) -> None:
    sleeps = Sleeps()
    async with client(fake, sleeps, http=httpx.AsyncClient(timeout=5), max_attempts=2) as zoho:
        await zoho.get_records(MODULE, ids(1, 1))  # the token, before Zoho slows down
        zoho.http.timeout = httpx.Timeout(0.1)
        fake.delay = 0.4
        with pytest.raises(ZohoUnavailable, match=r"ReadTimeout \(HTTP 0\): no answer from Zoho"):
            await zoho.get_records(MODULE, ids(1, 1))
    assert sleeps.waits == [1.0]


@pytest.mark.parametrize(
    ("setup", "kind", "message"),
    [
        (lambda f: None, ZohoRefused,
         "Zoho GET /crm/v8/BTEC_Nothing: INVALID_MODULE (HTTP 400): the module name given seems to be invalid; "
         "check the module API name (`source:` in entities.yaml) in Setup > Developer Hub > APIs"),
        (lambda f: f.forbidden_modules.add("BTEC_Nothing") or f.load("BTEC_Nothing", []), ZohoRefused,
         "Zoho GET /crm/v8/BTEC_Nothing: NO_PERMISSION (HTTP 403): permission denied; "
         "give the Zoho user of the refresh token read access to this module or record"),
        (lambda f: setattr(f, "refresh_token", "1000.other"), ZohoAuthError,
         "Zoho POST /oauth/v2/token: invalid_code (HTTP 200): invalid_code; the refresh token is revoked or from "
         "another data centre: mint a new one from the self client"),
        (lambda f: setattr(f, "client_secret", "other"), ZohoAuthError,
         "Zoho POST /oauth/v2/token: invalid_client (HTTP 200): invalid_client; check the client id and client "
         "secret (api-console.zoho.com) and the data centre"),
        (lambda f: f.grants.extend([f.clock()] * 10), ZohoAuthError,
         "Zoho POST /oauth/v2/token: Access Denied (HTTP 400): You have made too many requests continuously. Please "
         "try again after some time.; Zoho allows 10 new access tokens per refresh token per 10 minutes: wait up to "
         "ten minutes, and let every process share the token cache"),
    ],
)  # fmt: skip
async def test_permanent_errors_are_raised_with_zohos_code_and_not_retried(
    fake: ZohoFake, setup: Any, kind: type[ZohoError], message: str
) -> None:
    setup(fake)
    sleeps = Sleeps()
    async with client(fake, sleeps) as zoho:
        with pytest.raises(kind) as raised:
            await zoho.get_records("BTEC_Nothing", ["1"])
    assert type(raised.value) is kind and str(raised.value) == message
    assert sleeps.waits == [] and fake.token_requests == 1 and fake.api_calls <= 1


async def test_secrets_never_reach_logs_errors_or_reprs(fake: ZohoFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    cache = MemoryTokenCache()
    zoho = client(fake, cache=cache)
    texts += [repr(zoho), repr(zoho.credentials), str(zoho.credentials)]
    await zoho.get_records(MODULE, ids(1, 1))
    fake.expire_tokens()
    fake.fail_next(429, "TOO_MANY_REQUESTS", retry_after=1)
    await zoho.get_records(MODULE, ids(1, 1))
    texts.append(repr(await cache.get(zoho.credentials.cache_key)))
    texts.append(zoho.credentials.cache_key)
    fake.expire_tokens()
    fake.refresh_token = "1000.rotated"  # the next refresh is refused
    for failing in (zoho.get_records(MODULE, ids(1, 1)), zoho.get_records("BTEC_Nothing", ["1"])):
        with pytest.raises(ZohoError) as raised:
            await failing
        texts += [str(raised.value), repr(raised.value), "".join(traceback.format_exception(raised.value))]
    await zoho.http.aclose()
    texts.append(caplog.text)
    assert "zoho: new access token" in caplog.text and "HTTP Request: GET" in caplog.text  # the logs were captured
    secrets = [CLIENT_SECRET, REFRESH_TOKEN, *fake.issued]
    assert len(fake.issued) == 2
    leaks = [(secret, text[:80]) for secret in secrets for text in texts if secret in text]
    assert leaks == []
