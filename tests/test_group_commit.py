"""Concurrent syncs of one tenant's entity share transactions, and each still gets its own report."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import sqlalchemy as sa

from syncengine.engine import SyncEngine
from syncengine.report import SyncReport
from tests.records import program

CALLS = 20


def outcomes(report: SyncReport) -> list[tuple[str | None, str]]:
    return [(result.zoho_id, result.status) for result in report.results]


async def stamps(engine: SyncEngine, table: str) -> int:
    """How many transactions wrote the table's rows: a batch stamps its rows with one time."""
    async with engine.database.connect() as conn:
        return int((await conn.execute(sa.text(f"SELECT count(DISTINCT updated_at) FROM {table}"))).scalar_one())


async def test_concurrent_calls_share_transactions_and_get_their_own_results(engine: SyncEngine) -> None:
    calls = [engine.sync("school", "programs", [program(str(1000 + i)), program(str(5000 + i))]) for i in range(CALLS)]
    reports = await asyncio.gather(*calls)
    assert [outcomes(report) for report in reports] == [
        [(str(1000 + i), "NEW"), (str(5000 + i), "NEW")] for i in range(CALLS)
    ]
    assert {report.summary["NEW"] for report in reports} == {2}
    # The first call starts at once; the rest waited for it and were written together.
    assert await stamps(engine, "programs") == 2


async def test_waiting_calls_are_decided_in_arrival_order(engine: SyncEngine) -> None:
    names = [f"Name {i}" for i in range(8)]
    calls = [engine.sync("school", "programs", [program("1001", Product_Name=name)]) for name in names]
    reports = await asyncio.gather(*calls)
    assert [report.results[0].status for report in reports] == ["NEW"] + ["UPDATED"] * (len(names) - 1)
    for i in range(1, len(names)):
        assert reports[i].results[0].changes == {"Product_Name": [names[i - 1], names[i]]}
    stored = await engine.fetch_record("school", "programs", "1001")
    assert stored is not None and stored["values"]["Product_Name"] == names[-1]


#: A trigger that refuses program 9999: a write the database fails, now that validation lets
#: through nothing a column cannot hold (a lone surrogate, this test's trigger before, is INVALID).
REFUSE_9999 = {
    "sqlite": [
        "CREATE TRIGGER refuse_9999 BEFORE INSERT ON programs WHEN NEW.zoho_id = '9999' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_9999() RETURNS trigger AS $$ BEGIN "
        "IF NEW.zoho_id = '9999' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_9999 BEFORE INSERT ON programs FOR EACH ROW EXECUTE FUNCTION refuse_9999()",
    ],
}


async def test_a_failing_call_fails_alone(engine: SyncEngine) -> None:
    async with engine.database.begin() as conn:
        for statement in REFUSE_9999[engine.database.dialect.name]:
            await conn.exec_driver_sql(statement)
    calls = [engine.sync("school", "programs", [program(str(1000 + i))]) for i in range(6)]
    calls.insert(4, engine.sync("school", "programs", [program("9999")]))
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = results.pop(4)
    assert isinstance(failed, Exception) and "refused by the test" in str(failed)
    assert [outcomes(cast(SyncReport, report)) for report in results] == [[(str(1000 + i), "NEW")] for i in range(6)]
    assert await engine.fetch_record("school", "programs", "9999") is None


async def test_dry_runs_run_alone_and_write_nothing(engine: SyncEngine) -> None:
    real = [engine.sync("school", "programs", [program(str(1000 + i))]) for i in range(4)]
    dry = [engine.sync("school", "programs", [program(str(2000 + i))], dry_run=True) for i in range(4)]
    reports = await asyncio.gather(*real, *dry)
    assert [report.dry_run for report in reports] == [False] * 4 + [True] * 4
    assert all(report.summary["NEW"] == 1 for report in reports)
    for i in range(4):
        assert await engine.fetch_record("school", "programs", str(1000 + i)) is not None
        assert await engine.fetch_record("school", "programs", str(2000 + i)) is None


async def test_a_caller_that_gives_up_waiting_is_not_synced(engine: SyncEngine) -> None:
    first = asyncio.ensure_future(engine.sync("school", "programs", [program("1000")]))
    await asyncio.sleep(0)  # the first call runs
    waiting = asyncio.ensure_future(engine.sync("school", "programs", [program("7777")]))
    await asyncio.sleep(0)
    waiting.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await engine.close()  # finishes whatever was started
    assert await engine.fetch_record("school", "programs", "7777") is None
