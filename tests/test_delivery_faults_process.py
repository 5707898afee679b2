"""Delivery faults across processes: `syncengine worker` killed with SIGKILL mid-batch and restarted,
a worker frozen past its lease while another takes over, and Moodle down then back under a real
`syncengine serve` fed over HTTP. On databases made by the real migrations, against the Moodle fake."""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from syncengine import migrate
from syncengine.config import Settings
from syncengine.delivery import Policy, Worker
from syncengine.engine import SyncEngine
from syncengine.sites import save_site
from syncengine.store import open_database
from syncengine.tenants import add_tenant
from tests import records
from tests.conftest import ENTITIES, ROOT, Databases
from tests.moodle_fake import MoodleFake, running
from tests.test_delivery import class_
from tests.test_serve import SYNCENGINE, environment, serving

STUDENTS = [str(3000 + i) for i in range(20)]


async def prepared(databases: Databases, dialect: str, **variables: str) -> tuple[str, dict[str, str]]:
    """A fresh database brought to head by the migrations; its URL and a process environment."""
    url = await databases.fresh_url(dialect)
    await asyncio.to_thread(migrate.upgrade, Settings(url, ENTITIES, ROOT / "migrations"))
    env = environment(
        SYNCENGINE_DATABASE_URL=url,
        SYNCENGINE_ENTITIES=str(ENTITIES),
        SYNCENGINE_DELIVERY_RETRY_BASE="0.05",
        SYNCENGINE_DELIVERY_RETRY_MAX="0.3",
        SYNCENGINE_DELIVERY_ATTEMPTS="1000",
        **variables,
    )
    return url, env


def the_school() -> dict[str, list[dict[str, Any]]]:
    return {
        "programs": [records.program("1001")],
        "teachers": [records.teacher("2001")],
        "students": [records.student(z) for z in STUDENTS],
        "classes": [class_("4001")],
        "enrollments": [records.enrollment(str(5000 + i), z) for i, z in enumerate(STUDENTS)],
    }


async def until(condition: Callable[[], Any], what: str, tries: int = 600) -> None:
    """Wait for `condition` (at most `tries` twentieths of a second: a bound, not a measure)."""
    for _ in range(tries):
        seen = condition()
        if await seen if inspect.isawaitable(seen) else seen:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def all_done(engine: SyncEngine) -> bool:
    async with engine.database.connect() as conn:
        rows = await conn.execute(sa.text("SELECT state, count(*) FROM syncengine_outbox GROUP BY state"))
        return {row[0] for row in rows} == {"done"}


def landed_once(moodle: MoodleFake) -> None:
    """Everything of the school is in Moodle, once: counted by idnumber."""
    users = Counter(u["idnumber"] for u in moodle.users.values() if u["idnumber"])
    assert users == Counter(["2001", *STUDENTS])
    assert Counter(c["idnumber"] for c in moodle.categories.values() if c["idnumber"]) == Counter(["1001"])
    (course,) = [c["id"] for c in moodle.courses.values() if c["idnumber"] == "4001"]
    ids = {u["idnumber"]: u["id"] for u in moodle.users.values()}
    assert set(moodle.enrolments) == {(course, ids[z]) for z in ["2001", *STUDENTS]}


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    command = [SYNCENGINE, "worker"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def stop_worker(process: subprocess.Popen[str]) -> str:
    """SIGTERM: the worker ends its round and exits; what it wrote on standard error."""
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    return err


# 1. Killed with SIGKILL in the middle of a batch, then restarted.


async def test_a_worker_killed_mid_batch_and_restarted_delivers_everything_once(
    databases: Databases, dialect: str, catalog: Any
) -> None:
    url, env = await prepared(databases, dialect, SYNCENGINE_DELIVERY_LEASE="1")
    engine = SyncEngine(catalog, open_database(url))
    with running() as moodle:
        await save_site(engine.database, "school", moodle.url, moodle.token)
        for entity, batch in the_school().items():
            await engine.sync("school", entity, batch)
        # Moodle creates the first users, then is slow to answer: the kill lands before the worker hears.
        moodle.fail("slow", function="core_user_create_users", seconds=3)
        first = start_worker(env)
        try:
            await until(lambda: moodle.called("core_user_create_users"), "a user batch reached Moodle")
        finally:
            first.kill()
            first.wait(10)
        assert first.returncode == -signal.SIGKILL
        assert not await all_done(engine)
        second = start_worker(env)
        try:
            await until(lambda: all_done(engine), "every row done after the restart")
        finally:
            stop_worker(second)
        landed_once(moodle)
    await engine.close()


# 4. A worker frozen past its lease: the row is taken over, and the frozen one, thawed, does nothing more.


@pytest.mark.postgres
async def test_a_worker_frozen_past_its_lease_leaves_the_rows_to_the_one_that_took_over(
    databases: Databases, catalog: Any
) -> None:
    url, env = await prepared(databases, "postgresql", SYNCENGINE_DELIVERY_LEASE="1")
    engine = SyncEngine(catalog, open_database(url))
    with running() as moodle:
        await save_site(engine.database, "school", moodle.url, moodle.token)
        for entity, batch in the_school().items():
            await engine.sync("school", entity, batch)
        moodle.fail("slow", function="core_user_create_users", seconds=1)
        frozen = start_worker(env)
        try:
            await until(lambda: moodle.called("core_user_create_users"), "a user batch reached Moodle")
            frozen.send_signal(signal.SIGSTOP)  # as a long GC pause or a suspended VM: no renewal
            other = Worker(catalog, engine.database, Policy(lease=1, retry_base=0.05, poll=0.1))
            stop = asyncio.Event()
            task = asyncio.create_task(other.run(stop))
            try:
                await until(lambda: all_done(engine), "the other worker took over and delivered everything")
            finally:
                stop.set()
                await task
            async with engine.database.begin() as conn:  # what the frozen worker reads next differs from Moodle
                await conn.execute(
                    sa.text("UPDATE students SET first_name = 'Changed' WHERE zoho_id = :z"), {"z": STUDENTS[0]}
                )
            before = len(moodle.calls)
        finally:
            frozen.send_signal(signal.SIGCONT)
        err = stop_worker(frozen)  # it ends the round it was in
        assert "delivery lease lost" in err
        after = [c.function for c in moodle.calls[before:]]
        assert [f for f in after if not f.endswith(("get_users_by_field", "get_categories"))] == []
        landed_once(moodle)
        assert await all_done(engine)
    await engine.close()


# 2. Moodle down (503s, then reset connections), then back, under `syncengine serve`.


async def test_moodle_down_then_back_delivers_everything_under_serve(
    databases: Databases, dialect: str, catalog: Any, tmp_path: Any
) -> None:
    url, env = await prepared(databases, dialect)
    engine = SyncEngine(catalog, open_database(url))
    key = await add_tenant(engine.database, "school")
    with running() as moodle:
        await save_site(engine.database, "school", moodle.url, moodle.token)
        moodle.fail("status", status=503, times=12)  # more per record than permanent errors would allow
        moodle.fail("reset", times=6)
        moodle.fail("reset", times=1, applied=True, function="core_user_create_users")  # created, answer lost
        async with serving([], env, tmp_path) as (base, _), httpx.AsyncClient(base_url=base) as http:
            for entity, batch in the_school().items():
                answer = await http.post(
                    f"/v1/sync/{entity}", json={"data": batch}, headers={"Authorization": f"Bearer {key}"}
                )
                assert answer.status_code == 200, answer.text
            await until(lambda: all_done(engine), "every row done once Moodle is back", tries=1200)
            student = await http.get(f"/v1/students/{STUDENTS[0]}", headers={"Authorization": f"Bearer {key}"})
            assert student.status_code == 200
        outcomes = Counter(call.outcome for call in moodle.calls)
        assert (outcomes["fault:status"], outcomes["fault:reset"]) == (12, 7)
        landed_once(moodle)
    await engine.close()
