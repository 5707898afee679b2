"""POST /v1/sync/{entity} through the real ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest

from syncengine.engine import SyncEngine
from syncengine.idempotency import Claim, IdempotencyKeys, request_hash
from tests.conftest import count_rows
from tests.records import class_, enrollment, program, student
from tests.service import Api, running_api, statuses


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine) as api:
        yield api


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"data": [student("3001"), student("3002")]}, id="zoho-envelope"),
        pytest.param([student("3001"), student("3002")], id="array"),
    ],
)
async def test_json_shapes(api: Api, body: object) -> None:
    response = await api.sync("students", body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": "success",
        "entity": "students",
        "dry_run": False,
        "results": [
            {"zoho_student_id": "3001", "status": "NEW", "message": "created"},
            {"zoho_student_id": "3002", "status": "NEW", "message": "created"},
        ],
        "summary": {"NEW": 2, "UPDATED": 0, "UNCHANGED": 0, "INVALID": 0, "SKIPPED": 0, "DELETED": 0},
    }


async def test_single_object(api: Api) -> None:
    response = await api.sync("programs", program("1001"))
    assert statuses(response) == ["NEW"]
    assert response.json()["results"][0]["zoho_program_id"] == "1001"


async def test_form_body_is_one_record(api: Api) -> None:
    form = {"zoho_id": "1001", "Product_Name": "Web Design", "Status": "Approved", "Program_Price": "4500"}
    response = await api.http.post(
        "/v1/sync/programs",
        content=urlencode(form),
        headers=api.auth() | {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["results"] == [{"zoho_program_id": "1001", "status": "NEW", "message": "created"}]
    deleted = await api.http.post(
        "/v1/sync/programs",
        content=urlencode({"zoho_id": "1001", "event": "delete"}),
        headers=api.auth() | {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert statuses(deleted) == ["DELETED"]


async def test_results_are_in_input_order_with_every_status(api: Api) -> None:
    await api.sync("programs", [program("1001")])
    await api.sync("students", [student("3001"), student("3002")])
    body = [
        student("3003"),
        student("3001", Status="Freeze"),
        student("3002"),
        student("3004", Academic_Email="nope"),
        student("3001", Modified_Time="2020-01-01T00:00:00+00:00"),
        {"id": "3002", "$deleted": True},
    ]
    response = await api.sync("students", {"data": body})
    results = response.json()["results"]
    assert [(r["zoho_student_id"], r["status"]) for r in results] == [
        ("3003", "NEW"),
        ("3001", "UPDATED"),
        ("3002", "UNCHANGED"),
        ("3004", "INVALID"),
        ("3001", "SKIPPED"),
        ("3002", "DELETED"),
    ]
    assert results[1]["changes"] == {"Status": ["Active", "Freeze"]}
    assert results[3]["errors"] == [
        {"field": "Academic_Email", "message": "'nope' is not an email address: expected name@domain.tld"}
    ]
    assert results[4]["reason"] == "stale_update"


async def test_dependency_order_and_missing_parent(api: Api) -> None:
    skipped = await api.sync("enrollments", [enrollment("5001")])
    assert skipped.json()["results"][0]["reason"] == "student_not_synced_yet"
    for entity, record in (("programs", program("1001")), ("students", student("3001")), ("classes", class_("4001"))):
        assert statuses(await api.sync(entity, [record])) == ["NEW"]
    assert statuses(await api.sync("enrollments", [enrollment("5001")])) == ["NEW"]


async def test_dry_run_runs_the_pipeline_and_writes_nothing(api: Api) -> None:
    response = await api.sync("students", [student("3001")], params={"dry_run": "true"})
    assert response.json()["dry_run"] is True
    assert statuses(response) == ["NEW"]
    assert await count_rows(api.engine.database, "students") == 0
    assert statuses(await api.sync("students", [student("3001")], params={"dry_run": "false"})) == ["NEW"]


async def test_x_tenant_id_naming_the_keys_tenant_is_accepted(api: Api) -> None:
    response = await api.sync("programs", [program()], headers={"X-Tenant-ID": "school"})
    assert statuses(response) == ["NEW"]
    with_api_key = await api.http.post("/v1/sync/programs", json=[program()], headers={"X-API-Key": api.keys["school"]})
    assert statuses(with_api_key) == ["UNCHANGED"]


async def test_request_id_is_echoed_or_made(api: Api) -> None:
    response = await api.sync("programs", [program()], headers={"X-Request-ID": "zoho-run-42"})
    assert response.headers["x-request-id"] == "zoho-run-42"
    made = await api.http.get("/v1/health")
    assert len(made.headers["x-request-id"]) == 32


# Idempotency


async def test_same_key_and_body_replays_without_reprocessing(api: Api) -> None:
    headers = {"Idempotency-Key": "batch-0001"}
    first = await api.sync("students", [student("3001")], headers=headers)
    assert statuses(first) == ["NEW"] and "idempotent-replayed" not in first.headers
    again = await api.sync("students", [student("3001")], headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # NEW again: the stored answer, not a second run
    without_key = await api.sync("students", [student("3001")])
    assert statuses(without_key) == ["UNCHANGED"]  # a plain re-send is processed: the truthful answer


async def test_same_key_with_another_body_is_422(api: Api) -> None:
    headers = {"Idempotency-Key": "batch-0001"}
    await api.sync("students", [student("3001")], headers=headers)
    response = await api.sync("students", [student("3002")], headers=headers)
    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    dry = await api.sync("students", [student("3001")], headers=headers, params={"dry_run": "true"})
    assert dry.status_code == 422  # a dry run is another request


async def test_keys_are_per_tenant_and_per_endpoint(api: Api) -> None:
    headers = {"Idempotency-Key": "k-1"}
    assert statuses(await api.sync("programs", [program("1001")], headers=headers)) == ["NEW"]
    other_tenant = await api.sync("programs", [program("1001")], tenant="other", headers=headers)
    assert statuses(other_tenant) == ["NEW"] and "idempotent-replayed" not in other_tenant.headers
    other_endpoint = await api.sync("students", [student("3001")], headers=headers)
    assert statuses(other_endpoint) == ["NEW"]


async def test_an_error_answer_is_replayed_too(api: Api) -> None:
    headers = {"Idempotency-Key": "bad-1", "Content-Type": "application/json"}
    first = await api.http.post("/v1/sync/programs", content=b"{oops", headers=api.auth() | headers)
    again = await api.http.post("/v1/sync/programs", content=b"{oops", headers=api.auth() | headers)
    assert first.status_code == again.status_code == 400
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


async def test_concurrent_requests_with_one_key_process_once(api: Api) -> None:
    headers = {"Idempotency-Key": "concurrent-1"}
    batch = [student(str(3000 + i)) for i in range(200)]
    responses = await asyncio.wait_for(
        asyncio.gather(*(api.sync("students", batch, headers=headers) for _ in range(8))), timeout=60
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1  # every caller sees the one answer
    assert set(statuses(responses[0])) == {"NEW"}
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert await count_rows(api.engine.database, "syncengine_outbox") == 200  # processed once


async def test_expired_keys_are_purged_and_can_be_reused(engine: SyncEngine) -> None:
    async with running_api(engine, idempotency_ttl=0.2) as api:
        headers = {"Idempotency-Key": "short-lived"}
        await api.sync("programs", [program("1001")], headers=headers)
        assert await count_rows(engine.database, "syncengine_idempotency_keys") == 1
        await asyncio.sleep(0.6)  # the app purges every min(ttl, 5 minutes)
        assert await count_rows(engine.database, "syncengine_idempotency_keys") == 0
        again = await api.sync("programs", [program("1002")], headers=headers)
        assert statuses(again) == ["NEW"]


async def test_a_keyed_dry_run_replays_and_writes_nothing(api: Api) -> None:
    """A dry run's answer is stored after it, on its own (nothing was written to be atomic with)."""
    headers, params = {"Idempotency-Key": "dry-1"}, {"dry_run": "true"}
    first = await api.sync("students", [student("3001")], headers=headers, params=params)
    again = await api.sync("students", [student("3001")], headers=headers, params=params)
    assert first.json()["dry_run"] is True and statuses(first) == ["NEW"]
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert await count_rows(api.engine.database, "students") == 0


@pytest.mark.parametrize("holder", ["alive", "dead"])
async def test_a_claim_without_an_answer_is_waited_for_only_while_its_holder_lives(
    engine: SyncEngine, holder: str
) -> None:
    """Another process's claim (its own IdempotencyKeys, with its own lock): while it holds the
    key, a repeat waits and gets 409; once it is gone without an answer, a repeat runs at once."""
    body = msgspec.json.encode([student("3001")])
    digest = request_hash("application/json", "", body)
    other = IdempotencyKeys(engine.database, ttl=3600, wait=0.001)
    claim = await other.claim("school", "/v1/sync/students", "held-1", digest)
    assert isinstance(claim, Claim)
    if holder == "dead":
        await other.let_go(claim)  # as its process's end would: the claim row stays, unanswered
    try:
        async with running_api(engine, idempotency_wait=0.001) as api:
            headers = api.auth() | {"Idempotency-Key": "held-1", "Content-Type": "application/json"}
            response = await api.http.post("/v1/sync/students", content=body, headers=headers)
            if holder == "alive":
                assert response.status_code == 409, response.text
                assert response.json()["error"] == "idempotency_key_in_use"
                assert await count_rows(engine.database, "students") == 0
            else:
                assert response.status_code == 200 and "idempotent-replayed" not in response.headers
                assert statuses(response) == ["NEW"]
                replay = await api.http.post("/v1/sync/students", content=body, headers=headers)
                assert replay.headers["idempotent-replayed"] == "true"
    finally:
        await other.close()


@pytest.mark.postgres
async def test_a_write_conflict_is_not_stored_as_the_keys_answer(databases: Any, catalog: Any) -> None:
    """A keyed batch loses its race (one attempt allowed): the test changes its rows after the
    batch fetched them, before it writes them. That is a 409 `write_conflict`, and the claim is
    let go, so that the retry with the same key runs instead of replaying the 409."""
    database = await databases.create("postgresql", catalog)
    ids = [str(7000 + i) for i in range(40)]
    where = f"tenant_id = 'school' AND zoho_id IN ({', '.join(repr(i) for i in ids)})"
    async with running_api(SyncEngine(catalog, database, race_attempts=1)) as api:
        await api.sync("students", [student(i) for i in ids])
        records, headers = [student(i, First_Name="A") for i in ids], {"Idempotency-Key": "race-1"}
        async with database.connect() as locker:
            await locker.begin()
            await locker.exec_driver_sql(f"SELECT 1 FROM students WHERE {where} FOR UPDATE")
            locker_pid = (await locker.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
            blocked = f"pg_stat_activity WHERE {locker_pid} = ANY(pg_blocking_pids(pid))"  # by us, not by others' tests
            request = asyncio.create_task(api.sync("students", records, headers=headers))
            while not await count_rows(database, blocked):  # its update waits for our locks
                assert not request.done(), request.result().text
                await asyncio.sleep(0.01)
            await locker.exec_driver_sql(f"UPDATE students SET updated_at = now() WHERE {where}")
            await locker.commit()
        first = await request
        assert (first.status_code, first.json()["error"]) == (409, "write_conflict"), first.text
        assert await count_rows(database, "syncengine_idempotency_keys") == 0
        retry = await api.sync("students", records, headers=headers)
        assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
        assert set(statuses(retry)) == {"UPDATED"}


async def test_a_keyed_batch_that_writes_nothing_stores_its_answer_too(api: Api) -> None:
    """All UNCHANGED: no record is written, the answer is (PostgreSQL begins the transaction for it)."""
    await api.sync("students", [student("3001")])
    headers = {"Idempotency-Key": "unchanged-1"}
    first = await api.sync("students", [student("3001")], headers=headers)
    again = await api.sync("students", [student("3001")], headers=headers)
    assert statuses(first) == ["UNCHANGED"] and "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
