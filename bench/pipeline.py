"""Item 1: the engine's pipeline through its Python API, on PostgreSQL and SQLite.

Per database and batch size, each repeat starts from an empty enrollments table (parents stay):

- NEW: every record is inserted;
- UNCHANGED: the same records again;
- 10 % UPDATED: the same records, every tenth with a later Modified_Time and two changed fields;
- 10 % INVALID: from empty again, every tenth record with two bad fields (the rest are NEW).

Statuses are checked after each run, so a figure never measures something else than it claims.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench import records
from bench.databases import ENTITY, TENANT, Databases, log, reset, vacuum
from bench.measure import Measurement
from bench.settings import Sizes
from syncengine.engine import SyncEngine

CASES = ("NEW", "UNCHANGED", "10 % UPDATED", "10 % INVALID")


async def load(engine: SyncEngine, rows: list[Any], batch: int) -> tuple[float, Counter[str]]:
    """Sync `rows` in batches of `batch`, one transaction each; seconds taken and status counts."""
    reports = []
    start = time.perf_counter()
    for chunk in records.batches(rows, batch):
        reports.append(await engine.sync(TENANT, ENTITY, chunk))
    seconds = time.perf_counter() - start
    counts: Counter[str] = Counter()
    for report in reports:
        counts.update({status: n for status, n in report.summary.items() if n})
    return seconds, counts


def expect(counts: Counter[str], **expected: int) -> None:
    if dict(counts) != expected:
        raise RuntimeError(f"unexpected statuses: {dict(counts)}, expected {expected}")


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    out: list[Measurement] = []
    for dialect in sizes.dialects:
        engine = await databases.engine(dialect, f"pipeline_{dialect}", seed=sizes.world)
        for batch in sizes.batches:
            count = sizes.single if batch == 1 else sizes.records
            tenth = len(range(0, count, 10))
            new = records.enrollments(sizes.world, count)
            updated = records.enrollments(sizes.world, count, updated=0.1)
            invalid = records.enrollments(sizes.world, count, invalid=0.1)
            rows = {case: Measurement("pipeline", dialect, case, batch, count) for case in CASES}
            for repeat in range(sizes.repeats):
                log(f"pipeline {dialect} batch {batch}: repeat {repeat + 1}/{sizes.repeats}, {count:,} records")
                await reset(engine)
                await vacuum(engine)
                seconds, counts = await load(engine, new, batch)
                expect(counts, NEW=count)
                rows["NEW"].seconds.append(seconds)
                seconds, counts = await load(engine, new, batch)
                expect(counts, UNCHANGED=count)
                rows["UNCHANGED"].seconds.append(seconds)
                seconds, counts = await load(engine, updated, batch)
                expect(counts, UPDATED=tenth, UNCHANGED=count - tenth)
                rows["10 % UPDATED"].seconds.append(seconds)
                await reset(engine)
                await vacuum(engine)
                seconds, counts = await load(engine, invalid, batch)
                expect(counts, INVALID=tenth, NEW=count - tenth)
                rows["10 % INVALID"].seconds.append(seconds)
            out.extend(rows.values())
        await reset(engine)
    return out
