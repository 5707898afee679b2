"""Item 4: the naive ORM way, as the seed system did it, on the same tables and rows.

Per record: validate it (the engine's own `parse_record` and `fingerprint`, so only the database
access differs), SELECT the stored row by (tenant, zoho id) through the SQLAlchemy ORM, then add
it or set its attributes (the ORM flushes an INSERT or UPDATE per record), add an outbox row for
a change; commit every 100 records. Lookup targets are looked up when first seen, then cached.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import registry

from bench import records
from bench.databases import ENTITY, TENANT, Databases, log, reset, vacuum
from bench.measure import Measurement
from bench.settings import Sizes
from syncengine.descriptors import Entity, lookup_columns
from syncengine.engine import SyncEngine
from syncengine.tables import OUTBOX

COMMIT_EVERY = 100


class Row:
    """An enrollment row, mapped onto the engine's table."""

    fingerprint: str


class Delivery:
    """An outbox row."""


async def naive_load(engine: SyncEngine, rows: list[dict[str, Any]], mapper: registry) -> Counter[str]:
    entity: Entity = engine.catalog.entity(ENTITY)
    compiled = engine.compiled[ENTITY]  # its parser and fingerprint, built once
    tables = engine.metadata.tables
    table = tables[ENTITY]
    parent_ids: dict[tuple[str, str], int | None] = {}
    counts: Counter[str] = Counter()
    async with AsyncSession(engine.database, expire_on_commit=False) as session:
        for index, raw in enumerate(rows, 1):
            incoming = compiled.parser.parse(raw)
            if incoming.errors or incoming.zoho_id is None:
                counts["INVALID"] += 1
            else:
                stored = (
                    await session.execute(
                        sa.select(Row).where(table.c.tenant_id == TENANT, table.c.zoho_id == incoming.zoho_id)
                    )
                ).scalar_one_or_none()
                values = {f.name: incoming.values.get(f.name) for f in entity.fields}
                fprint = compiled.fingerprint(values)
                now = dt.datetime.now(dt.UTC)
                if stored is not None and stored.fingerprint == fprint:
                    counts["UNCHANGED"] += 1
                else:
                    columns: dict[str, Any] = {
                        "fingerprint": fprint,
                        "source_version": incoming.version,
                        "updated_at": now,
                    }
                    for fld in entity.fields:
                        if fld.is_lookup:
                            zoho_column, local_column = lookup_columns(fld.name)
                            key = (str(fld.target), str(values[fld.name]))
                            if key not in parent_ids:
                                target = tables[key[0]]
                                parent_ids[key] = (
                                    await session.execute(
                                        sa.select(target.c.id).where(
                                            target.c.tenant_id == TENANT, target.c.zoho_id == key[1]
                                        )
                                    )
                                ).scalar_one_or_none()
                            columns[zoho_column], columns[local_column] = key[1], parent_ids[key]
                        else:
                            columns[fld.name] = values[fld.name]
                    if stored is None:
                        session.add(Row(tenant_id=TENANT, zoho_id=incoming.zoho_id, created_at=now, **columns))  # type: ignore[call-arg]
                        counts["NEW"] += 1
                    else:
                        for name, value in columns.items():
                            setattr(stored, name, value)
                        counts["UPDATED"] += 1
                    session.add(
                        Delivery(
                            tenant_id=TENANT,
                            entity=ENTITY,
                            zoho_id=incoming.zoho_id,
                            operation="upsert",
                            next_attempt_at=now,
                            created_at=now,
                        )  # type: ignore[call-arg]
                    )
            if index % COMMIT_EVERY == 0:
                await session.commit()
        await session.commit()
    return counts


def mapped(engine: SyncEngine) -> registry:
    """Map Row and Delivery onto this engine's tables (once per process: the first engine wins)."""
    mapper = registry()
    if not hasattr(Row, "__mapper__"):
        mapper.map_imperatively(Row, engine.metadata.tables[ENTITY])
        mapper.map_imperatively(Delivery, engine.metadata.tables[OUTBOX])
    return mapper


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    # PostgreSQL's default plan caching: what an ORM application gets unless it asks otherwise.
    engine = await databases.engine("postgresql", "baseline", seed=sizes.world, settings={"plan_cache_mode": "auto"})
    mapper = mapped(engine)
    count = sizes.naive
    rows = records.enrollments(sizes.world, count)
    new = Measurement(
        "naive ORM", "postgresql", "NEW", COMMIT_EVERY, count, note="SELECT + add per record, commit per 100"
    )
    unchanged = Measurement("naive ORM", "postgresql", "UNCHANGED", COMMIT_EVERY, count)
    for repeat in range(sizes.repeats):
        log(f"naive ORM: repeat {repeat + 1}/{sizes.repeats}, {count:,} records")
        await reset(engine)
        await vacuum(engine)
        for measurement, expected in ((new, "NEW"), (unchanged, "UNCHANGED")):
            start = time.perf_counter()
            counts = await naive_load(engine, rows, mapper)
            measurement.seconds.append(time.perf_counter() - start)
            if dict(counts) != {expected: count}:
                raise RuntimeError(f"naive ORM {expected}: unexpected statuses {dict(counts)}")
    return [new, unchanged]
