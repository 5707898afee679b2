"""The minimal endpoint the HTTP service is compared with (issue 4): what the work costs without
the framework around it.

`POST /v1/sync/enrollments` takes `{"data": [enrollments]}`, decodes it with msgspec into typed
structs, fingerprints each record (SHA-256 of its sorted JSON), resolves the lookups from dicts
loaded at startup, and writes the batch with one asyncpg statement: `INSERT ... SELECT FROM
unnest(...) ON CONFLICT DO UPDATE ... WHERE the fingerprint differs RETURNING`, with the outbox
rows in the same statement (so it writes what the service writes). No authentication, no
idempotency, no per-field error reports: a record msgspec refuses fails the whole request.

    BENCH_MINIMAL_DSN=postgresql://postgres@127.0.0.1/db BENCH_MINIMAL_TENANT=school \\
        uvicorn bench.minimal_app:app_from_env --factory --workers 1
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints, and there are no stubs
import msgspec
from litestar import Litestar, Request, Response, post

from bench.limit import COLUMNS, TYPES  # the same enrollment columns as the raw limit
from syncengine.tables import OUTBOX

ENTITY = "enrollments"
UPSERT = f"""
WITH up AS (
    INSERT INTO {ENTITY} AS t (tenant_id, {", ".join(COLUMNS)}, created_at, updated_at)
    SELECT $1, u.*, $12, $12
    FROM unnest({", ".join(f"${i + 2}::{kind}[]" for i, kind in enumerate(TYPES))}) AS u
    ON CONFLICT (tenant_id, zoho_id) DO UPDATE
    SET {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])}, updated_at = EXCLUDED.updated_at, deleted_at = NULL
    WHERE t.fingerprint IS DISTINCT FROM EXCLUDED.fingerprint
    RETURNING t.zoho_id, (t.xmax = 0) AS inserted
), box AS (
    INSERT INTO {OUTBOX} (tenant_id, entity, zoho_id, operation, next_attempt_at, created_at)
    SELECT $1, '{ENTITY}', zoho_id, 'upsert', $12, $12 FROM up
)
SELECT zoho_id, inserted FROM up
"""


class Lookup(msgspec.Struct):
    id: str


class Enrollment(msgspec.Struct):
    id: str
    Enrolled_Students: Lookup
    Classes: Lookup
    Enrollment_Type: Literal["Normal", "Recording", "Self-Study", "Not Graded"] | None = None
    Start_Date: dt.date | None = None
    End_Date: dt.date | None = None
    Modified_Time: dt.datetime | None = None


class Batch(msgspec.Struct):
    data: list[Enrollment]


_decode = msgspec.json.Decoder(Batch).decode
_canonical = msgspec.json.Encoder(order="sorted").encode
_encode = msgspec.json.Encoder().encode


def fingerprint(record: Enrollment) -> str:
    values = {
        "Classes": record.Classes.id,
        "End_Date": record.End_Date,
        "Enrolled_Students": record.Enrolled_Students.id,
        "Enrollment_Type": record.Enrollment_Type,
        "Start_Date": record.Start_Date,
    }
    return hashlib.sha256(_canonical({k: v for k, v in values.items() if v is not None})).hexdigest()


def create_app(dsn: str, tenant: str) -> Litestar:
    pool: Any = None
    parents: dict[str, dict[str, int]] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        nonlocal pool
        pool = await asyncpg.create_pool(
            dsn, min_size=4, max_size=16, server_settings={"plan_cache_mode": "force_custom_plan"}
        )
        async with pool.acquire() as conn:
            for target in ("students", "classes"):
                query = f"SELECT zoho_id, id FROM {target} WHERE tenant_id = $1 AND deleted_at IS NULL"
                parents[target] = dict(await conn.fetch(query, tenant))
        try:
            yield
        finally:
            await pool.close()

    @post(f"/v1/sync/{ENTITY}", status_code=200)
    async def sync_enrollments(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            batch = _decode(await request.body())
        except msgspec.ValidationError as error:
            return Response(_encode({"status": "error", "message": str(error)}), status_code=400)
        students, classes = parents["students"], parents["classes"]
        columns: list[list[Any]] = [[] for _ in COLUMNS]
        for record in batch.data:
            student, klass = record.Enrolled_Students.id, record.Classes.id
            version = record.Modified_Time.astimezone(dt.UTC) if record.Modified_Time else None
            row = (
                record.id,
                student,
                students.get(student),
                klass,
                classes.get(klass),
                record.Enrollment_Type,
                record.Start_Date,
                record.End_Date,
                fingerprint(record),
                version,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        written = await pool.fetch(UPSERT, tenant, *columns, dt.datetime.now(dt.UTC))
        inserted = {row["zoho_id"]: row["inserted"] for row in written}
        results = []
        for record in batch.data:
            done = inserted.get(record.id)
            status = "UNCHANGED" if done is None else "NEW" if done else "UPDATED"
            results.append({"id": record.id, "status": status})
        return Response(_encode({"results": results}), media_type="application/json")

    return Litestar(route_handlers=[sync_enrollments], lifespan=[lifespan], logging_config=None, openapi_config=None)


def app_from_env() -> Litestar:
    return create_app(os.environ["BENCH_MINIMAL_DSN"], os.environ.get("BENCH_MINIMAL_TENANT", "school"))
