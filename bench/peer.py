"""Item 8: the peer, dlt's merge load of the same Zoho records into the same PostgreSQL.

dlt (a bench-only dependency: `pip install -e .[bench]`) infers the table from the records,
flattens the lookups, and merges on the Zoho id through a staging table. It reports no
per-record status. Figures: `dlt_records` records new, the same again (repeated), and
`dlt_loads` loads of 100 new records into the existing table.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import records
from bench.databases import Databases, log
from bench.measure import Measurement
from bench.settings import Sizes

LOAD_SIZE = 100


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
    return await asyncio.to_thread(_run, databases, sizes)


def _run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    count = sizes.dlt_records
    rows = records.enrollments(sizes.world, count)
    note = 'write_disposition="merge", primary_key="id"'
    new = Measurement("dlt merge", "postgresql", "NEW", None, count, note=note)
    repeated = Measurement("dlt merge", "postgresql", "repeated", None, count)
    small = Measurement(
        "dlt merge", "postgresql", "100-record loads", LOAD_SIZE, LOAD_SIZE, note="seconds per load, as rec/s"
    )
    with tempfile.TemporaryDirectory(prefix="dlt-") as workdir:
        for repeat in range(sizes.repeats):
            dataset = databases.schema(f"peer_{repeat}")
            log(f"dlt merge: repeat {repeat + 1}/{sizes.repeats}, {count:,} records new, then repeated")
            new.seconds.append(merge_load(databases, dataset, workdir, rows))
            repeated.seconds.append(merge_load(databases, dataset, workdir, rows))
            for load in range(sizes.dlt_loads):
                start = count + (repeat * sizes.dlt_loads + load) * LOAD_SIZE
                small.seconds.append(
                    merge_load(databases, dataset, workdir, records.enrollments(sizes.world, LOAD_SIZE, start=start))
                )
    small.records = LOAD_SIZE
    return [new, repeated, small]
