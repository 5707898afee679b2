"""Two engines on one database stand for two worker processes (`syncengine serve --workers 2`):
their lanes do not order each other's calls, only the store's locks do (PostgreSQL's advisory
locks, SQLite's BEGIN IMMEDIATE)."""

from __future__ import annotations

import asyncio
import random

from syncengine.engine import SyncEngine
from tests.records import student

IDS = [str(3000 + i) for i in range(40)]
ROUNDS = 15


async def test_two_processes_patching_the_same_records_lose_no_update(engine: SyncEngine) -> None:
    """Each process patches its own field of the same records, call after call. A write decided
    on a stored state that the other process changed meanwhile would put the older value back."""
    other = SyncEngine(engine.catalog, engine.database)
    await engine.sync("school", "students", [student(zoho_id) for zoho_id in IDS])
    rng = random.Random(11)
    last_name: dict[str, str] = {}

    async def whole_batches() -> None:  # every record, each call
        for n in range(ROUNDS):
            report = await engine.sync("school", "students", [{"id": i, "First_Name": f"A{n}"} for i in IDS])
            assert {r.status for r in report.results} == {"UPDATED"}

    async def small_batches() -> None:  # a few records, each call
        for n in range(ROUNDS * 3):
            ids = rng.sample(IDS, 3)
            report = await other.sync("school", "students", [{"id": i, "Last_Name": f"B{n}"} for i in ids])
            assert {r.status for r in report.results} == {"UPDATED"}
            last_name.update(dict.fromkeys(ids, f"B{n}"))

    await asyncio.wait_for(asyncio.gather(whole_batches(), small_batches()), timeout=120)
    for zoho_id in IDS:
        stored = await engine.fetch_record("school", "students", zoho_id)
        assert stored is not None
        assert stored["values"]["First_Name"] == f"A{ROUNDS - 1}", zoho_id
        assert stored["values"]["Last_Name"] == last_name.get(zoho_id, "Yılmaz"), zoho_id
