"""Backfill from Zoho's API against the Zoho fake over HTTP: every entity parents first, --since with
deletions, an expired access token and 429s mid-way, stored cursors resumed (also after SIGKILL of a
real `syncengine backfill`), and page tokens Zoho no longer takes."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.backfill import Backfill, BackfillMismatch, Tally, read_cursors
from syncengine.engine import SyncEngine
from syncengine.tables import BACKFILLS, engine_table
from syncengine.zoho import ZohoClient
from syncengine.zoho_sites import open_zoho, save_zoho
from tests import records
from tests.conftest import ENTITIES, Databases, count_rows
from tests.test_serve import SYNCENGINE, environment
from tests.test_zoho_sites import credentials, prepared
from tests.zoho_fake import ZohoFake, serve_fake

TENANT = "school"
#: Every module of entities.yaml, parents first; the fake answers INVALID_MODULE for one it lacks.
MODULES = {
    "programs": "Products",
    "teachers": "BTEC_Teachers",
    "students": "BTEC_Students",
    "units": "BTEC",
    "classes": "BTEC_Classes",
    "registrations": "BTEC_Registrations",
    "enrollments": "BTEC_Enrollments",
    "payments": "BTEC_Payments",
    "grades": "BTEC_Grades",
}
LATER = "2026-03-01T10:00:00+03:00"


def school(students: int = 450, enrollments: int = 620) -> dict[str, list[dict[str, Any]]]:
    """A small school in Zoho's shape, by entity: each module lists more than one page where it can."""
    return {
        "programs": [records.program(str(1000 + i), Modified_Time=records.MODIFIED) for i in range(2)],
        "teachers": [records.teacher(str(2000 + i), Modified_Time=records.MODIFIED) for i in range(2)],
        "students": [records.student(str(300000 + i), Program={"name": "P", "id": "1000"}) for i in range(students)],
        "classes": [records.class_(str(4000 + i), "1001", Class_Status="Active") for i in range(3)],
        "enrollments": [
            records.enrollment(str(500000 + i), str(300000 + i % students), str(4000 + i % 3))
            for i in range(enrollments)
        ],
    }


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        for module in MODULES.values():
            running.load(module, [])
        for entity, rows in school().items():
            running.load(MODULES[entity], rows)
        yield running


async def no_wait(seconds: float) -> None:
    waits.append(seconds)


waits: list[float] = []


async def zoho_client(engine: SyncEngine, fake: ZohoFake) -> ZohoClient:
    await save_zoho(engine.database, TENANT, credentials(fake))
    return await open_zoho(engine.database, TENANT, sleep=no_wait)


class Notes:
    """A listener that keeps what it is told, and runs `then` after each batch."""

    def __init__(self, then: Any = None) -> None:
        self.said: list[str] = []
        self.advanced: list[tuple[str, int]] = []
        self.then = then

    def say(self, message: str) -> None:
        self.said.append(message)

    def begin(self, entity: str, done: int, total: int | None) -> None:
        pass

    def advance(self, entity: str, records: int, amount: int) -> None:
        self.advanced.append((entity, records))
        if self.then is not None:
            self.then(entity)


async def backfill(engine: SyncEngine, fake: ZohoFake, *names: str, **options: Any) -> list[Tally]:
    options.setdefault("batch_pages", 2)
    async with await zoho_client(engine, fake) as zoho:
        work = Backfill(engine, zoho, TENANT, **options)
        return await work.run(work.order(names))


def summaries(tallies: list[Tally]) -> dict[str, dict[str, int]]:
    return {t.entity: dict(t.counts) for t in tallies if t.counts}


async def test_a_backfill_of_every_entity_stores_everything_parents_first(engine: SyncEngine, fake: ZohoFake) -> None:
    tallies = await backfill(engine, fake)
    made = school()
    assert summaries(tallies) == {entity: {"NEW": len(rows)} for entity, rows in made.items()}
    for entity, rows in made.items():
        assert await count_rows(engine.database, entity, TENANT) == len(rows)
    listed = [call.path.rsplit("/", 1)[-1] for call in fake.calls]
    assert list(dict.fromkeys(listed)) == list(MODULES.values())  # parents first, each module in one go
    # 200 a page: a call per page (an empty module: one call, 204), and one access token for all
    assert len(fake.calls) == sum(max(1, -(-len(made.get(e, [])) // 200)) for e in MODULES)
    assert all(call.params["per_page"] == "200" and "Modified_Time" in call.params["fields"] for call in fake.calls)
    assert fake.tokens_granted == 1
    assert await count_rows(engine.database, "syncengine_outbox", TENANT) > 0  # deliveries flow to Moodle
    cursors = await read_cursors(engine.database, TENANT)
    assert {c.state for c in cursors.values()} == {"done"} and cursors["students"].pages == 3

    notes = Notes()
    again = await backfill(engine, fake, "students", "enrollments", listener=notes)  # finished: starts over
    assert summaries(again) == {"students": {"UNCHANGED": 450}, "enrollments": {"UNCHANGED": 620}}
    assert notes.said[0].startswith("students: the backfill finished at ") and notes.said[0].endswith(
        "(450 records); starting over"
    )


async def test_since_pulls_changes_and_applies_deletions(engine: SyncEngine, fake: ZohoFake) -> None:
    await backfill(engine, fake, "programs", "students")
    students = fake.records["BTEC_Students"]
    students[7] = students[7] | {"Last_Name": "Demir", "Modified_Time": LATER}
    fake.deleted["BTEC_Students"] = [
        {"id": students[9]["id"], "display_name": "x", "type": "recycle", "deleted_time": "2026-03-02T08:00:00+03:00"},
        {"id": "399999", "display_name": None, "type": "permanent", "deleted_time": "2026-01-02T08:00:00+03:00"},
    ]
    before = len(fake.calls)
    since = dt.datetime.fromisoformat("2026-02-20T00:00:00+00:00")
    tallies = await backfill(engine, fake, "students", since=since)
    assert summaries(tallies) == {"students": {"UPDATED": 1, "DELETED": 1}}
    calls = fake.calls[before:]
    assert [c.path for c in calls] == ["/crm/v8/BTEC_Students", "/crm/v8/BTEC_Students/deleted"]
    assert {c.if_modified_since for c in calls} == {"2026-02-20T00:00:00+00:00"}
    stored = await engine.fetch_record(TENANT, "students", students[9]["id"])
    assert stored is not None and stored["deleted_at"] is not None
    assert await count_rows(engine.database, "students", TENANT) == 450


async def test_an_access_token_expired_mid_backfill_is_refreshed_once(engine: SyncEngine, fake: ZohoFake) -> None:
    expired: list[str] = []

    def expire(entity: str) -> None:
        if not expired:
            expired.append(entity)
            fake.expire_tokens()

    fake.records["BTEC_Students"] = [records.student(str(300000 + i)) for i in range(1400)]  # 7 pages
    tallies = await backfill(engine, fake, "students", batch_pages=1, listener=Notes(expire))
    assert summaries(tallies) == {"students": {"NEW": 1400}}
    assert fake.tokens_granted == 2  # the first, and one forced refresh on INVALID_TOKEN
    refused = [c for c in fake.calls if c.params.get("page_token")]
    assert len(refused) == 7  # 6 pages after the first, one of them asked twice: refused, then granted
    assert await count_rows(engine.database, "students", TENANT) == 1400


async def test_429_during_a_backfill_is_waited_out_and_nothing_is_lost(engine: SyncEngine, fake: ZohoFake) -> None:
    waits.clear()
    throttled: list[str] = []

    def throttle(entity: str) -> None:
        if not throttled:
            throttled.append(entity)
            fake.fail_next(429, "TOO_MANY_REQUESTS", times=2, retry_after=3)

    tallies = await backfill(engine, fake, "enrollments", "students", "classes", "programs", listener=Notes(throttle))
    assert summaries(tallies)["enrollments"] == {"NEW": 620}
    assert waits == [3, 3]  # Zoho's Retry-After, twice
    for entity in ("programs", "students", "classes", "enrollments"):
        assert await count_rows(engine.database, entity, TENANT) == len(school()[entity])


class Stop(Exception):
    pass


def stop_after(batches: int) -> Any:
    seen: list[str] = []

    def stop(entity: str) -> None:
        seen.append(entity)
        if len(seen) == batches:
            raise Stop

    return stop


async def test_an_interrupted_backfill_resumes_from_its_cursor(engine: SyncEngine, fake: ZohoFake) -> None:
    with pytest.raises(Stop):
        await backfill(engine, fake, "students", batch_pages=1, listener=Notes(stop_after(1)))
    cursor = (await read_cursors(engine.database, TENANT))["students"]
    assert (cursor.state, cursor.pages, dict(cursor.counts)) == ("running", 1, {"NEW": 200})
    before = len(fake.calls)
    notes = Notes()
    tallies = await backfill(engine, fake, "students", batch_pages=1, listener=notes)
    assert summaries(tallies) == {"students": {"NEW": 450}}  # the counts of both runs
    assert notes.said == [notes.said[0]] and "after 1 pages (200 records)" in notes.said[0]
    assert [c.params.get("page_token") is not None for c in fake.calls[before:]] == [True, True]
    assert await count_rows(engine.database, "students", TENANT) == 450

    with pytest.raises(Stop):
        await backfill(engine, fake, "students", batch_pages=1, listener=Notes(stop_after(1)))
    with pytest.raises(BackfillMismatch) as mismatch:
        await backfill(engine, fake, "students", since=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert str(mismatch.value) == (
        "students: an interrupted backfill with no --since is stored; rerun with no --since to resume it, "
        "or add --restart to start it over"
    )
    tallies = await backfill(engine, fake, "students", restart=True)
    assert summaries(tallies) == {"students": {"UNCHANGED": 450}}


async def test_a_page_token_zoho_no_longer_takes_restarts_the_entity(engine: SyncEngine, fake: ZohoFake) -> None:
    with pytest.raises(Stop):
        await backfill(engine, fake, "students", batch_pages=1, listener=Notes(stop_after(1)))
    fake.expire_page_tokens()
    notes = Notes()
    tallies = await backfill(engine, fake, "students", batch_pages=1, listener=notes)
    assert "Zoho no longer takes the stored page token (EXPIRED_VALUE): starting the backfill over" in notes.said[1]
    assert summaries(tallies) == {"students": {"UNCHANGED": 200, "NEW": 250}}

    with pytest.raises(Stop):  # a cursor older than a page token's 24 hours is not even tried
        await backfill(engine, fake, "students", batch_pages=1, listener=Notes(stop_after(1)))
    table = engine_table(BACKFILLS)
    async with engine.database.begin() as conn:
        day_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)
        await conn.execute(sa.update(table).values(updated_at=day_ago))
    before, notes = len(fake.calls), Notes()
    tallies = await backfill(engine, fake, "students", batch_pages=1, listener=notes)
    assert "Zoho's page tokens last 24 hours: starting it over" in notes.said[0]
    assert fake.calls[before].params.get("page_token") is None
    assert summaries(tallies) == {"students": {"UNCHANGED": 450}}


async def test_a_backfill_killed_mid_way_resumes_without_duplicates_or_gaps(
    databases: Databases, dialect: str, fake: ZohoFake
) -> None:
    fake.records["BTEC_Students"] = [records.student(str(300000 + i)) for i in range(3000)]  # 15 pages
    url, database = await prepared(databases, dialect, fake)
    env = environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ENTITIES))
    fake.delay = 0.1  # seconds a call: the kill lands mid-way
    command = [SYNCENGINE, "backfill", "students", "--tenant", TENANT]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:  # until a batch is committed, then SIGKILL: no chance to clean up
            await asyncio.sleep(0.05)
            cursors = await read_cursors(database, TENANT)
            if "students" in cursors and cursors["students"].pages >= 5:
                break
            assert first.poll() is None, first.communicate()
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(30)
    killed = (await read_cursors(database, TENANT))["students"]
    assert killed.state == "running" and killed.page_token is not None
    before = len(fake.calls)
    fake.delay = 0.0
    second = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "students: resuming the backfill stopped at " in second.stderr
    assert fake.calls[before].params.get("page_token") == killed.page_token  # from the cursor, not the start
    assert await count_rows(database, "students", TENANT) == 3000  # unique per id: no duplicates, no gaps
    async with database.connect() as conn:
        stored = set((await conn.execute(sa.text("SELECT zoho_id FROM students"))).scalars())
    assert stored == {r["id"] for r in fake.records["BTEC_Students"]}
    lines = second.stdout.splitlines()
    assert lines[0].split() == [
        "ENTITY",
        "NEW",
        "UPDATED",
        "UNCHANGED",
        "INVALID",
        "SKIPPED",
        "DELETED",
        "RECORDS",
        "SECONDS",
    ]
    counts = {k: int(v.replace(",", "")) for k, v in zip(lines[0].split()[1:8], lines[1].split()[1:8], strict=True)}
    # a batch committed but not yet in the cursor when killed is synced again: UNCHANGED, one batch at most
    assert counts["NEW"] + counts["UNCHANGED"] == counts["RECORDS"] == 3000 and counts["UNCHANGED"] <= 1000
    await database.dispose()
