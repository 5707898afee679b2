"""The write seam: an entity compiled once (its fetched row's named positions), and `Store.write`
taking a sequence of row sets that each say how they are written, on both databases."""

from __future__ import annotations

import datetime as dt

import pytest

from syncengine.compiled import OUTBOX_COLUMNS
from syncengine.decisions import Decisions
from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from syncengine.store import Rows, RowsChanged, Write
from tests.conftest import count_rows
from tests.records import student

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def test_the_fetched_rows_named_positions_are_its_columns(catalog: Catalog, engine: SyncEngine) -> None:
    for entity in catalog:
        compiled = engine.compiled[entity.name]
        columns, layout = [column.name for column in compiled.fetch_columns], compiled.layout
        named = [columns[layout.zoho_id], columns[layout.fingerprint], columns[layout.version]]
        assert [*named, columns[layout.deleted_at]] == ["zoho_id", "fingerprint", "source_version", "deleted_at"]
        assert columns[layout.values] == [f.value_column for f in entity.fields]
        assert columns[layout.links] == [f"{f.name}_id" for f in entity.lookups]
        for (target, value, link), fld in zip(compiled.link_positions, entity.lookups, strict=True):
            assert (target, columns[value], columns[link]) == (fld.target, fld.value_column, f"{fld.name}_id")


async def test_every_row_set_is_written_and_empty_ones_are_skipped(engine: SyncEngine) -> None:
    compiled = engine.compiled["students"]
    queued = [("school", "students", zoho_id, "upsert", NOW, NOW) for zoho_id in ("1", "2", "3")]
    async with engine.store.transaction(engine.database) as conn:
        await engine.store.write(
            conn,
            [
                Rows(Write.INSERT, compiled.outbox, OUTBOX_COLUMNS, queued[:1]),
                Rows(Write.UPDATE, compiled.table, compiled.row_names, [], []),
                Rows(Write.INSERT, compiled.outbox, OUTBOX_COLUMNS, queued[1:]),
            ],
        )
    assert await count_rows(engine.database, "syncengine_outbox") == 3


@pytest.mark.parametrize("stale", [False, True], ids=["at-version", "changed-since"])
async def test_each_update_set_is_checked_against_its_versions(engine: SyncEngine, stale: bool) -> None:
    """Two sets of updates in one write: a row of either that is no longer at the version
    fetched fails the write (PostgreSQL; SQLite's writers take turns, nothing changes)."""
    await engine.sync("school", "students", [student("3001"), student("3002")])
    compiled = engine.compiled["students"]
    async with engine.store.transaction(engine.database, rollback=True) as conn:
        fetched = await engine.pipeline.fetch(
            conn,
            compiled,
            "school",
            engine.compiled["students"].parser.parse_all(
                [student("3001", Status="Freeze"), student("3002", Status="Freeze")]
            ),
        )
        decisions = Decisions(compiled, fetched.state, {"programs": {}}, "school", NOW)
        assert [decisions.apply(record).status for record in fetched.incoming] == ["UPDATED", "UPDATED"]
        _, updates, _ = decisions.take(None, 0)
        assert updates.write is Write.UPDATE and updates.versions is not None and len(updates.values) == 2
        second_version = 1 if stale and engine.database.dialect.name == "postgresql" else updates.versions[1]
        row_sets = [
            Rows(Write.UPDATE, compiled.table, compiled.row_names, updates.values[:1], updates.versions[:1]),
            Rows(Write.UPDATE, compiled.table, compiled.row_names, updates.values[1:], [second_version]),
        ]
        if stale and engine.database.dialect.name == "postgresql":
            with pytest.raises(RowsChanged, match="rows of students changed after this transaction fetched them"):
                await engine.store.write(conn, row_sets)
        else:
            await engine.store.write(conn, row_sets)
