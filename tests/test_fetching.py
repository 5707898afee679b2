"""Records named by id, fetched from Zoho and synced (syncengine/fetching.py): against the Zoho fake
over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from syncengine.engine import SyncEngine
from syncengine.errors import to_api_error
from syncengine.fetching import UnsubstitutedMergeField, ZohoUnreachable, fetch_and_sync, id_only, sync_fetching
from syncengine.zoho import Credentials, ZohoClient, ZohoUnavailable
from syncengine.zoho_sites import NoZohoCredentials, open_zoho, save_zoho
from tests.conftest import count_rows
from tests.records import program
from tests.zoho_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoFake, serve_fake

MODULE = "Products"  # the programs entity's module: no lookups, so any record stands alone
TENANT = "school"


def program_id(n: int) -> str:
    return str(6284103000001520000 + n)


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        running.load(MODULE, [program(program_id(n)) for n in range(1, 301)])
        yield running


@pytest.fixture
async def zoho(engine: SyncEngine, fake: ZohoFake) -> AsyncIterator[ZohoClient]:
    credentials = Credentials(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, accounts_url=fake.url, api_url=fake.url)
    await save_zoho(engine.database, TENANT, credentials)
    async with await open_zoho(engine.database, TENANT, max_attempts=2, sleep=no_sleep) as client:
        yield client


async def no_sleep(seconds: float) -> None:
    pass


def by_ids_calls(fake: ZohoFake) -> list[int]:
    return [len(call.params["ids"].split(",")) for call in fake.calls if "ids" in call.params]


async def test_ids_are_fetched_100_a_call_and_synced_in_request_order(
    engine: SyncEngine, fake: ZohoFake, zoho: ZohoClient
) -> None:
    ids = [program_id(n) for n in range(250, 0, -1)]
    fake.record_errors[program_id(7)] = ("NO_PERMISSION", "permission denied")
    missing = "6284103000009999999"
    report = await fetch_and_sync(engine, zoho, TENANT, "programs", [*ids, missing])
    assert by_ids_calls(fake) == [100, 100, 51]
    assert [r.zoho_id for r in report.results] == [*ids, missing]
    assert report.summary["NEW"] == 249 and report.summary["SKIPPED"] == 2
    denied = report.results[ids.index(program_id(7))]
    assert (denied.status, denied.reason) == ("SKIPPED", "NO_PERMISSION")
    assert denied.message == (
        f"not fetched from Zoho: Zoho answered NO_PERMISSION for Products record {program_id(7)}: permission denied; "
        "give the Zoho user of the refresh token read access to this module or record; nothing was written"
    )
    assert (report.results[-1].status, report.results[-1].reason) == ("SKIPPED", "NOT_FOUND")
    stored = await engine.fetch_record(TENANT, "programs", program_id(1))
    assert stored is not None and stored["values"]["Product_Name"] == f"Program {program_id(1)}"
    assert await engine.fetch_record(TENANT, "programs", program_id(7)) is None
    assert await count_rows(engine.database, "programs", TENANT) == 249


async def test_deletions_are_not_fetched(engine: SyncEngine, fake: ZohoFake, zoho: ZohoClient) -> None:
    await fetch_and_sync(engine, zoho, TENANT, "programs", [program_id(1), program_id(2)])
    calls = len(fake.calls)
    report = await fetch_and_sync(
        engine, zoho, TENANT, "programs", [program_id(1), program_id(3)], {program_id(1): "delete"}
    )
    assert [r.status for r in report.results] == ["DELETED", "NEW"]
    assert by_ids_calls(fake)[-1] == 1 and len(fake.calls) == calls + 1


async def test_full_and_id_only_records_mix_in_one_batch(engine: SyncEngine, fake: ZohoFake, zoho: ZohoClient) -> None:
    records = [program("77", Product_Name="Sent whole"), {"zoho_id": program_id(5), "$approval_state": "approved"}]
    report = await sync_fetching(engine, zoho, TENANT, "programs", records)
    assert [(r.zoho_id, r.status) for r in report.results] == [("77", "NEW"), (program_id(5), "NEW")]
    assert by_ids_calls(fake) == [1]


async def test_dry_run_fetches_and_rolls_back(engine: SyncEngine, fake: ZohoFake, zoho: ZohoClient) -> None:
    report = await sync_fetching(engine, zoho, TENANT, "programs", [{"id": program_id(1)}], dry_run=True)
    assert report.dry_run and [r.status for r in report.results] == ["NEW"]
    assert await count_rows(engine.database, "programs") == 0


async def test_without_credentials_each_id_only_record_says_how_to_configure(engine: SyncEngine) -> None:
    records = [{"id": "1001"}, program("77")]
    report = await sync_fetching(engine, NoZohoCredentials(TENANT), TENANT, "programs", records)
    first, second = report.results
    assert (first.status, first.reason, second.status) == ("SKIPPED", "zoho_not_configured", "NEW")
    assert first.message == (
        "tenant 'school' has no Zoho credentials: store them with `syncengine tenant zoho school --dc DC "
        "--client-id ID --client-secret-file FILE --refresh-token-file FILE`"
    )


async def test_zoho_unreachable_fails_the_whole_batch(engine: SyncEngine, fake: ZohoFake, zoho: ZohoClient) -> None:
    fake.fail_next(429, "TOO_MANY_REQUESTS", times=2, retry_after=7)
    with pytest.raises(ZohoUnreachable) as failed:
        await sync_fetching(engine, zoho, TENANT, "programs", [program("77"), {"id": program_id(1)}])
    assert failed.value.retry_after == 7
    assert str(failed.value) == (
        "could not fetch the programs records from Zoho: Zoho GET /crm/v8/Products answered "
        "TOO_MANY_REQUESTS (HTTP 429) after the client's retries; nothing of this request was synced: "
        "send it again after 7 seconds"
    )
    assert await count_rows(engine.database, "programs") == 0


async def test_a_merge_field_is_refused_before_any_call(engine: SyncEngine, fake: ZohoFake, zoho: ZohoClient) -> None:
    with pytest.raises(UnsubstitutedMergeField) as refused:
        await sync_fetching(engine, zoho, TENANT, "programs", [{"id": program_id(1)}, {"id": "${!Products.Id}"}])
    assert "record 1 of this programs request: the id is '${!Products.Id}'" in str(refused.value)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"id": "12"}, "12"),
        ({"zoho_id": 12, "$state": "save"}, "12"),
        ({"id": "12", "$deleted": True}, None),
        ({"id": "12", "Name": "x"}, None),
        ({"id": "12", "zoho_id": "12"}, None),
        ({"id": True}, None),
        ({"$state": "save"}, None),
    ],
)
def test_id_only(record: dict[str, object], expected: str | None) -> None:
    assert id_only(record) == expected


def test_zoho_unreachable_is_a_503_with_zohos_retry_after() -> None:
    failure = ZohoUnavailable("Zoho GET /crm/v8/Products", 429, "TOO_MANY_REQUESTS", "too many", retry_after=42.2)
    error = to_api_error(ZohoUnreachable("programs", failure))
    assert (error.status_code, error.error, error.headers) == (503, "zoho_unavailable", {"Retry-After": "42"})


async def test_zoho_refusing_the_credentials_is_each_id_only_records_result(engine: SyncEngine, fake: ZohoFake) -> None:
    revoked = "1000.revoked-refresh-token.0000"
    credentials = Credentials(CLIENT_ID, CLIENT_SECRET, revoked, accounts_url=fake.url, api_url=fake.url)
    async with ZohoClient(credentials) as zoho:
        report = await sync_fetching(engine, zoho, TENANT, "programs", [{"id": program_id(1)}, program("77")])
    refused, whole = report.results
    assert (refused.status, refused.reason, whole.status) == ("SKIPPED", "invalid_code", "NEW")
    assert "mint a new one from the self client" in refused.message
    assert revoked not in refused.message and CLIENT_SECRET not in refused.message


async def test_zoho_not_answering_fails_the_whole_batch(engine: SyncEngine, fake: ZohoFake) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    credentials = Credentials(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, accounts_url=fake.url, api_url=nowhere)
    async with ZohoClient(credentials, max_attempts=2, sleep=no_sleep) as zoho:
        with pytest.raises(ZohoUnreachable) as failed:
            await sync_fetching(engine, zoho, TENANT, "programs", [program("77"), {"id": program_id(1)}])
    assert str(failed.value).startswith(
        "could not fetch the programs records from Zoho: Zoho GET /crm/v8/Products got no answer (ConnectError)"
    )
    assert failed.value.retry_after == 30
    assert await count_rows(engine.database, "programs") == 0


async def test_an_id_sent_twice_is_fetched_once(engine: SyncEngine, fake: ZohoFake, zoho: ZohoClient) -> None:
    report = await fetch_and_sync(engine, zoho, TENANT, "programs", [program_id(1), program_id(1)])
    assert [r.zoho_id for r in report.results] == [program_id(1)] * 2
    assert report.results[0].status == "NEW"
    assert by_ids_calls(fake) == [1]
