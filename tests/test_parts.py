"""A large batch is decided and written in parts: the same outcome as one part, on both databases."""

from __future__ import annotations

import random
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from tests.conftest import Databases, count_rows
from tests.records import student

WHOLE = 1_000_000  # more records than any batch here: one part


def random_batch(rng: random.Random, clock: list[int]) -> list[dict[str, Any]]:
    """Records of a few ids, repeated within the batch: whole, patches, deletions, stale and invalid ones."""
    batch: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 40)):
        zoho_id = str(3000 + rng.randrange(12))
        clock[0] += 1
        modified = f"2026-03-01T00:{clock[0] // 60 % 60:02d}:{clock[0] % 60:02d}Z"
        kind = rng.choice(["whole", "whole", "patch", "delete", "stale", "invalid"])
        if kind == "whole":
            status = rng.choice(["Active", "Freeze"])
            batch.append(
                student(zoho_id, Status=status, Phone_Number=rng.choice(["1", "2", None]), Modified_Time=modified)
            )
        elif kind == "patch":
            batch.append({"id": zoho_id, "Phone_Number": str(rng.randrange(3)), "Modified_Time": modified})
        elif kind == "delete":
            batch.append({"id": zoho_id, "$deleted": True})
        elif kind == "stale":
            batch.append(student(zoho_id, Status="Freeze", Modified_Time="2026-01-01T00:00:00Z"))
        else:
            batch.append(student(zoho_id, Status="Enrolled", Modified_Time=modified))
    return batch


async def stored(engine: SyncEngine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The students as stored (no surrogate ids or wall-clock times) and the outbox, sorted."""
    async with engine.database.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT zoho_id, first_name, status, phone, fingerprint, source_version, deleted_at IS NULL "
                "FROM students ORDER BY zoho_id"
            )
        )
        queued = await conn.execute(sa.text("SELECT entity, zoho_id, operation FROM syncengine_outbox"))
        return [tuple(row) for row in rows], sorted(tuple(row) for row in queued)


@pytest.mark.parametrize("seed", range(4))
async def test_parts_decide_and_store_what_one_part_does(
    databases: Databases, dialect: str, catalog: Catalog, seed: int
) -> None:
    """Parts of three records against one part: the same reports, rows and deliveries, batch by batch."""
    parts = SyncEngine(catalog, await databases.create(dialect, catalog), part_records=3)
    whole = SyncEngine(catalog, await databases.create(dialect, catalog), part_records=WHOLE)
    rng, clock = random.Random(seed), [0]
    for _ in range(12):
        batch = random_batch(rng, clock)
        in_parts = await parts.sync("school", "students", batch)
        in_one = await whole.sync("school", "students", batch)
        assert in_parts.to_builtins() == in_one.to_builtins()
        assert await stored(parts) == await stored(whole)
    statuses = {result.status for result in in_parts.results}
    assert len(statuses) > 1  # the batches mix outcomes (checked on the last one)


BOOM = "3999"
TRIGGERS = {
    "postgresql": [
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.zoho_id = '{BOOM}' THEN RAISE EXCEPTION 'boom: the database refused {BOOM}'; END IF; "
        "RETURN NEW; END $$",
        "CREATE TRIGGER boom BEFORE INSERT ON students FOR EACH ROW EXECUTE FUNCTION boom()",
    ],
    "sqlite": [
        f"CREATE TRIGGER boom BEFORE INSERT ON students WHEN NEW.zoho_id = '{BOOM}' "
        f"BEGIN SELECT RAISE(ABORT, 'boom: the database refused {BOOM}'); END",
    ],
}


@pytest.mark.parametrize("position", [1, 5, 9], ids=["first-part", "middle-part", "last-part"])
async def test_a_part_the_database_refuses_rolls_the_whole_batch_back(
    databases: Databases, dialect: str, catalog: Catalog, position: int
) -> None:
    """A part fails while the next is being decided: nothing of the batch stays, the engine goes on."""
    engine = SyncEngine(catalog, await databases.create(dialect, catalog), part_records=3)
    await engine.sync("school", "students", [student("3000"), student("3001")])
    async with engine.database.begin() as conn:
        for statement in TRIGGERS[dialect]:
            await conn.exec_driver_sql(statement)
    before = await stored(engine)
    batch = [student(str(3000 + i), Status="Freeze") for i in range(10)]
    batch[position] = student(BOOM)
    with pytest.raises(Exception, match="boom: the database refused"):
        await engine.sync("school", "students", batch)
    assert await stored(engine) == before
    report = await engine.sync("school", "students", [student(str(3000 + i), Status="Freeze") for i in range(10)])
    assert report.summary["UPDATED"] == 2 and report.summary["NEW"] == 8
    assert await count_rows(engine.database, "students") == 10
