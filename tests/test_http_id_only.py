"""Id-only webhooks on `POST /v1/sync/{entity}`: the record is fetched from the tenant's Zoho (the fake,
over HTTP) and synced; on SQLite and PostgreSQL, the service in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from syncengine.engine import SyncEngine
from syncengine.payloads import parse_body
from syncengine.zoho import Credentials
from syncengine.zoho_sites import save_zoho
from tests.conftest import FIXTURES, count_rows
from tests.records import program, student
from tests.service import Api, running_api, statuses
from tests.zoho_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoFake, serve_fake

FORM = "application/x-www-form-urlencoded"
ENROLLMENT = "6284103000002402077"  # the sample page's enrollment, whose parents the api fixture stores
#: The sample webhook body: {"zoho_id": "6284103000002402077", "module": "BTEC_Enrollments"}.
WEBHOOK = (FIXTURES / "webhook-json-id-only.json").read_bytes()
NO_CREDENTIALS = (
    "tenant 'other' has no Zoho credentials: store them with `syncengine tenant zoho other --dc DC "
    "--client-id ID --client-secret-file FILE --refresh-token-file FILE`"
)


def program_id(n: int) -> str:
    return str(6284103000001600000 + n)


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        running.load("BTEC_Enrollments", json.loads((FIXTURES / "btec-enrollments-page.json").read_bytes())["data"])
        running.load("Products", [program(program_id(n)) for n in range(1, 301)])
        yield running


@pytest.fixture
async def api(engine: SyncEngine, fake: ZohoFake) -> AsyncIterator[Api]:
    """The service; tenant "school" has the fake's credentials and the sample enrollment's parents,
    tenant "other" has no Zoho credentials."""
    for entity, name in [("programs", "products-record.json"), ("classes", "btec-classes-record.json")]:
        await engine.sync("school", entity, parse_body((FIXTURES / name).read_bytes()))
    await engine.sync("school", "students", [student("6284103000002010101")])
    credentials = Credentials(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, accounts_url=fake.url, api_url=fake.url)
    await save_zoho(engine.database, "school", credentials)
    async with running_api(engine) as api:
        yield api


def by_ids_calls(fake: ZohoFake) -> list[int]:
    return [len(call.params["ids"].split(",")) for call in fake.calls if "ids" in call.params]


async def post(api: Api, path: str, body: bytes, content_type: str = "application/json", **headers: str) -> Any:
    return await api.http.post(path, content=body, headers=api.auth() | {"Content-Type": content_type} | headers)


async def test_an_id_only_json_webhook_is_fetched_and_stored(api: Api, fake: ZohoFake) -> None:
    response = await post(api, "/v1/sync/enrollments", WEBHOOK)
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"zoho_enrollment_id": ENROLLMENT, "status": "NEW", "message": "created"}]
    assert by_ids_calls(fake) == [1]
    stored = await api.engine.fetch_record("school", "enrollments", ENROLLMENT)
    assert stored is not None and stored["values"]["Enrollment_Type"] == "Normal"


async def test_an_id_only_form_webhook_is_fetched_and_stored(api: Api, fake: ZohoFake) -> None:
    response = await post(api, "/v1/sync/enrollments", f"zoho_id={ENROLLMENT}&module=BTEC_Enrollments".encode(), FORM)
    assert response.status_code == 200, response.text
    assert statuses(response) == ["NEW"]
    stored = await api.engine.fetch_record("school", "enrollments", ENROLLMENT)
    assert stored is not None and stored["values"]["Enrollment_Type"] == "Normal"


async def test_250_ids_take_3_calls_and_are_all_stored(api: Api, fake: ZohoFake) -> None:
    ids = [program_id(n) for n in range(1, 251)]
    response = await post(api, "/v1/sync/programs", json.dumps({"data": [{"id": i} for i in ids]}).encode())
    assert response.status_code == 200, response.text
    assert [r["zoho_program_id"] for r in response.json()["results"]] == ids
    assert set(statuses(response)) == {"NEW"}
    assert by_ids_calls(fake) == [100, 100, 50]
    assert fake.tokens_granted == 1
    stored = await api.engine.fetch_record("school", "programs", program_id(250))
    assert stored is not None and stored["values"]["Product_Name"] == f"Program {program_id(250)}"


async def test_full_and_id_only_records_mix(api: Api, fake: ZohoFake) -> None:
    body = [program("77", Product_Name="Sent whole"), {"zoho_id": program_id(3), "$state": "save"}]
    response = await api.sync("programs", body)
    assert [(r["zoho_program_id"], r["status"]) for r in response.json()["results"]] == [
        ("77", "NEW"),
        (program_id(3), "NEW"),
    ]


async def test_an_unsubstituted_merge_field_is_a_400_without_a_fetch(api: Api, fake: ZohoFake) -> None:
    response = await post(api, "/v1/sync/enrollments", b'{"zoho_id": "${!BTEC_Enrollments.Id}"}')
    assert response.status_code == 400
    assert response.json()["error"] == "merge_field_not_substituted"
    assert response.json()["message"] == (
        "record 0 of this enrollments request: the id is '${!BTEC_Enrollments.Id}', a workflow merge field that "
        "Zoho did not substitute; in the webhook's body, insert the record id from the merge-field list "
        "(${!BTEC_Enrollments.Id}) so that Zoho sends the id itself; nothing was fetched or synced"
    )
    form = await post(api, "/v1/sync/enrollments", b"zoho_id=%24%7B%21BTEC_Enrollments.Id%7D", FORM)
    assert (form.status_code, form.json()["error"]) == (400, "merge_field_not_substituted")
    assert fake.calls == []


async def test_a_webhook_of_another_module_is_a_400(api: Api, fake: ZohoFake) -> None:
    response = await post(api, "/v1/sync/programs", WEBHOOK)
    assert (response.status_code, response.json()["error"]) == (400, "wrong_module")
    assert "its module is 'BTEC_Enrollments', but /v1/sync/programs takes Zoho module Products" in response.text
    assert fake.calls == []


async def test_a_record_zoho_refuses_is_that_records_result(api: Api, fake: ZohoFake) -> None:
    fake.record_errors[program_id(1)] = ("NO_PERMISSION", "permission denied")
    response = await api.sync("programs", [{"id": program_id(1)}, {"id": program_id(2)}])
    assert response.status_code == 200, response.text
    denied, fetched = response.json()["results"]
    assert denied == {
        "zoho_program_id": program_id(1),
        "status": "SKIPPED",
        "reason": "NO_PERMISSION",
        "message": f"not fetched from Zoho: Zoho answered NO_PERMISSION for Products record {program_id(1)}: "
        "permission denied; give the Zoho user of the refresh token read access to this module or record; "
        "nothing was written",
    }
    assert fetched["status"] == "NEW"
    assert await api.engine.fetch_record("school", "programs", program_id(1)) is None


async def test_a_tenant_without_credentials_gets_a_result_saying_how_to_configure(api: Api, fake: ZohoFake) -> None:
    response = await api.sync("programs", [{"id": program_id(1)}, program("77")], tenant="other")
    assert response.status_code == 200, response.text
    missing, whole = response.json()["results"]
    assert missing == {
        "zoho_program_id": program_id(1),
        "status": "SKIPPED",
        "reason": "zoho_not_configured",
        "message": NO_CREDENTIALS,
    }
    assert whole["status"] == "NEW"
    key = {"Idempotency-Key": "only-ids"}
    first = await api.sync("programs", [{"id": program_id(2)}], tenant="other", headers=key)
    again = await api.sync("programs", [{"id": program_id(2)}], tenant="other", headers=key)
    assert first.json()["results"][0]["reason"] == "zoho_not_configured"
    assert (again.headers["Idempotent-Replayed"], again.json()) == ("true", first.json())
    assert fake.calls == []


async def test_zoho_throttling_past_the_retries_is_a_503_with_retry_after(api: Api, fake: ZohoFake) -> None:
    fake.fail_next(429, "TOO_MANY_REQUESTS", retry_after=45)  # longer than a request waits: answered at once
    response = await api.sync("programs", [program("77"), {"id": program_id(1)}])
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "45"
    assert response.json()["error"] == "zoho_unavailable"
    assert await count_rows(api.engine.database, "programs", "school") == 1  # the fixture's program only


async def test_a_dry_run_fetches_and_rolls_back(api: Api, fake: ZohoFake) -> None:
    response = await post(api, "/v1/sync/enrollments?dry_run=true", WEBHOOK)
    assert response.status_code == 200, response.text
    assert response.json()["dry_run"] is True and statuses(response) == ["NEW"]
    assert by_ids_calls(fake) == [1]
    assert await api.engine.fetch_record("school", "enrollments", ENROLLMENT) is None


async def test_an_idempotency_key_replays_the_answer_without_fetching_again(api: Api, fake: ZohoFake) -> None:
    fake.record_errors[program_id(1)] = ("NO_PERMISSION", "permission denied")
    body = [{"id": program_id(1)}, {"id": program_id(2)}]
    first = await api.sync("programs", body, headers={"Idempotency-Key": "webhook-1"})
    again = await api.sync("programs", body, headers={"Idempotency-Key": "webhook-1"})
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert [r["status"] for r in again.json()["results"]] == ["SKIPPED", "NEW"]
    assert by_ids_calls(fake) == [2]


async def test_an_id_that_is_no_zoho_id_is_invalid(api: Api, fake: ZohoFake) -> None:
    response = await api.sync("programs", [{"id": "-None-"}, {"id": program_id(1)}])
    assert response.status_code == 200, response.text
    invalid = response.json()["results"][0]
    assert (invalid["status"], invalid["errors"][0]["field"]) == ("INVALID", "id")
    assert statuses(response)[1] == "NEW" and by_ids_calls(fake) == [1]


async def test_a_notification_callback_s_inserted_ids_are_fetched(api: Api, fake: ZohoFake) -> None:
    callback = {"ids": [program_id(8), program_id(9)], "operation": "insert", "module": "Products",
                "channel_id": "1000000068001", "token": None}  # fmt: skip
    response = await api.sync("programs", callback)
    assert response.status_code == 200, response.text
    assert statuses(response) == ["NEW", "NEW"]
    assert by_ids_calls(fake) == [2]
