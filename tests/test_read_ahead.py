"""Records parsed while the database locks and fetches their ids, read ahead of the parser: from
dicts (the Python API, one object, a form) and from JSON text (the records of an array or an
envelope)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from syncengine.parsing import Parser, parse_records
from syncengine.payloads import parse_body
from syncengine.pipeline import Unparsed, read_ahead, sync_batch
from syncengine.report import FieldError
from tests.conftest import count_rows
from tests.records import student

ID_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False),
    st.sampled_from(["3001", " 3001 ", "\t3001", "", " ", "30\x0001", "9" * 64, "9" * 65, "-None-"]),
    st.text(max_size=70),
    st.just({"id": "3001"}),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={"id": ID_VALUES, "zoho_id": ID_VALUES}), max_size=6))
def test_the_ids_read_ahead_hold_every_id_the_parser_reads(catalog: Catalog, heads: list[dict[str, Any]]) -> None:
    """Whatever shape an id comes in, the batch locks and fetches every id its records parse to."""
    entity = catalog.entity("students")
    without_id = {key: value for key, value in student().items() if key != "id"}
    records = [without_id | head for head in heads]
    read = read_ahead(Parser(entity), records)
    assert isinstance(read, Unparsed)
    parsed = {record.zoho_id for record in parse_records(entity, records) if record.zoho_id is not None}
    assert parsed <= read.ids


@settings(max_examples=400, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={"id": ID_VALUES, "zoho_id": ID_VALUES}), max_size=6))
def test_the_ids_read_ahead_of_json_text_hold_every_id_the_parser_reads(
    catalog: Catalog, heads: list[dict[str, Any]]
) -> None:
    """The records of an array or an envelope are JSON text: only their ids are decoded ahead, and
    they hold every id the records parse to."""
    entity = catalog.entity("students")
    without_id = {key: value for key, value in student().items() if key != "id"}
    records = [msgspec.Raw(msgspec.json.encode(without_id | head)) for head in heads]
    read = read_ahead(Parser(entity), records)
    assert isinstance(read, Unparsed)
    parsed = {record.zoho_id for record in parse_records(entity, records) if record.zoho_id is not None}
    assert parsed <= read.ids


@pytest.mark.parametrize(
    "body",
    [
        b'[{"id": "3001", "Status": "Active"}, {"id": 3002}, 7, {"zoho_id": " 3003 "}]',
        b'{"data": [{"id": "3001", "Status": "Active"}, {"id": 3002}, 7, {"zoho_id": " 3003 "}], "info": {}}',
    ],
    ids=["array", "envelope"],
)
def test_the_records_of_an_array_or_an_envelope_are_read_ahead(catalog: Catalog, body: bytes) -> None:
    entity = catalog.entity("students")
    read = read_ahead(Parser(entity), parse_body(body, "application/json", entity))
    assert isinstance(read, Unparsed) and read.ids == {"3001", "3002", "3003"} and len(read.records) == 4


def test_records_that_are_not_all_objects_are_parsed_at_once(catalog: Catalog) -> None:
    entity = catalog.entity("students")
    read = read_ahead(Parser(entity), [student("3001"), msgspec.Raw(b'{"id": "3002"}')])
    assert isinstance(read, list) and [record.zoho_id for record in read] == ["3001", "3002"]
    read = read_ahead(Parser(entity), iter([student("3001"), student("3002")]))  # an iterator is read once
    assert isinstance(read, Unparsed) and read.ids == {"3001", "3002"} and len(read.records) == 2


@pytest.mark.parametrize("hint", [set(), {"3001"}, {"3002", "9999"}], ids=["none", "some", "others"])
async def test_ids_missing_from_the_hint_are_locked_and_fetched_after_parsing(
    engine: SyncEngine, hint: set[str]
) -> None:
    """Should the ids read ahead ever miss one the parser reads, it is locked and fetched then:
    a stored record is still UPDATED, never inserted a second time."""
    await engine.sync("school", "students", [student("3001"), student("3002")])
    tables = engine.compiled["students"]
    records = [student("3001", Status="Freeze"), student("3002"), student("3003")]
    async with engine.store.transaction(engine.database) as conn:
        report = await sync_batch(conn, engine.store, tables, "school", Unparsed(records, hint), engine.lookups)
    assert [result.status for result in report.results] == ["UPDATED", "UNCHANGED", "NEW"]
    assert await count_rows(engine.database, "students") == 3


@pytest.mark.parametrize("size", [1, 120, 450])
async def test_a_generator_of_records_is_synced_like_a_list(engine: SyncEngine, size: int) -> None:
    records = [student(str(5000 + i)) for i in range(size)]
    report = await engine.sync("school", "students", (record for record in records))
    assert report.summary["NEW"] == size
    again = await engine.sync("school", "students", records, dry_run=True)
    assert again.summary["UNCHANGED"] == size and again.to_builtins()["dry_run"] is True


async def test_the_records_of_a_json_body_are_synced_as_dicts_are(engine: SyncEngine) -> None:
    """Read ahead from their JSON text, stored records are UPDATED, never inserted a second time;
    text that is not an object is INVALID, saying so."""
    await engine.sync("school", "students", [student("3001")])
    body = msgspec.json.encode({"data": [student("3001", Status="Freeze"), student("3002"), 7]})
    report = await engine.sync("school", "students", parse_body(body, "application/json"))
    assert [result.status for result in report.results] == ["UPDATED", "NEW", "INVALID"]
    assert report.results[2].errors == [FieldError("(record)", "expected a JSON object, got int")]
    assert await count_rows(engine.database, "students") == 2
