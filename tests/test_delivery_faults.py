"""Delivery when things go wrong, in process: a permanent error, two workers with short leases, a
Moodle that cuts the POST, a Moodle user made by hand, the PostgreSQL wake-up, and the fixed
defects of the core (a done row's lease, what a leave action sends). Each against the Moodle fake
over HTTP, on real databases."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from syncengine import migrate
from syncengine.config import Settings
from syncengine.delivery import Policy, Worker
from syncengine.engine import SyncEngine
from syncengine.store import open_database
from tests import records
from tests.conftest import ENTITIES, ROOT, Databases
from tests.moodle_fake import MoodleFake, running
from tests.test_delivery import FAST, class_, connected, drain, link_ids, moodle, school, states

LATER = "2026-03-10T09:15:42+03:00"
__all__ = ["moodle"]  # the fixture, shared with test_delivery


def created(moodle: MoodleFake, function: str, items: str, key: str = "idnumber") -> list[str]:
    """The `key` of every record sent to a create `function` that Moodle took (its call answered ok)."""
    return [
        str(item[key])
        for call in moodle.called(function)
        if call.outcome == "ok"
        for item in call.params[items].values()
    ]


def enrolled(moodle: MoodleFake) -> list[tuple[str, str]]:
    """(courseid, userid) of every enrolment sent, in every call."""
    return [
        (str(e["courseid"]), str(e["userid"]))
        for call in moodle.called("enrol_manual_enrol_users")
        for e in call.params["enrolments"].values()
    ]


async def outbox(engine: SyncEngine, entity: str) -> list[Any]:
    async with engine.database.connect() as conn:
        query = "SELECT id, state, attempts, last_error, next_attempt_at FROM syncengine_outbox WHERE entity = :e"
        return list(await conn.execute(sa.text(query + " ORDER BY id"), {"e": entity}))


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`, at most 15 s (a bound for a broken build, not a measure)."""
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition never held")


# 3. A permanent error ends dead with Moodle's message; fixing the data delivers it.


async def test_a_permanent_error_ends_dead_and_is_delivered_once_the_data_is_fixed(
    engine: SyncEngine, moodle: MoodleFake
) -> None:
    await connected(engine, moodle)
    moodle.courses[2] = {**moodle.courses[1], "id": 2, "shortname": "C4001", "categoryid": 1, "format": "topics"}
    moodle._next_id["course"] = 3  # a course made by hand holds the class's short name
    await school(engine)
    worker = Worker(engine.catalog, engine.database, FAST)
    await drain(worker)
    (row,) = await outbox(engine, "classes")
    assert (row.state, row.attempts) == ("dead", FAST.permanent_attempts)
    assert row.last_error.startswith(
        "shortnametaken: core_course_create_courses: shortnametaken: "
        "Short name is already used for another course (C4001): fix the cause, then retry"
    )
    assert {r.state for r in await outbox(engine, "enrollments")} == {"waiting"}  # never dead for their parent

    await engine.sync(
        "school",
        "classes",
        [
            records.class_(
                "4001", Class_Short_Name="C4001-b", Class_Status="Active", Teacher="2001", Modified_Time=LATER
            )
        ],
    )
    await drain(worker)
    assert await states(engine) == {"done": 8}  # the dead row too: the record's latest state is in Moodle
    (course,) = [c for c in moodle.courses.values() if c["idnumber"] == "4001"]
    assert course["shortname"] == "C4001-b"
    assert len(moodle.enrolments) == 3


# 4. Two workers on one PostgreSQL, with leases shorter than a round.


async def test_two_workers_with_short_leases_never_deliver_a_row_twice(databases: Databases, catalog: Any) -> None:
    database = await databases.create("postgresql", catalog)
    url = database.url.render_as_string(hide_password=False)
    options: dict[str, Any] = {"connect_args": {"server_settings": {"search_path": databases.schemas[-1]}}}
    engine = SyncEngine(catalog, database)
    other = open_database(url, **options)  # the second worker's own engine, as on another host
    databases.engines.append(other)
    with running(latency=0.1) as moodle:  # every call outlasts a third of the lease: renewals must hold it
        await connected(engine, moodle)
        await engine.sync("school", "programs", [records.program("1001")])
        await engine.sync("school", "teachers", [records.teacher("2001")])
        await engine.sync("school", "students", [records.student(str(3000 + i)) for i in range(40)])
        await engine.sync("school", "classes", [class_("4001")])
        await engine.sync(
            "school", "enrollments", [records.enrollment(str(5000 + i), str(3000 + i)) for i in range(40)]
        )
        short = Policy(batch=8, lease=0.6, retry_base=0.01, retry_max=0.05, poll=0.05, waiting_recheck=0.05)
        workers = [Worker(catalog, engine.database, short), Worker(catalog, other, short)]
        await asyncio.gather(*(drain(worker, rounds=200) for worker in workers))
        assert await states(engine) == {"done": 83}
        assert all(worker.totals.delivered for worker in workers)  # both took part
        users = created(moodle, "core_user_create_users", "users")
        assert sorted(users) == sorted({*users}) and len(users) == 41
        assert created(moodle, "core_course_create_courses", "courses") == ["4001"]
        assert sorted(enrolled(moodle)) == sorted(set(enrolled(moodle))) and len(enrolled(moodle)) == 41
        assert len([u for u in moodle.users.values() if u["idnumber"]]) == 41
    await engine.close()


# 5. Truncation past the site's real max_input_vars loses nothing.


async def test_a_budget_above_moodles_real_max_input_vars_loses_nothing(engine: SyncEngine) -> None:
    # The tenant says 1000 (the default); Moodle keeps 201: a cut on an enrolment boundary is silent.
    with running(max_input_vars=201) as moodle:
        await connected(engine, moodle)
        await engine.sync("school", "programs", [records.program("1001")])
        await engine.sync("school", "teachers", [records.teacher("2001")])
        await engine.sync("school", "students", [records.student(str(3000 + i)) for i in range(60)])
        await engine.sync("school", "classes", [class_("4001")])
        await engine.sync(
            "school", "enrollments", [records.enrollment(str(5000 + i), str(3000 + i)) for i in range(60)]
        )
        await drain(Worker(engine.catalog, engine.database, FAST))
        assert await states(engine) == {"done": 123}
        assert any(call.variables == 201 for call in moodle.calls)  # Moodle did cut
        students = sorted(u["idnumber"] for u in moodle.users.values() if u["idnumber"].startswith("3"))
        assert students == [str(3000 + i) for i in range(60)]
        assert all(u["firstname"] and u["lastname"] for u in moodle.users.values())
        assert len(moodle.enrolments) == 61
        link = await link_ids(engine, "students")
        assert None not in link.values()
        linked = sorted(v for v in link.values() if v is not None)
        assert linked == sorted(u["id"] for u in moodle.users.values() if u["idnumber"].startswith("3"))


# 6. A Moodle user made by hand with the student's email is linked.


async def test_a_moodle_user_with_the_students_email_is_linked(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    existing = moodle.add_user(username="ayse.by.hand", email="s3001@school.edu")
    await school(engine)
    await drain(Worker(engine.catalog, engine.database, FAST))
    assert await states(engine) == {"done": 7}
    assert [u["id"] for u in moodle.users.values() if u["email"].lower() == "s3001@school.edu"] == [existing]
    assert moodle.users[existing]["idnumber"] == "3001"  # brought to the record's state
    assert (await link_ids(engine, "students"))["3001"] == existing
    assert any(userid == existing for _, userid in moodle.enrolments)


# 7. On PostgreSQL, a committed sync wakes the worker through LISTEN/NOTIFY.


async def test_a_committed_sync_wakes_a_worker_through_notify(databases: Databases, catalog: Any) -> None:
    url = await databases.fresh_url("postgresql")
    await asyncio.to_thread(migrate.upgrade, Settings(url, ENTITIES, ROOT / "migrations"))
    engine = SyncEngine(catalog, open_database(url))  # no on_commit: the engine does not wake the worker
    with running() as moodle:
        await connected(engine, moodle)
        rounds: list[int] = []
        worker = Worker(catalog, open_database(url), Policy(poll=3600), on_round=lambda c: rounds.append(c.delivered))
        await engine.sync("school", "teachers", [records.teacher("2001")])
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await until(lambda: rounds == [1])  # the first round: LISTENing since before it
            await engine.sync("school", "teachers", [records.teacher("2002")])
            await until(lambda: len(rounds) == 2)  # only the NOTIFY can start it: the poll is an hour
            assert rounds == [1, 1]
            assert sorted(u["idnumber"] for u in moodle.users.values() if u["idnumber"]) == ["2001", "2002"]
        finally:
            stop.set()
            await task
            await worker.database.dispose()
    await engine.close()


# 8. Defects of the core.


async def test_a_done_row_does_not_keep_its_lease_as_next_attempt_at(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await engine.sync("school", "teachers", [records.teacher("2001")])
    await drain(Worker(engine.catalog, engine.database, Policy(lease=86400, poll=0.05)))
    (row,) = await outbox(engine, "teachers")
    settled = row.next_attempt_at
    settled = dt.datetime.fromisoformat(settled) if isinstance(settled, str) else settled  # SQLite: text
    settled = settled if settled.tzinfo else settled.replace(tzinfo=dt.UTC)
    assert row.state == "done"
    assert settled < dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)  # not the lease's end, a day ahead


async def test_a_leaving_user_is_sent_its_state_change_alone(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await school(engine)
    worker = Worker(engine.catalog, engine.database, FAST)
    await drain(worker)
    user = (await link_ids(engine, "students"))["3001"]
    assert user is not None
    moodle.add_user(username="someone", email="taken@school.edu")
    # Zoho changes the email to one Moodle holds, and the student leaves: the suspension must not fail for it.
    left = records.student("3001", Status="Freeze", Academic_Email="taken@school.edu", Modified_Time=LATER)
    await engine.sync("school", "students", [left])
    await drain(worker)
    assert moodle.users[user]["suspended"] is True
    assert moodle.called("core_user_update_users")[-1].params["users"] == {"0": {"id": str(user), "suspended": "1"}}
    assert {r.state for r in await outbox(engine, "students")} == {"done"}
