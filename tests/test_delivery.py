"""The delivery worker against the Moodle fake over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.delivery import Counts, Policy, Worker
from syncengine.engine import SyncEngine
from syncengine.sites import save_site
from tests import records
from tests.conftest import Databases
from tests.moodle_fake import MoodleFake, running

FAST = Policy(retry_base=0.01, retry_max=0.05, attempts=50, permanent_attempts=2, poll=0.05, waiting_recheck=0.05)
LATER = "2026-03-10T09:15:42+03:00"


@pytest.fixture
def moodle() -> Iterator[MoodleFake]:
    with running() as fake:
        yield fake


async def connected(engine: SyncEngine, moodle: MoodleFake, tenant: str = "school") -> None:
    await save_site(engine.database, tenant, moodle.url, moodle.token)


def class_(zoho_id: str = "4001", **fields: Any) -> dict[str, Any]:
    return records.class_(zoho_id, Class_Short_Name=f"C{zoho_id}", Class_Status="Active", Teacher="2001", **fields)


async def school(engine: SyncEngine, tenant: str = "school") -> None:
    await engine.sync(tenant, "programs", [records.program("1001")])
    await engine.sync(tenant, "teachers", [records.teacher("2001")])
    await engine.sync(tenant, "students", [records.student("3001"), records.student("3002")])
    await engine.sync(tenant, "classes", [class_("4001")])
    await engine.sync(tenant, "enrollments", [records.enrollment("5001", "3001"), records.enrollment("5002", "3002")])


async def drain(worker: Worker, rounds: int = 50) -> Counts:
    """Rounds until nothing is due (back-offs in FAST are a few ms); the totals."""
    total = Counts()
    for _ in range(rounds):
        counts = await worker.deliver_once()
        for name in ("delivered", "waiting", "retrying", "dead"):
            setattr(total, name, getattr(total, name) + getattr(counts, name))
        if not counts and not await worker._more_due():
            due = await worker._next_due()
            if due is None or due > 1:
                break
            await asyncio.sleep(max(0.0, due) + 0.01)
    return total


async def states(engine: SyncEngine) -> dict[str, int]:
    async with engine.database.connect() as conn:
        rows = await conn.execute(sa.text("SELECT state, count(*) FROM syncengine_outbox GROUP BY state"))
        return {row[0]: int(row[1]) for row in rows}


async def link_ids(engine: SyncEngine, entity: str) -> dict[str, int | None]:
    async with engine.database.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT zoho_id, moodle_id FROM syncengine_moodle_links WHERE entity = :e AND target = :t"),
            {"e": entity, "t": engine.catalog.entity(entity).moodle[0].name},  # type: ignore[index]
        )
        return {row[0]: row[1] for row in rows}


def writes(moodle: MoodleFake) -> list[str]:
    return [
        c.function for c in moodle.calls if "create" in c.function or "update" in c.function or "enrol" in c.function
    ]


async def test_a_school_lands_in_moodle_and_again_changes_nothing(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await school(engine)
    worker = Worker(engine.catalog, engine.database, FAST)
    await drain(worker)
    assert await states(engine) == {"done": 7}
    assert [c["idnumber"] for c in moodle.categories.values()] == ["", "1001"]
    users = {u["idnumber"]: u for u in moodle.users.values()}
    assert sorted(users) == ["", "2001", "3001", "3002"]
    (course,) = [c for c in moodle.courses.values() if c["idnumber"] == "4001"]
    assert course["categoryid"] == (await link_ids(engine, "programs"))["1001"]
    assert moodle.enrolments == {
        (course["id"], users["2001"]["id"]): {"roles": {3}, "timestart": 0, "timeend": 0, "suspended": False},
        (course["id"], users["3001"]["id"]): {"roles": {5}, "timestart": 0, "timeend": 0, "suspended": False},
        (course["id"], users["3002"]["id"]): {"roles": {5}, "timestart": 0, "timeend": 0, "suspended": False},
    }
    assert await link_ids(engine, "students") == {"3001": users["3001"]["id"], "3002": users["3002"]["id"]}
    before = len(writes(moodle))
    async with engine.database.begin() as conn:  # every row delivered again, as after a lost answer
        await conn.execute(sa.text("UPDATE syncengine_outbox SET state = 'pending', next_attempt_at = created_at"))
    await drain(worker)
    assert await states(engine) == {"done": 7}
    assert len(writes(moodle)) == before


async def test_a_deleted_enrollment_suspends_the_enrolment(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await school(engine)
    worker = Worker(engine.catalog, engine.database, FAST)
    await drain(worker)
    await engine.sync("school", "enrollments", [{"id": "5001", "$deleted": True, "Modified_Time": LATER}])
    await drain(worker)
    suspended = {key: e["suspended"] for key, e in moodle.enrolments.items() if 5 in e["roles"]}
    assert sorted(suspended.values()) == [False, True]
    assert len(moodle.enrolments) == 3  # suspended, not removed


async def test_a_student_leaving_the_active_statuses_is_suspended_and_comes_back(
    engine: SyncEngine, moodle: MoodleFake
) -> None:
    await connected(engine, moodle)
    await school(engine)
    worker = Worker(engine.catalog, engine.database, FAST)
    await drain(worker)
    user = (await link_ids(engine, "students"))["3001"]
    assert user is not None
    await engine.sync("school", "students", [records.student("3001", Status="Freeze", Modified_Time=LATER)])
    await drain(worker)
    assert moodle.users[user]["suspended"] is True
    back = "2026-04-10T09:15:42+03:00"
    await engine.sync("school", "students", [records.student("3001", Status="Active", Modified_Time=back)])
    await drain(worker)
    assert moodle.users[user]["suspended"] is False
    assert len([u for u in moodle.users.values() if u["idnumber"] == "3001"]) == 1


async def test_moodle_down_then_back_delivers_everything(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await school(engine)
    moodle.fail("status", status=503, times=6)
    worker = Worker(engine.catalog, engine.database, FAST)
    total = await drain(worker)
    assert total.retrying >= 1
    assert await states(engine) == {"done": 7}
    assert len([u for u in moodle.users.values() if u["idnumber"]]) == 3
    assert len(moodle.enrolments) == 3


async def test_a_permanent_error_ends_dead_with_moodles_message(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    moodle.fail("error", errorcode="invalidparameter", times=99, function="core_user_create_users")
    await engine.sync("school", "teachers", [records.teacher("2001")])
    worker = Worker(engine.catalog, engine.database, FAST)
    await drain(worker)
    async with engine.database.connect() as conn:
        row = (await conn.execute(sa.text("SELECT state, attempts, last_error FROM syncengine_outbox"))).one()
    assert (row.state, row.attempts) == ("dead", 2)
    assert row.last_error == (
        "invalidparameter: core_user_create_users: invalidparameter: error/invalidparameter: fix the record's values "
        "(a taken username or email, an upper-case username, a missing field), then retry"
    )


async def test_a_child_waits_for_its_parent(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await engine.sync("school", "programs", [records.program("1001")])
    await engine.sync("school", "classes", [records.class_("4001", Class_Short_Name="C1", Class_Status="Active")])
    async with engine.database.begin() as conn:  # the program's delivery is not due yet
        await conn.execute(
            sa.text("UPDATE syncengine_outbox SET next_attempt_at = '2999-01-01' WHERE entity = 'programs'")
        )
    worker = Worker(engine.catalog, engine.database, FAST)
    await worker.deliver_once()
    async with engine.database.connect() as conn:
        row = (
            await conn.execute(sa.text("SELECT state, last_error FROM syncengine_outbox WHERE entity = 'classes'"))
        ).one()
    assert row.state == "waiting"
    assert row.last_error == "course: waiting for the Moodle id of programs 1001 (not delivered yet)"
    assert [c for c in moodle.courses.values() if c["idnumber"] == "4001"] == []
    async with engine.database.begin() as conn:
        await conn.execute(
            sa.text("UPDATE syncengine_outbox SET next_attempt_at = created_at WHERE entity = 'programs'")
        )
    await drain(worker)
    assert await states(engine) == {"done": 2}
    assert [c["idnumber"] for c in moodle.courses.values() if c["idnumber"] == "4001"] == ["4001"]


async def test_a_tenant_without_a_site_keeps_its_rows_pending(engine: SyncEngine, moodle: MoodleFake) -> None:
    await school(engine, tenant="other")
    worker = Worker(engine.catalog, engine.database, FAST)
    assert not await worker.deliver_once()
    assert await states(engine) == {"pending": 7}
    await connected(engine, moodle, tenant="other")
    await drain(worker)
    assert await states(engine) == {"done": 7}


async def test_two_workers_on_postgresql_never_deliver_a_row_twice(databases: Databases, catalog: Any) -> None:
    engine = SyncEngine(catalog, await databases.create("postgresql", catalog))
    with running() as moodle:
        await connected(engine, moodle)
        students = [records.student(str(3000 + i)) for i in range(60)]
        await engine.sync("school", "students", students)
        small = Policy(batch=5, poll=0.05)
        claimed: list[list[int]] = [[], []]
        workers = [Worker(catalog, engine.database, small) for _ in range(2)]
        for worker, mine in zip(workers, claimed, strict=True):
            original = worker.claim

            async def claim(original: Any = original, mine: list[int] = mine) -> list[Any]:
                rows = await original()
                mine.extend(row.id for row in rows)
                return list(rows)

            worker.claim = claim  # type: ignore[method-assign]
        await asyncio.gather(*(drain(worker, rounds=40) for worker in workers))
        assert await states(engine) == {"done": 60}
        assert claimed[0] and claimed[1]
        assert not set(claimed[0]) & set(claimed[1])
        assert sorted(claimed[0] + claimed[1]) == sorted(set(claimed[0] + claimed[1]))
        assert len(moodle.users) == 61
        created = [u for c in moodle.called("core_user_create_users") for u in c.params["users"]]
        assert len(created) == 60
    await engine.close()


async def test_rows_of_a_tenant_without_a_site_do_not_keep_the_worker_busy(engine: SyncEngine) -> None:
    """Rows that no round claims are not "due": the worker sleeps its poll interval between rounds."""
    await school(engine, "nosite")
    statements: list[str] = []
    sa.event.listen(engine.database.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    worker = Worker(engine.catalog, engine.database, Policy(poll=30.0))
    stop = asyncio.Event()
    running_worker = asyncio.create_task(worker.run(stop))
    for _ in range(20):  # twenty chances for a spinning worker to run rounds
        await asyncio.sleep(0.01)
    stop.set()
    await running_worker
    assert len(statements) <= 4, f"{len(statements)} statements while nothing could be claimed"
