"""Item 6: does the pipeline slow down as the table grows?

For each size, the enrollments table is filled in SQL (generate_series, with the unique index in
place, as the engine would have left it), then the pipeline loads `scale_records` new records in
batches of 1,000. After each repeat the added rows are deleted and the table vacuumed.
"""

from __future__ import annotations

import sqlalchemy as sa

from bench import records
from bench.databases import ENTITY, TENANT, Databases, log, reset, vacuum
from bench.measure import Measurement
from bench.pipeline import expect, load
from bench.settings import Sizes
from syncengine.engine import SyncEngine
from syncengine.tables import OUTBOX

BATCH = 1_000
#: Seeded rows take zoho ids far above the loaded ones, so the two never meet.
SEED_OFFSET = 100_000_000

SEED = f"""
INSERT INTO {ENTITY} (tenant_id, zoho_id, student_zoho_id, student_id, class_zoho_id, class_id,
                      enrollment_type, start_date, end_date, fingerprint, source_version, created_at, updated_at)
SELECT :tenant, (CAST(:base AS bigint) + g)::text, s.zoho_id, s.id, c.zoho_id, c.id,
       'Normal', DATE '2026-02-16', DATE '2026-05-08',
       md5(g::text) || md5((g + 1)::text), now(), now(), now()
FROM generate_series(:start, :stop - 1) AS g
JOIN students s ON s.tenant_id = :tenant AND s.zoho_id = (CAST(:student_base AS bigint) + g % :students)::text
JOIN classes c ON c.tenant_id = :tenant AND c.zoho_id = (CAST(:class_base AS bigint) + (g * 7) % :classes)::text
"""


async def fill(engine: SyncEngine, rows: int, sizes: Sizes) -> None:
    """Fill the table with `rows` rows, in chunks so a 1,000,000-row seed shows progress."""
    step = 200_000
    for start in range(0, rows, step):
        async with engine.database.begin() as conn:
            await conn.execute(
                sa.text(SEED),
                {
                    "tenant": TENANT,
                    "base": records.ENROLLMENT_BASE + SEED_OFFSET,
                    "start": start,
                    "stop": min(start + step, rows),
                    "student_base": records.STUDENT_BASE,
                    "students": sizes.world.students,
                    "class_base": records.CLASS_BASE,
                    "classes": sizes.world.classes,
                },
            )
        log(f"scale: seeded {min(start + step, rows):,} of {rows:,} rows")


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    engine = await databases.engine("postgresql", "scale", seed=sizes.world)
    count = sizes.scale_records
    new = records.enrollments(sizes.world, count)
    out = []
    for existing in sizes.scale_existing:
        await reset(engine)
        await fill(engine, existing, sizes)
        await vacuum(engine)
        measurement = Measurement("scale", "postgresql", f"NEW into {existing:,}", BATCH, count)
        for repeat in range(sizes.repeats):
            log(f"scale: {existing:,} rows, repeat {repeat + 1}/{sizes.repeats}, {count:,} records")
            seconds, counts = await load(engine, new, BATCH)
            expect(counts, NEW=count)
            measurement.seconds.append(seconds)
            async with engine.database.begin() as conn:  # drop what the run added (ids sort below the seed's)
                await conn.execute(
                    sa.text(f"DELETE FROM {ENTITY} WHERE zoho_id < :first_seed"),
                    {"first_seed": str(records.ENROLLMENT_BASE + SEED_OFFSET)},
                )
                await conn.execute(sa.text(f"TRUNCATE {OUTBOX}"))
            await vacuum(engine)
        out.append(measurement)
    await reset(engine)
    return out
