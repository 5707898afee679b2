"""An Idempotency-Key's answer commits with its batch, and a dead holder never makes a retry wait.

On both databases: a transaction that fails after the records are written (a trigger refuses
the answer, or, on PostgreSQL, the COMMIT) leaves neither rows nor answer, and the retry runs
afresh; a real `syncengine serve` SIGKILLed mid-request leaves its batch and its answer both
there or both gone, and the next server answers the retry at once (`SYNCENGINE_IDEMPOTENCY_WAIT`
is a millisecond, so a key still taken for in use would be a 409) with the replay or a fresh run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
import httpx
import msgspec
import pytest

from syncengine.engine import SyncEngine
from syncengine.idempotency import Claim, ClaimLost, IdempotencyKeys
from syncengine.report import SyncReport
from tests.conftest import Databases, count_rows
from tests.records import student
from tests.service import running_api, statuses
from tests.test_serve import SYNCENGINE, environment, free_port, printed_key

REFUSE = [
    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
]
REFUSE_ANSWER = {
    "sqlite": [
        "CREATE TRIGGER refuse_answer BEFORE UPDATE ON syncengine_idempotency_keys "
        "WHEN NEW.key = 'doomed' AND NEW.status_code IS NOT NULL BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ],
    "postgresql": [
        *REFUSE,
        "CREATE TRIGGER refuse_answer BEFORE UPDATE ON syncengine_idempotency_keys FOR EACH ROW "
        "WHEN (NEW.key = 'doomed' AND NEW.status_code IS NOT NULL) EXECUTE FUNCTION refuse()",
    ],
}
#: Fails at COMMIT, after the batch's records and its answer are written.
REFUSE_COMMIT = {
    "postgresql": [
        *REFUSE,
        "CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON students DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW WHEN (NEW.zoho_id = '3999') EXECUTE FUNCTION refuse()",
    ],
}
#: The table of each trigger, for PostgreSQL's DROP TRIGGER.
TABLES = {"refuse_answer": "syncengine_idempotency_keys", "refuse_commit": "students"}


@pytest.mark.parametrize(
    ("triggers", "trigger"),
    [pytest.param(REFUSE_ANSWER, "refuse_answer", id="answer-refused"),
     pytest.param(REFUSE_COMMIT, "refuse_commit", id="commit-refused")],
)  # fmt: skip
async def test_a_transaction_that_fails_after_writing_leaves_neither_rows_nor_answer(
    engine: SyncEngine, dialect: str, triggers: dict[str, list[str]], trigger: str
) -> None:
    if dialect not in triggers:
        pytest.skip("SQLite has no trigger that runs at COMMIT")
    database = engine.database
    async with running_api(engine, idempotency_wait=0) as api:
        async with database.begin() as conn:
            for sql in triggers[dialect]:
                await conn.exec_driver_sql(sql)
        batch = [student(str(3990 + i)) for i in range(10)]  # 3999 is the last
        headers = {"Idempotency-Key": "doomed"}
        failed = await api.sync("students", batch, headers=headers)
        assert failed.status_code == 500, failed.text
        assert await count_rows(database, "students") == 0
        assert await count_rows(database, "syncengine_idempotency_keys") == 0  # a 5xx is not the answer
        async with database.begin() as conn:
            on = f" ON {TABLES[trigger]}" if dialect == "postgresql" else ""
            await conn.exec_driver_sql(f"DROP TRIGGER {trigger}{on}")
        retry = await api.sync("students", batch, headers=headers)
        assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
        assert statuses(retry) == ["NEW"] * 10
        replay = await api.sync("students", batch, headers=headers)
        assert replay.headers["idempotent-replayed"] == "true" and replay.content == retry.content


async def test_calls_sharing_a_transaction_each_store_their_own_answer(engine: SyncEngine, dialect: str) -> None:
    """Calls sent at once: the first runs, the rest wait and share the next transaction (see
    tests/test_group_commit.py). One of them has its answer refused: the shared transaction
    fails and its calls run again one by one; the others commit, each with its own answer,
    and the refused one leaves nothing."""
    async with engine.database.begin() as conn:
        for sql in REFUSE_ANSWER[dialect]:
            await conn.exec_driver_sql(sql)
    keys = IdempotencyKeys(engine.database, ttl=3600, wait=0.001)
    names = ["k0", "k1", "k2", "doomed", "k4", "k5"]
    claims = [await keys.claim("school", "/v1/sync/students", name, "digest") for name in names]
    batches = [[student(f"{3100 + 10 * n + i}") for i in range(3)] for n in range(len(names))]
    try:
        calls = [
            engine.sync("school", "students", batch, answer=keys.answer(claim, _report_json))  # type: ignore[arg-type]
            for claim, batch in zip(claims, batches, strict=True)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        for claim in claims:
            await keys.let_go(claim)  # type: ignore[arg-type]
        await keys.close()
    async with engine.database.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT key, response FROM syncengine_idempotency_keys")).all()
        stored: dict[str, Any] = dict(cast("list[tuple[str, Any]]", rows))
    for name, outcome, batch in zip(names, outcomes, batches, strict=True):
        if name == "doomed":
            assert isinstance(outcome, Exception) and "refused" in str(outcome)
            assert stored[name] is None
            for record in batch:
                assert await engine.fetch_record("school", "students", record["id"]) is None
        else:
            assert isinstance(outcome, SyncReport), outcome
            assert [r.zoho_id for r in outcome.results] == [record["id"] for record in batch], name
            assert bytes(stored[name]) == _report_json(outcome), name  # its own answer, with its rows
    assert await count_rows(engine.database, "students") == 15


def _report_json(report: SyncReport) -> bytes:
    return msgspec.json.encode(report.to_builtins())


async def test_a_holder_whose_claim_was_taken_over_writes_nothing(engine: SyncEngine) -> None:
    """A holder taken for dead (say its lock connection dropped) while it still runs: another
    request deleted its claim and took the key. Its answer finds no claim row, so its batch
    is rolled back instead of being written beside the other's."""
    keys = IdempotencyKeys(engine.database, ttl=3600, wait=0.001)
    try:
        claim = await keys.claim("school", "/v1/sync/students", "taken-over", "digest")
        assert isinstance(claim, Claim)
        await keys.release(claim)  # as the request that took the key over did
        with pytest.raises(ClaimLost, match="another request took over this request's Idempotency-Key"):
            await engine.sync("school", "students", [student("3001")], answer=keys.answer(claim, lambda _: b"{}"))
        assert await count_rows(engine.database, "students") == 0
        await keys.let_go(claim)
    finally:
        await keys.close()


# A real server, SIGKILLed while a keyed request is in flight

RECORDS = 5000  # the most one request may hold: long enough to be killed in the middle


@dataclass
class Observer:
    """What a test sees of the server's database, from outside the server."""

    count_students: Callable[[], Awaitable[int]]
    claim: Callable[[str], Awaitable[tuple[bool, bool]]]  # (claim row there, answered)
    writing: Callable[[], Awaitable[bool]]  # a transaction of the server's is writing students
    hold_up: Callable[[str], Awaitable[Callable[[], Awaitable[None]]]]  # make the batch of a last id wait
    settle: Callable[[], Awaitable[None]]  # until the dead server's sessions are gone


def sqlite_observer(path: Path) -> Observer:
    """Plain sqlite3 reads, which take no write lock (the engine's connections would)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=0)

    async def count_students() -> int:
        return int(db.execute("SELECT count(*) FROM students").fetchone()[0])

    async def claim(key: str) -> tuple[bool, bool]:
        row = db.execute("SELECT status_code FROM syncengine_idempotency_keys WHERE key = ?", (key,)).fetchone()
        return row is not None, row is not None and row[0] is not None

    async def writing() -> bool:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # database is locked: a write transaction is open
            return True
        db.execute("ROLLBACK")
        return False

    async def hold_up(last_id: str) -> Callable[[], Awaitable[None]]:
        # Seconds of work in the batch's transaction, at its last record (SQLite has no sleep).
        sql = (
            f"CREATE TRIGGER slow AFTER INSERT ON students WHEN NEW.zoho_id = '{last_id}' BEGIN "
            "SELECT count(*) FROM students a, students b, students c WHERE c.id <= 12; END"
        )
        db.execute(sql)

        async def release() -> None:
            db.execute("DROP TRIGGER slow")

        return release

    async def settle() -> None:
        pass  # the kernel dropped the dead process's locks when it ended

    return Observer(count_students, claim, writing, hold_up, settle)


async def postgres_observer(url: str) -> Observer:
    db = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    locker = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))

    async def count_students() -> int:
        return int(await db.fetchval("SELECT count(*) FROM students"))

    async def claim(key: str) -> tuple[bool, bool]:
        row = await db.fetchrow("SELECT status_code FROM syncengine_idempotency_keys WHERE key = $1", key)
        return row is not None, row is not None and row[0] is not None

    async def writing() -> bool:  # waiting for the test's lock on students (see hold_up)
        sql = "SELECT count(*) FROM pg_locks WHERE relation = 'students'::regclass AND NOT granted"
        return bool(await db.fetchval(sql))

    async def hold_up(last_id: str) -> Callable[[], Awaitable[None]]:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE students IN EXCLUSIVE MODE")  # reads go on, writes wait

        async def release() -> None:
            await transaction.rollback()

        return release

    async def settle() -> None:
        others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> ALL($1)"
        mine = [db.get_server_pid(), locker.get_server_pid()]
        while await db.fetchval(others, mine):
            await asyncio.sleep(0.05)

    return Observer(count_students, claim, writing, hold_up, settle)


class Server:
    """`syncengine serve` in a process of its own, which the test may SIGKILL."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.process: asyncio.subprocess.Process | None = None
        self.base = ""

    async def start(self) -> str:
        """Start it, wait until it answers; what it printed on standard output."""
        port = free_port()
        out = self.cwd / f"serve-{port}.out"
        with out.open("wb") as stdout, (self.cwd / f"serve-{port}.err").open("wb") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                SYNCENGINE, "serve", "--port", str(port), env=self.env, cwd=self.cwd, stdout=stdout, stderr=stderr
            )
        self.base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=self.base) as http:
            for _ in range(300):
                assert self.process.returncode is None, (self.cwd / f"serve-{port}.err").read_text()
                try:
                    if (await http.get("/v1/health")).status_code == 200:
                        return out.read_text()
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        raise AssertionError("serve did not answer within 30 seconds")

    async def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 20)


async def until(condition: Callable[[], Awaitable[bool]], what: str, request: asyncio.Task[Any]) -> None:
    while not await condition():
        assert not request.done(), f"the request ended before {what}: {request.result()}"
        await asyncio.sleep(0.002)


#: When the server is killed: while its batch's transaction writes (held up by the test, so
#: certainly before COMMIT), as soon as its claim is there, and once its rows are there.
MOMENTS = ["writing", "claimed", "committed"]


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_server_killed_mid_request_leaves_a_key_that_a_retry_gets_at_once(
    databases: Databases, project_copy: Callable[[], Path], dialect: str
) -> None:
    project = project_copy().parent
    if dialect == "sqlite":
        url = f"sqlite:///{project / 'syncengine.db'}"
    else:
        url = await databases.fresh_url("postgresql")
    env = environment(
        SYNCENGINE_DATABASE_URL=url,
        SYNCENGINE_ENTITIES=str(project / "entities.yaml"),
        SYNCENGINE_IDEMPOTENCY_WAIT="0.001",
    )
    if dialect == "postgresql":
        upgrade = await asyncio.create_subprocess_exec(SYNCENGINE, "db", "upgrade", env=env, cwd=project)
        assert await asyncio.wait_for(upgrade.wait(), 120) == 0
    server = Server(env, project)
    try:
        headers = {"Authorization": f"Bearer {printed_key(await server.start())}"}
        observe = sqlite_observer(project / "syncengine.db") if dialect == "sqlite" else await postgres_observer(url)
        for round_, moment in enumerate(MOMENTS):
            key = f"crash-{moment}"
            body = msgspec.json.encode({"data": [student(f"{round_ + 1}{i:05d}") for i in range(RECORDS)]})
            before = await observe.count_students()
            release = await observe.hold_up(f"{round_ + 1}{RECORDS - 1:05d}") if moment == "writing" else None
            async with httpx.AsyncClient(base_url=server.base, headers=headers, timeout=60) as http:
                send = http.post("/v1/sync/students", content=body, headers={"Idempotency-Key": key})
                request = asyncio.create_task(send)
                if moment == "writing":
                    await until(functools.partial(_writing, observe, key), "its batch was writing", request)
                elif moment == "claimed":
                    await until(functools.partial(_claimed, observe, key), "its claim was stored", request)
                else:
                    await until(functools.partial(_rows_there, observe, before), "its rows were stored", request)
                await server.kill()
                with contextlib.suppress(httpx.HTTPError):
                    await request
            if release is not None:
                await release()
            await observe.settle()
            written = await observe.count_students() - before
            _, answered = await observe.claim(key)
            assert written in (0, RECORDS), written  # the batch is one transaction
            assert answered == (written == RECORDS), (moment, written, answered)  # ...and its answer in it
            if moment == "writing":
                assert written == 0
            if moment == "committed":
                assert written == RECORDS

            await server.start()  # a new server, the same database
            async with httpx.AsyncClient(base_url=server.base, headers=headers, timeout=60) as http:
                retry = await http.post("/v1/sync/students", content=body, headers={"Idempotency-Key": key})
            assert retry.status_code == 200, (moment, retry.text)  # never 409: the dead claim is not waited for
            assert retry.headers.get("idempotent-replayed") == ("true" if written else None), moment
            assert set(statuses(retry)) == {"NEW"}, moment  # a replay, or the first run: never a second
            assert await observe.count_students() == before + RECORDS
    finally:
        await server.stop()


async def _writing(observe: Observer, key: str) -> bool:
    """Its claim is stored, and a transaction is writing: its batch's."""
    return await _claimed(observe, key) and await observe.writing()


async def _claimed(observe: Observer, key: str) -> bool:
    there, _ = await observe.claim(key)
    return there


async def _rows_there(observe: Observer, before: int) -> bool:
    return await observe.count_students() > before
