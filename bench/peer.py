"""Item 8: the peer, dlt's merge load of the same Zoho records into the same PostgreSQL.

dlt (a bench-only dependency: `pip install -e .[bench]`) infers the table from the records,
flattens the lookups, and merges on the Zoho id through a staging table. It reports no
per-record status. Figures: `dlt_records` records new, the same again (repeated), and
`dlt_loads` loads of 100 new records into the existing table.

The engine's side of the three ratios is measured here too, right before each dlt repeat
(`pipeline, beside dlt`: the same records NEW and UNCHANGED in batches of 1,000, and NEW in
syncs of 100): the pipeline scenario runs many minutes earlier, and on a machine whose speed
drifts over minutes a ratio of figures taken that far apart measures the drift as well.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import pipeline, records
from bench.databases import Databases, log, reset, vacuum
from bench.measure import BESIDE, Measurement
from bench.settings import Sizes
from syncengine.engine import SyncEngine

LOAD_SIZE = 100
#: The engine's figures taken beside dlt's: (case, batch size).
ENGINE_RUNS = (("NEW", 1000), ("UNCHANGED", 1000), ("NEW", 100))


def merge_load(databases: Databases, dataset: str, workdir: str, rows: list[dict[str, Any]]) -> float:
    """One `pipeline.run` of `rows` with write_disposition="merge"; the seconds it took."""
    import dlt

    pipeline = dlt.pipeline(
        pipeline_name=dataset,
        destination=dlt.destinations.postgres(credentials=_with_password(databases.dsn())),
        dataset_name=dataset,
        pipelines_dir=workdir,
    )
    resource = dlt.resource(rows, name="enrollments", write_disposition="merge", primary_key="id")
    start = time.perf_counter()
    pipeline.run(resource)
    return time.perf_counter() - start


def _with_password(dsn: str) -> str:
    """dlt insists on a password; a server with trust auth ignores it."""
    parts = urlsplit(dsn)
    if parts.password is not None:
        return dsn
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user or 'postgres'}:unused@{host}"))


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    try:
        import dlt  # noqa: F401
    except ImportError:
        log("peer: dlt is not installed (pip install -e .[bench]); skipped")
        return [Measurement("dlt merge", "postgresql", "not installed", None, 0, note="pip install -e .[bench]")]
    count = sizes.dlt_records
    rows = records.enrollments(sizes.world, count)
    note = 'write_disposition="merge", primary_key="id"'
    new = Measurement("dlt merge", "postgresql", "NEW", None, count, note=note)
    repeated = Measurement("dlt merge", "postgresql", "repeated", None, count)
    small = Measurement(
        "dlt merge", "postgresql", "100-record loads", LOAD_SIZE, LOAD_SIZE, note="seconds per load, as rec/s"
    )
    beside = {
        (case, batch): Measurement(BESIDE, "postgresql", case, batch, count, note="right before each dlt repeat")
        for case, batch in ENGINE_RUNS
    }
    engine = await databases.engine("postgresql", "peer_engine", seed=sizes.world)
    with tempfile.TemporaryDirectory(prefix="dlt-") as workdir:
        for repeat in range(sizes.repeats):
            log(f"dlt merge: repeat {repeat + 1}/{sizes.repeats}, the engine first, then dlt: {count:,} records new, "
                f"then repeated, then {sizes.dlt_loads} loads of {LOAD_SIZE}")  # fmt: skip
            await _engine_runs(engine, rows, beside)
            dataset = databases.schema(f"peer_{repeat}")
            new.seconds.append(await asyncio.to_thread(merge_load, databases, dataset, workdir, rows))
            repeated.seconds.append(await asyncio.to_thread(merge_load, databases, dataset, workdir, rows))
            for load in range(sizes.dlt_loads):
                start = count + (repeat * sizes.dlt_loads + load) * LOAD_SIZE
                batch = records.enrollments(sizes.world, LOAD_SIZE, start=start)
                small.seconds.append(await asyncio.to_thread(merge_load, databases, dataset, workdir, batch))
    await reset(engine)
    return [new, repeated, small, *beside.values()]


async def _engine_runs(
    engine: SyncEngine, rows: list[dict[str, Any]], figures: dict[tuple[str, int], Measurement]
) -> None:
    """The engine's side of the peer ratios, on the same records, each run from an empty table
    but for UNCHANGED (which follows NEW)."""
    for case, batch in ENGINE_RUNS:
        if case == "NEW":
            await reset(engine)
            await vacuum(engine)
        seconds, counts = await pipeline.load(engine, rows, batch)
        pipeline.expect(counts, **{case: len(rows)})
        figures[(case, batch)].seconds.append(seconds)
