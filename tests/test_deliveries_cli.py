"""`syncengine deliveries list` and `deliveries retry`, as processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from syncengine.config import Settings
from syncengine.delivery import Worker
from syncengine.engine import SyncEngine
from tests import records
from tests.conftest import ENTITIES, Databases
from tests.moodle_fake import MoodleFake, running
from tests.test_deliveries_http import FAST
from tests.test_delivery import drain
from tests.test_delivery_cli import run

NONE = {"pending": 0, "working": 0, "waiting": 0, "done": 0, "dead": 0}


@pytest.fixture
def moodle() -> Iterator[MoodleFake]:
    with running() as fake:
        yield fake


async def _school_env(databases: Databases, dialect: str, moodle: MoodleFake) -> dict[str, str]:
    """A migrated database with tenants 'school' (delivering to the fake) and 'other'."""
    env = {"SYNCENGINE_DATABASE_URL": await databases.fresh_url(dialect), "SYNCENGINE_ENTITIES": str(ENTITIES)}
    assert (await asyncio.to_thread(run, "db", "upgrade", env=env)).returncode == 0
    for name in ("school", "other"):
        assert (await asyncio.to_thread(run, "tenant", "add", name, env=env)).returncode == 0
    added = await asyncio.to_thread(
        run, "tenant", "moodle", "school", "--url", moodle.url, "--token-file", "-", env=env, stdin=moodle.token
    )
    assert added.returncode == 0, added.stderr
    return env


def listed(env: dict[str, str], *options: str) -> Any:
    result = run("deliveries", "list", "--json", *options, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_list_and_retry_a_dead_delivery(databases: Databases, dialect: str, moodle: MoodleFake) -> None:
    env = await _school_env(databases, dialect, moodle)
    engine = SyncEngine.open(Settings.from_env(env))
    try:
        await engine.sync("school", "students", [records.student("3001"), records.student("3002")])
        await engine.sync("other", "students", [records.student("3009")])
        moodle.fail("error", times=100, function="core_user_create_users", errorcode="invalidparameter")
        await drain(Worker(engine.catalog, engine.database, FAST, tenant="school"))
    finally:
        await engine.close()

    every = await asyncio.to_thread(listed, env)
    assert every["counts"] == NONE | {"pending": 1, "dead": 2}
    assert [(d["tenant"], d["zoho_id"], d["state"]) for d in every["deliveries"]] == [
        ("school", "3001", "dead"),
        ("school", "3002", "dead"),
        ("other", "3009", "pending"),  # no Moodle site: it waits, pending
    ]
    dead = await asyncio.to_thread(listed, env, "--tenant", "school", "--state", "dead", "--limit", "1")
    assert [d["zoho_id"] for d in dead["deliveries"]] == ["3001"]
    assert dead["next_after_id"] == dead["deliveries"][0]["id"]
    assert dead["deliveries"][0]["last_error"].startswith("invalidparameter: ")

    table = await asyncio.to_thread(run, "deliveries", "list", "--tenant", "school", env=env)
    lines = table.stdout.splitlines()
    assert lines[0] == "pending 0, working 0, waiting 0, done 0, dead 2"
    assert lines[1].split()[:8] == ["ID", "TENANT", "ENTITY", "ZOHO", "ID", "OPERATION", "STATE", "ATTEMPTS"]
    assert lines[2].split()[1:8] == ["school", "students", "3001", "upsert", "dead", "2", "-"]

    wrong = await asyncio.to_thread(run, "deliveries", "retry", "999", "--tenant", "school", env=env)
    assert wrong.returncode == 3
    assert wrong.stderr.strip().endswith(
        "no delivery of tenant 'school' with id 999: `syncengine deliveries list` shows the ids"
    )
    neither = await asyncio.to_thread(run, "deliveries", "retry", env=env)
    assert neither.returncode == 2 and "give delivery ids or --all-dead" in neither.stderr

    moodle.faults.clear()  # the data is fixed
    retried = await asyncio.to_thread(run, "deliveries", "retry", "--all-dead", env=env)
    assert retried.returncode == 0, retried.stderr
    ids = [str(d["id"]) for d in every["deliveries"][:2]]
    assert retried.stdout.strip() == f"requeued 2: {' '.join(ids)}"
    again = await asyncio.to_thread(listed, env, "--tenant", "school")
    assert [(d["state"], d["attempts"], d["last_error"]) for d in again["deliveries"]] == [("pending", 0, None)] * 2

    engine = SyncEngine.open(Settings.from_env(env))
    try:
        await drain(Worker(engine.catalog, engine.database, FAST, tenant="school"))
    finally:
        await engine.close()
    done = await asyncio.to_thread(listed, env, "--tenant", "school", "--state", "done")
    users = {u["idnumber"]: u["id"] for u in moodle.users.values()}
    assert {d["zoho_id"]: d["moodle_id"] for d in done["deliveries"]} == {"3001": users["3001"], "3002": users["3002"]}
    assert moodle.token not in json.dumps(done)
