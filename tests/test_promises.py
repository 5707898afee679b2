"""Promises of README.md that no other test held (issue 13, items 1 and 9), on SQLite and
PostgreSQL: each test fails if its promise breaks (the report of issue 13 says which edit of the
code each one caught).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.engine import SyncEngine
from syncengine.tables import OUTBOX
from tests.conftest import count_rows
from tests.records import class_, program, student
from tests.service import Api, running_api, statuses

#: A day after `tests.records.MODIFIED`, the version of the records the factories make.
LATER = "2026-02-11T09:15:42+03:00"


async def row(engine: SyncEngine, table: str, zoho_id: str, tenant: str = "school") -> dict[str, Any]:
    """Every column of one stored row."""
    query = sa.text(f"SELECT * FROM {table} WHERE tenant_id = :tenant AND zoho_id = :zoho_id")
    async with engine.database.connect() as conn:
        return dict((await conn.execute(query, {"tenant": tenant, "zoho_id": zoho_id})).one()._mapping)


def statuses_of(report: Any) -> list[str]:
    return [result.status for result in report.results]


async def local_id(engine: SyncEngine, table: str, zoho_id: str, tenant: str = "school") -> int:
    return int((await row(engine, table, zoho_id, tenant))["id"])


# 1a. An UPDATED reports a changed lookup and relinks the row to the new parent.


async def test_an_update_of_a_lookup_reports_it_and_relinks_the_row(engine: SyncEngine) -> None:
    await engine.sync("school", "programs", [program("1001"), program("1002")])
    await engine.sync("school", "classes", [class_("4001", program_id="1001")])
    assert (await row(engine, "classes", "4001"))["program_id"] == await local_id(engine, "programs", "1001")

    moved = await engine.sync(
        "school", "classes", [class_("4001", BTEC_Program={"id": "1002", "name": "Other"}, Modified_Time=LATER)]
    )
    assert moved.to_builtins()["results"] == [
        {
            "zoho_class_id": "4001",
            "status": "UPDATED",
            "message": "updated BTEC_Program",
            "changes": {"BTEC_Program": ["1001", "1002"]},
        }
    ]
    stored = await row(engine, "classes", "4001")
    assert (stored["program_zoho_id"], stored["program_id"]) == ("1002", await local_id(engine, "programs", "1002"))


# 1b. An INVALID update of a stored record writes nothing and queues nothing.


async def test_an_invalid_update_of_a_stored_record_writes_and_queues_nothing(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001")])
    before, queued = await row(engine, "students", "3001"), await count_rows(engine.database, OUTBOX)

    # A later version, a good change and a bad one: none of it may land.
    bad = student("3001", Status="Freeze", Phone_Number="+90 555", Academic_Email="nope", Modified_Time=LATER)
    report = await engine.sync("school", "students", [bad])
    assert statuses_of(report) == ["INVALID"]
    assert report.to_builtins()["results"][0]["errors"] == [
        {"field": "Academic_Email", "message": "'nope' is not an email address: expected name@domain.tld"}
    ]
    assert await row(engine, "students", "3001") == before  # values, fingerprint, version, updated_at
    assert await count_rows(engine.database, OUTBOX) == queued


# 1c. Lookups one tenant resolved never serve another tenant, the process's cache included.


async def test_a_parent_one_tenant_resolved_never_serves_another(engine: SyncEngine) -> None:
    await engine.sync("north", "programs", [program("1001")])
    assert statuses_of(await engine.sync("north", "classes", [class_("4001")])) == ["NEW"]  # 1001 now remembered
    assert engine.lookups.ids("north", "programs") == {"1001": await local_id(engine, "programs", "1001", "north")}

    skipped = (await engine.sync("south", "classes", [class_("4001")])).to_builtins()["results"][0]
    assert (skipped["status"], skipped["reason"]) == ("SKIPPED", "program_not_synced_yet")
    assert await count_rows(engine.database, "classes", "south") == 0

    await engine.sync("south", "programs", [program("1001", Product_Name="South's own")])
    assert statuses_of(await engine.sync("south", "classes", [class_("4001")])) == ["NEW"]
    south = await local_id(engine, "programs", "1001", "south")
    assert south != await local_id(engine, "programs", "1001", "north")
    assert (await row(engine, "classes", "4001", "south"))["program_id"] == south
    # And a second child of the south, resolved from the cache this time, links to the south too.
    assert statuses_of(await engine.sync("south", "classes", [class_("4002")])) == ["NEW"]
    assert (await row(engine, "classes", "4002", "south"))["program_id"] == south
    assert (await row(engine, "classes", "4001", "north"))["program_id"] != south


# 1e. A patch without a version keeps the stored version.


async def test_a_patch_without_a_version_keeps_the_stored_version(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001", Phone_Number="+90 555", Modified_Time=LATER)])
    before = await engine.fetch_record("school", "students", "3001")
    assert before is not None

    patch = await engine.sync("school", "students", [{"id": "3001", "Status": "Freeze"}])
    assert patch.to_builtins()["results"][0]["changes"] == {"Status": ["Active", "Freeze"]}
    after = await engine.fetch_record("school", "students", "3001")
    assert after is not None
    assert after["source_version"] == before["source_version"]
    assert after["values"] == before["values"] | {"Status": "Freeze"}  # the rest as it was
    # The kept version still guards the record: an older full record is stale.
    older = student("3001", Status="Active", Modified_Time="2026-02-10T09:15:42+03:00")
    assert (await engine.sync("school", "students", [older])).results[0].reason == "stale_update"


# Over HTTP: 1d (idempotent answers per tenant) and item 9 (numbers out of range).


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine) as api:
        yield api


async def test_an_idempotent_answer_replays_only_to_its_tenant_and_another_cannot_overwrite_it(api: Api) -> None:
    headers = {"Idempotency-Key": "K"}
    first = await api.sync("programs", [program("1001")], headers=headers)
    assert statuses(first) == ["NEW"]

    # The other tenant, the same key, another body: run afresh for it, not a 422, not a replay.
    theirs = await api.sync("programs", [program("1002"), program("1003")], tenant="other", headers=headers)
    assert theirs.status_code == 200 and "idempotent-replayed" not in theirs.headers
    assert [r["zoho_program_id"] for r in theirs.json()["results"]] == ["1002", "1003"]
    assert statuses(theirs) == ["NEW", "NEW"]
    assert await count_rows(api.engine.database, "programs", "other") == 2

    # The first tenant's answer is as it was, and the key is still bound to its first body.
    replay = await api.sync("programs", [program("1001")], headers=headers)
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == first.content
    reused = await api.sync("programs", [program("1002"), program("1003")], headers=headers)
    assert reused.status_code == 422
    assert await count_rows(api.engine.database, "programs", "school") == 1
    # And the other tenant's replay is its own.
    again = await api.sync("programs", [program("1002"), program("1003")], tenant="other", headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.content == theirs.content


HUGE_INTEGER = "9" * 5000
#: (a record as JSON text, with a number no column can hold, its field, the exact message)
OUT_OF_RANGE = [
    pytest.param(
        '{"id": "1", "Product_Name": "P", "Program_Price": 1e400}',
        "Program_Price",
        "the number 1E+400 is too large (at most 14 digits before the point)",
        id="decimal-1e400",
    ),
    pytest.param(
        '{"id": "1", "Product_Name": "P", "Program_Price": -1e400}',
        "Program_Price",
        "the number -1E+400 is too large (at most 14 digits before the point)",
        id="decimal-minus-1e400",
    ),
    pytest.param(
        '{"id": "1", "Product_Name": "P", "Program_Price": 1e-400}',
        "Program_Price",
        "the number 1E-400 has more than 4 decimal places",
        id="decimal-1e-400",
    ),
    pytest.param(
        f'{{"id": "1", "Product_Name": "P", "Program_Price": {HUGE_INTEGER}}}',
        "Program_Price",
        "an integer beyond 64 bits is too large (at most 14 digits before the point)",
        id="decimal-5000-digits",
    ),
    pytest.param(
        f'{{"id": "1", "Product_Name": "P", "MoodleID": {HUGE_INTEGER}}}',
        "MoodleID",
        "is out of range (a 64-bit integer)",
        id="integer-5000-digits",
    ),
    pytest.param(
        f'{{"id": "1", "Product_Name": "P", "MoodleID": -{HUGE_INTEGER}}}',
        "MoodleID",
        "is out of range (a 64-bit integer)",
        id="integer-minus-5000-digits",
    ),
    pytest.param(
        '{"id": "1", "Product_Name": "P", "MoodleID": 1e400}',
        "MoodleID",
        "1E+400 is out of range (a 64-bit integer)",
        id="integer-1e400",
    ),
]
GOOD = '{"id": "2", "Product_Name": "Q", "Program_Price": 4500.50, "MoodleID": 7}'


@pytest.mark.parametrize("shape", ["array", "envelope", "object"])
@pytest.mark.parametrize(("bad", "field", "message"), OUT_OF_RANGE)
async def test_a_number_out_of_range_is_its_record_s_invalid_never_the_batch_s_error(
    api: Api, shape: str, bad: str, field: str, message: str
) -> None:
    body = {"array": f"[{bad}, {GOOD}]", "envelope": f'{{"data": [{bad}, {GOOD}], "info": {{}}}}', "object": bad}
    response = await api.http.post(
        "/v1/sync/programs", content=body[shape].encode(), headers=api.auth() | {"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0] == {
        "zoho_program_id": "1",
        "status": "INVALID",
        "message": f"1 field error: {field} {message}",
        "errors": [{"field": field, "message": message}],
    }
    assert await api.engine.fetch_record("school", "programs", "1") is None
    if shape != "object":
        assert statuses(response) == ["INVALID", "NEW"]
        stored = await api.engine.fetch_record("school", "programs", "2")
        assert stored is not None and (stored["values"]["Program_Price"], stored["values"]["MoodleID"]) == (
            Decimal("4500.5"),
            7,
        )
