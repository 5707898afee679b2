"""Alembic owns the schema: the committed migrations match entities.yaml, and a new entity is
an edit of the YAML plus a generated migration, with no Python."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from syncengine import migrate
from syncengine.config import Settings
from syncengine.descriptors import load_catalog
from syncengine.engine import SyncEngine
from syncengine.store import open_database
from syncengine.tables import build_metadata
from tests.conftest import ENTITIES, ROOT, Databases

ATTENDANCE = """
  attendances:
    source: BTEC_Attendance
    singular: attendance
    version_field: Modified_Time
    fields:
      session_date: {from: Session_Date, type: date, required: true}
      present: {from: Present, type: boolean, default: false}
      minutes_late: {from: Minutes_Late, type: integer, min: 0}
      checked_in_at: {from: Checked_In_At, type: datetime}
      tags: {from: Tags, type: multichoice, choices: [Excused, Online, Makeup]}
      note: {from: Note, type: text, transform: [trim]}
      student: {from: Student, type: lookup, entity: students, required: true}
      class: {from: Class, type: lookup, entity: classes, required: true}
"""


async def schema_diff(url: str, entities: Path) -> list[Any]:
    """What Alembic would change to make the database match the descriptors."""
    metadata = build_metadata(load_catalog(entities))
    database = open_database(url)

    def compare(conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, _: kind != "table" or name in metadata.tables,
            },
        )
        return list(compare_metadata(context, metadata))

    async with database.connect() as conn:
        diff = await conn.run_sync(compare)
    await database.dispose()
    return diff


async def test_committed_migrations_match_entities_yaml(databases: Databases, dialect: str) -> None:
    url = await databases.fresh_url(dialect)
    settings = Settings(database_url=url, entities=ENTITIES, migrations=ROOT / "migrations")
    await asyncio.to_thread(migrate.upgrade, settings)
    assert await schema_diff(url, ENTITIES) == [], "entities.yaml changed: run `syncengine db revision -m ...`"
    database = open_database(url)
    assert await migrate.current(database) == migrate.head(settings)
    await database.dispose()


async def test_a_tenth_entity_needs_only_yaml_and_a_generated_migration(
    databases: Databases, dialect: str, project_copy: Callable[[], Path]
) -> None:
    entities = project_copy()
    url = await databases.fresh_url(dialect)
    settings = Settings(database_url=url, entities=entities)
    await asyncio.to_thread(migrate.upgrade, settings)

    entities.write_text(entities.read_text() + ATTENDANCE)
    assert [change[0] for change in await schema_diff(url, entities)] == ["add_table"]
    path = await asyncio.to_thread(migrate.revision, settings, "add attendances")
    assert path is not None and path.parent == entities.parent / "migrations" / "versions"
    assert "op.create_table('attendances'" in path.read_text()
    await asyncio.to_thread(migrate.upgrade, settings)
    assert await schema_diff(url, entities) == []

    engine = SyncEngine.open(settings)
    try:
        await engine.sync("school", "programs", [{"id": "1", "Product_Name": "HND"}])
        await engine.sync(
            "school", "students", [{"id": "2", "First_Name": "A", "Last_Name": "B", "Academic_Email": "a@b.edu"}]
        )
        await engine.sync("school", "classes", [{"id": "3", "Class_Name": "C", "BTEC_Program": "1"}])
        record = {
            "id": "9", "Session_Date": "2026-03-02", "Minutes_Late": "5", "Checked_In_At": "2026-03-02T09:05:00+03:00",
            "Tags": "Online;Makeup", "Note": "  bus  ", "Student": {"id": "2", "name": "A B"}, "Class": "3",
        }  # fmt: skip
        first = await engine.sync("school", "attendances", [record, {**record, "id": "10", "Student": "404"}])
        assert [r.status for r in first.results] == ["NEW", "SKIPPED"]
        assert first.results[1].reason == "student_not_synced_yet"
        second = await engine.sync(
            "school", "attendances", [{**record, "Present": "true", "Tags": ["Online", "Makeup"]}]
        )
        assert second.to_builtins()["results"][0] == {
            "zoho_attendance_id": "9",
            "status": "UPDATED",
            "message": "updated Present",
            "changes": {"Present": [False, True]},
        }
    finally:
        await engine.close()
