"""One value, many spellings: a record sent again in another spelling of the same values is
UNCHANGED, queues no delivery and leaves its row as it was (issue 13, item 4).

For each field type, on SQLite and PostgreSQL, a table of spellings of one value: the first
makes the record NEW, each other one is UNCHANGED with the outbox and the stored row (values,
fingerprint, timestamps) exactly as before; then the same from the last spelling back. Records go
in as Python values and as JSON text (`msgspec.Raw`, as a body's records arrive), since JSON
numbers read as Decimal, not float. And the guard on its own: a row whose fingerprint was made
before its values were normalised, sent again with the same values, is UNCHANGED, no delivery.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from syncengine.descriptors import parse_catalog
from syncengine.engine import SyncEngine
from syncengine.tables import OUTBOX
from tests.conftest import Databases, count_rows

CATALOG = parse_catalog(
    """
version: 1
entities:
  values:
    source: Values
    singular: value
    fields:
      count: {from: Count, type: integer}
      price: {from: Price, type: decimal}
      flag: {from: Flag, type: boolean}
      moment: {from: Moment, type: datetime}
      tags: {from: Tags, type: multichoice, choices: [a, b]}
      email: {from: Email, type: email, transform: [trim]}
    moodle:
      kind: category
      params: {idnumber: "{zoho_id}", name: "{email}"}
"""
)
TENANT = "school"

#: (field, spellings of one value): every spelling must leave the record UNCHANGED after any other.
SPELLINGS = [
    pytest.param("Count", [15, "15", "+15", 15.0, "015"], id="integer"),
    pytest.param("Price", ["4500.50", 4500.5, "4500.5000", Decimal("4500.500"), "+4500.5"], id="decimal"),
    pytest.param("Price", ["0", "-0", 0, "0.0000", -0.0, "-0.00"], id="decimal-zero"),
    pytest.param("Price", ["12", 12, 12.0, "12.000", "12.0"], id="decimal-whole"),
    pytest.param("Flag", [True, "true", 1, " TRUE "], id="boolean-true"),
    pytest.param("Flag", [False, "false", 0], id="boolean-false"),
    pytest.param(
        "Moment",
        ["2026-02-10T09:15:42+03:00", "2026-02-10T06:15:42Z", "2026-02-10T04:15:42-02:00", "2026-02-10T09:15:42+0300"],
        id="datetime-offsets",
    ),
    pytest.param("Tags", ["a;b", ["a", "b"], "a;b;-None-", ["a", "", "b"]], id="multichoice"),
    pytest.param("Email", ["x@school.edu", "x@school.edu  ", "  x@school.edu", "\tx@school.edu\n"], id="email-trim"),
]


@pytest.fixture
async def engine(databases: Databases, dialect: str) -> SyncEngine:
    return SyncEngine(CATALOG, await databases.create(dialect, CATALOG))


def record(zoho_id: str, field: str, value: Any, as_json: bool) -> Any:
    raw = {"id": zoho_id, field: value}
    return msgspec.Raw(msgspec.json.encode(raw)) if as_json else raw


@pytest.mark.parametrize("as_json", [False, True], ids=["python", "json"])
@pytest.mark.parametrize(("field", "spellings"), SPELLINGS)
async def test_another_spelling_of_the_same_value_is_unchanged(
    engine: SyncEngine, field: str, spellings: list[Any], as_json: bool
) -> None:
    for zoho_id, order in (("1", spellings), ("2", spellings[::-1])):
        (first,) = (await engine.sync(TENANT, "values", [record(zoho_id, field, order[0], as_json)])).results
        assert first.status == "NEW", first
        before = await engine.fetch_record(TENANT, "values", zoho_id)
        queued = await count_rows(engine.database, OUTBOX)
        for spelling in order[1:]:
            (again,) = (await engine.sync(TENANT, "values", [record(zoho_id, field, spelling, as_json)])).results
            assert (again.status, again.message, again.changes) == ("UNCHANGED", "no change", None), (spelling, again)
            assert await count_rows(engine.database, OUTBOX) == queued, f"{spelling!r} queued a delivery"
            assert await engine.fetch_record(TENANT, "values", zoho_id) == before, f"{spelling!r} rewrote the row"


async def test_a_change_that_changes_no_field_is_unchanged_and_queues_nothing(engine: SyncEngine) -> None:
    """The guard alone: a row fingerprinted before its values were normalised (here, a
    fingerprint of another value) differs from a new fingerprint of the same values; the record
    is still UNCHANGED, with no changes and no delivery."""
    sent = {"id": "1", "Count": 15, "Price": "4500.5", "Flag": True, "Tags": ["a"], "Email": "x@school.edu"}
    assert [r.status for r in (await engine.sync(TENANT, "values", [sent])).results] == ["NEW"]
    async with engine.database.begin() as conn:
        await conn.execute(sa.text("UPDATE \"values\" SET fingerprint = 'made-before-normalising'"))
    queued = await count_rows(engine.database, OUTBOX)
    (again,) = (await engine.sync(TENANT, "values", [sent])).results
    assert (again.status, again.message, again.changes) == ("UNCHANGED", "no change", None)
    assert await count_rows(engine.database, OUTBOX) == queued
