"""`GET /v1/deliveries`, `POST /v1/deliveries/retry` and a record's Moodle state in
`GET /v1/{entity}/{zoho_id}`, through the real app, with a worker against the Moodle fake, on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.delivery import Policy, Worker
from syncengine.engine import SyncEngine
from syncengine.sites import save_site
from tests import records
from tests.moodle_fake import MoodleFake, running
from tests.service import Api, running_api
from tests.test_delivery import drain

FAST = Policy(retry_base=0.01, retry_max=0.05, attempts=50, permanent_attempts=2, poll=0.05, waiting_recheck=0.05)
NONE = {"pending": 0, "working": 0, "waiting": 0, "done": 0, "dead": 0}


@pytest.fixture
def moodle() -> Iterator[MoodleFake]:
    with running() as fake:
        yield fake


@pytest.fixture
async def api(engine: SyncEngine, moodle: MoodleFake) -> AsyncIterator[Api]:
    async with running_api(engine, delivery_worker=False) as api:  # the test drives its own worker
        await save_site(engine.database, "school", moodle.url, moodle.token)
        yield api


async def listed(api: Api, query: str = "", tenant: str = "school") -> Any:
    response = await api.http.get(f"/v1/deliveries{query}", headers=api.auth(tenant))
    assert response.status_code == 200, response.text
    return response.json()


async def retried(api: Api, body: Any, tenant: str = "school") -> Any:
    response = await api.http.post("/v1/deliveries/retry", json=body, headers=api.auth(tenant))
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_list_counts_and_pages_the_callers_deliveries_only(api: Api) -> None:
    await api.sync("students", [records.student(z) for z in ("3001", "3002", "3003")])
    await api.sync("students", [records.student("3009")], tenant="other")
    first = await listed(api, "?limit=2")
    assert first["counts"] == NONE | {"pending": 3}
    assert [(d["zoho_id"], d["state"], d["operation"], d["attempts"]) for d in first["deliveries"]] == [
        ("3001", "pending", "upsert", 0),
        ("3002", "pending", "upsert", 0),
    ]
    assert set(first["deliveries"][0]) == {
        *("id", "entity", "zoho_id", "operation", "state", "attempts", "last_error", "moodle_id"),
        *("next_attempt_at", "created_at"),
    }  # no tenant: the caller's own
    after = first["next_after_id"]
    assert after == first["deliveries"][1]["id"]
    second = await listed(api, f"?limit=2&after_id={after}")
    assert [d["zoho_id"] for d in second["deliveries"]] == ["3003"] and second["next_after_id"] is None
    assert (await listed(api, "?state=dead"))["deliveries"] == []
    theirs = await listed(api, tenant="other")
    assert [d["zoho_id"] for d in theirs["deliveries"]] == ["3009"] and theirs["counts"]["pending"] == 1


async def test_a_dead_delivery_is_shown_retried_and_delivered(api: Api, moodle: MoodleFake) -> None:
    moodle.fail("error", times=2, function="core_user_create_users", errorcode="invalidparameter")
    await api.sync("students", [records.student("3001")])
    worker = Worker(api.engine.catalog, api.engine.database, FAST)
    await drain(worker)
    (dead,) = (await listed(api, "?state=dead"))["deliveries"]
    assert dead["attempts"] == 2 and dead["moodle_id"] is None and dead["next_attempt_at"] is None
    assert dead["last_error"].startswith("invalidparameter: core_user_create_users: invalidparameter")
    record = (await api.http.get("/v1/students/3001", headers=api.auth())).json()
    assert record["moodle"]["delivery"]["state"] == "dead" and record["moodle"]["delivery"]["id"] == dead["id"]
    assert record["moodle"]["targets"][0]["state"] == "not_delivered"

    assert await retried(api, {"ids": [dead["id"]]}, tenant="other") == {
        "requeued": [],
        "not_found": [dead["id"]],  # another tenant's delivery is not there for it
        "working": [],
    }
    assert await retried(api, {"all_dead": True}) == {"requeued": [dead["id"]], "not_found": [], "working": []}
    (again,) = (await listed(api))["deliveries"]
    assert (again["state"], again["attempts"], again["last_error"]) == ("pending", 0, None)
    await drain(worker)
    (done,) = (await listed(api, "?state=done"))["deliveries"]
    (user,) = [u for u in moodle.users.values() if u["idnumber"] == "3001"]
    assert done["moodle_id"] == user["id"]
    moodle_state = (await api.http.get("/v1/students/3001", headers=api.auth())).json()["moodle"]
    assert moodle_state["moodle_id"] == user["id"]
    (target,) = moodle_state["targets"]
    assert target | {"delivered_at": None} == {
        "target": "user",
        "kind": "user",
        "moodle_id": user["id"],
        "state": "active",
        "delivered_at": None,
    }
    assert target["delivered_at"].endswith("Z")


async def test_a_done_delivery_retried_is_sent_again_in_full(api: Api, moodle: MoodleFake) -> None:
    await api.sync("students", [records.student("3001")])
    worker = Worker(api.engine.catalog, api.engine.database, FAST)
    await drain(worker)
    (done,) = (await listed(api, "?state=done"))["deliveries"]
    (user,) = [u for u in moodle.users.values() if u["idnumber"] == "3001"]
    moodle.users[user["id"]]["firstname"] = "Changed by hand"
    assert (await retried(api, {"ids": [done["id"], 999999]}))["requeued"] == [done["id"]]
    await drain(worker)
    assert moodle.users[user["id"]]["firstname"] == "Ayşe"  # the stored state, sent again
    assert [u["idnumber"] for u in moodle.users.values()].count("3001") == 1


async def test_a_left_target_shows_as_left(api: Api, moodle: MoodleFake) -> None:
    await api.sync("students", [records.student("3001")])
    worker = Worker(api.engine.catalog, api.engine.database, FAST)
    await drain(worker)
    later = "2026-03-10T09:15:42+03:00"
    await api.sync("students", [records.student("3001", Status="Freeze", Modified_Time=later)])
    await drain(worker)
    (target,) = (await api.http.get("/v1/students/3001", headers=api.auth())).json()["moodle"]["targets"]
    assert target["state"] == "left"


async def test_a_row_a_worker_holds_is_left_alone(api: Api) -> None:
    await api.sync("students", [records.student("3001")])
    async with api.engine.database.begin() as conn:
        await conn.execute(sa.text("UPDATE syncengine_outbox SET state = 'working'"))
    (row,) = (await listed(api))["deliveries"]
    assert await retried(api, {"ids": [row["id"]]}) == {"requeued": [], "not_found": [], "working": [row["id"]]}
    assert (await listed(api))["counts"] == NONE | {"working": 1}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?state=lost", "state 'lost' is none of pending, working, waiting, done, dead; nothing was changed"),
        ("?limit=0", "limit must be a whole number from 1 to 1000, got '0'; nothing was changed"),
        ("?limit=1001", "limit must be a whole number from 1 to 1000, got '1001'; nothing was changed"),
        (
            "?after_id=-1",
            "after_id must be a whole number from 0 to 9223372036854775807, got '-1'; nothing was changed",
        ),
        ("?limit=1&limit=2", "'limit' is given 2 times: give it once; nothing was changed"),
        ("?page=2", "unknown query parameter 'page': this route takes state, limit and after_id; nothing was changed"),
    ],
)
async def test_a_bad_query_is_400_saying_what(api: Api, query: str, message: str) -> None:
    response = await api.http.get(f"/v1/deliveries{query}", headers=api.auth())
    assert response.status_code == 400
    assert response.json() == {
        "status": "error",
        "status_code": 400,
        "error": "invalid_delivery_query",
        "message": message,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", 'give delivery ids or all_dead, one of them: send {"ids": [delivery ids]} or {"all_dead": true}'),
        (
            b'{"ids": [1], "all_dead": true}',
            'give delivery ids or all_dead, one of them: send {"ids": [delivery ids]} or {"all_dead": true}',
        ),
        (
            b'{"ids": [0]}',
            "the body is not a retry request (Expected `int` >= 1 - at `$.ids[0]`): "
            'send {"ids": [delivery ids]} or {"all_dead": true}',
        ),
        (
            b'{"id": [1]}',
            "the body is not a retry request (Object contains unknown field `id`): "
            'send {"ids": [delivery ids]} or {"all_dead": true}',
        ),
    ],
)
async def test_a_bad_retry_is_400_saying_what(api: Api, body: bytes, message: str) -> None:
    response = await api.http.post("/v1/deliveries/retry", content=body, headers=api.auth())
    assert response.status_code == 400
    assert response.json() == {
        "status": "error",
        "status_code": 400,
        "error": "invalid_retry_request",
        "message": message,
    }
