"""Item 5: the limit, the best raw asyncpg load of the same rows, hand-written for enrollments.

Same work as the engine, done the cheapest way: map and check each record with plain Python,
fingerprint it the engine's way (SHA-256 of the sorted JSON of the mapped values), resolve
lookups from a dict loaded once, then per batch

- unnest: one `WITH up AS (INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE ... WHERE
  fingerprint IS DISTINCT FROM ... RETURNING) INSERT INTO outbox ... SELECT FROM up` (batches
  of 1,000): rows, outbox rows and per-record statuses in one statement;
- COPY: SELECT the stored fingerprints, compare in Python, COPY the new rows and their outbox
  rows, UPDATE the changed ones from unnest (batches of 10,000).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterable
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints, and there are no stubs
import msgspec

from bench import records
from bench.databases import ENTITY, TENANT, Databases, log, reset, vacuum
from bench.measure import Measurement
from bench.settings import Sizes
from syncengine.tables import OUTBOX

UNNEST_BATCH = 1_000
COPY_BATCH = 10_000
CHOICES = frozenset(records.ENROLLMENT_TYPES)
_encode = msgspec.json.Encoder(order="sorted").encode

COLUMNS = (
    "zoho_id",
    "student_zoho_id",
    "student_id",
    "class_zoho_id",
    "class_id",
    "enrollment_type",
    "start_date",
    "end_date",
    "fingerprint",
    "source_version",
)
TYPES = ("varchar", "varchar", "bigint", "varchar", "bigint", "varchar", "date", "date", "varchar", "timestamptz")
UPDATED_COLUMNS = COLUMNS[1:]

UPSERT = f"""
WITH up AS (
    INSERT INTO {ENTITY} AS t (tenant_id, {", ".join(COLUMNS)}, created_at, updated_at)
    SELECT $1, u.*, $12, $12
    FROM unnest({", ".join(f"${i + 2}::{kind}[]" for i, kind in enumerate(TYPES))}) AS u
    ON CONFLICT (tenant_id, zoho_id) DO UPDATE
    SET {", ".join(f"{c} = EXCLUDED.{c}" for c in UPDATED_COLUMNS)}, updated_at = EXCLUDED.updated_at, deleted_at = NULL
    WHERE t.fingerprint IS DISTINCT FROM EXCLUDED.fingerprint
      AND (t.source_version IS NULL OR EXCLUDED.source_version IS NULL OR EXCLUDED.source_version >= t.source_version)
    RETURNING t.zoho_id, (t.xmax = 0) AS inserted
), box AS (
    INSERT INTO {OUTBOX} (tenant_id, entity, zoho_id, operation, next_attempt_at, created_at)
    SELECT $1, '{ENTITY}', zoho_id, 'upsert', $12, $12 FROM up
)
SELECT zoho_id, inserted FROM up
"""

STORED = f"SELECT zoho_id, fingerprint FROM {ENTITY} WHERE tenant_id = $1 AND zoho_id = ANY($2::varchar[])"
UPDATE = f"""
UPDATE {ENTITY} AS t SET {", ".join(f"{c} = u.{c}" for c in UPDATED_COLUMNS)}, updated_at = $12, deleted_at = NULL
FROM unnest({", ".join(f"${i + 2}::{kind}[]" for i, kind in enumerate(TYPES))}) AS u({", ".join(COLUMNS)})
WHERE t.tenant_id = $1 AND t.zoho_id = u.zoho_id
"""


def _lookup_id(value: Any) -> str | None:
    value = value.get("id") if isinstance(value, dict) else value
    return value if isinstance(value, str) and value else None


def map_rows(raws: Iterable[dict[str, Any]], parents: dict[str, dict[str, int]]) -> tuple[list[tuple[Any, ...]], int]:
    """Valid records as column tuples (in COLUMNS order), and how many were invalid."""
    students, classes = parents["students"], parents["classes"]
    rows, invalid = [], 0
    for raw in raws:
        try:
            student, klass = _lookup_id(raw.get("Enrolled_Students")), _lookup_id(raw.get("Classes"))
            kind = raw.get("Enrollment_Type")
            start = dt.date.fromisoformat(raw["Start_Date"]) if raw.get("Start_Date") else None
            end = dt.date.fromisoformat(raw["End_Date"]) if raw.get("End_Date") else None
            version = dt.datetime.fromisoformat(raw["Modified_Time"]).astimezone(dt.UTC)
        except ValueError:
            invalid += 1
            continue
        if student is None or klass is None or (kind is not None and kind not in CHOICES):
            invalid += 1
            continue
        canonical = {
            "Enrolled_Students": student,
            "Classes": klass,
            "Enrollment_Type": kind,
            "Start_Date": start,
            "End_Date": end,
        }
        fprint = hashlib.sha256(_encode({k: v for k, v in canonical.items() if v is not None})).hexdigest()
        rows.append(
            (raw["id"], student, students.get(student), klass, classes.get(klass), kind, start, end, fprint, version)
        )
    return rows, invalid


async def load_parents(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    return {
        target: dict(
            await conn.fetch(f"SELECT zoho_id, id FROM {target} WHERE tenant_id = $1 AND deleted_at IS NULL", TENANT)
        )
        for target in ("students", "classes")
    }


def columns_of(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in COLUMNS]


async def unnest_load(conn: asyncpg.Connection, raws: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"NEW": 0, "UPDATED": 0, "UNCHANGED": 0, "INVALID": 0}
    parents = await load_parents(conn)
    for chunk in records.batches(raws, UNNEST_BATCH):
        rows, invalid = map_rows(chunk, parents)
        now = dt.datetime.now(dt.UTC)
        async with conn.transaction():
            written = await conn.fetch(UPSERT, TENANT, *columns_of(rows), now)
        inserted = sum(1 for row in written if row["inserted"])
        counts["NEW"] += inserted
        counts["UPDATED"] += len(written) - inserted
        counts["UNCHANGED"] += len(rows) - len(written)
        counts["INVALID"] += invalid
    return {status: n for status, n in counts.items() if n}


async def copy_load(conn: asyncpg.Connection, raws: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"NEW": 0, "UPDATED": 0, "UNCHANGED": 0, "INVALID": 0}
    parents = await load_parents(conn)
    for chunk in records.batches(raws, COPY_BATCH):
        rows, invalid = map_rows(chunk, parents)
        now = dt.datetime.now(dt.UTC)
        async with conn.transaction():
            stored = dict(await conn.fetch(STORED, TENANT, [row[0] for row in rows]))
            new = [row for row in rows if row[0] not in stored]
            changed = [row for row in rows if row[0] in stored and stored[row[0]] != row[8]]
            if new:
                await conn.copy_records_to_table(
                    ENTITY,
                    records=[(TENANT, *row, now, now) for row in new],
                    columns=["tenant_id", *COLUMNS, "created_at", "updated_at"],
                )
            if changed:
                await conn.execute(UPDATE, TENANT, *columns_of(changed), now)
            if new or changed:
                await conn.copy_records_to_table(
                    OUTBOX,
                    records=[(TENANT, ENTITY, row[0], "upsert", now, now) for row in (*new, *changed)],
                    columns=["tenant_id", "entity", "zoho_id", "operation", "next_attempt_at", "created_at"],
                )
        counts["NEW"] += len(new)
        counts["UPDATED"] += len(changed)
        counts["UNCHANGED"] += len(rows) - len(new) - len(changed)
        counts["INVALID"] += invalid
    return {status: n for status, n in counts.items() if n}


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    engine = await databases.engine("postgresql", "limit", seed=sizes.world)
    count = sizes.records
    tenth = len(range(0, count, 10))
    new = records.enrollments(sizes.world, count)
    updated = records.enrollments(sizes.world, count, updated=0.1)
    out: list[Measurement] = []
    conn = await databases.connect("limit")
    try:
        for name, loader, batch in (("raw unnest", unnest_load, UNNEST_BATCH), ("raw COPY", copy_load, COPY_BATCH)):
            note = "asyncpg, one connection" + (", with outbox rows" if name == "raw unnest" else ", COPY + UPDATE")
            cases = {
                "NEW": (new, {"NEW": count}),
                "UNCHANGED": (new, {"UNCHANGED": count}),
                "10 % UPDATED": (updated, {"UPDATED": tenth, "UNCHANGED": count - tenth}),
            }
            rows = {case: Measurement(name, "postgresql", case, batch, count, note=note) for case in cases}
            for repeat in range(sizes.repeats):
                log(f"{name}: repeat {repeat + 1}/{sizes.repeats}, {count:,} records")
                await reset(engine)
                await vacuum(engine)
                for case, (raws, expected) in cases.items():
                    start = time.perf_counter()
                    counts = await loader(conn, raws)
                    rows[case].seconds.append(time.perf_counter() - start)
                    if counts != expected:
                        raise RuntimeError(f"{name} {case}: unexpected statuses {counts}, expected {expected}")
            out.extend(rows.values())
    finally:
        await conn.close()
    await reset(engine)
    return out
