"""The exact message of each strict value rule (issue 13, item 7), through the pipeline on SQLite
and PostgreSQL, and over HTTP for a form body.

Each message says what is wrong with the value and what was expected; the record is INVALID,
names its field, and the good record beside it in the same batch is applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from syncengine.engine import SyncEngine
from tests.records import class_, program, student
from tests.service import Api, running_api

DATE = "expected a date as YYYY-MM-DD, got {!r}"
INTEGER = "expected an integer (ASCII digits), got {!r}"
HIDDEN = (
    "{!r} contains a control or invisible character (U+{:04X}): expected an email address (name@domain.tld) without one"
)

#: (entity, record, its Zoho field, the exact message)
RULES = [
    pytest.param(
        "students", student("1", Birth_Date="2026-W01-1"), "Birth_Date", DATE.format("2026-W01-1"), id="iso-week-date"
    ),
    pytest.param(
        "students", student("1", Birth_Date="20260210"), "Birth_Date", DATE.format("20260210"), id="basic-date"
    ),
    pytest.param(
        "students", student("1", Birth_Date="2026-02-30"), "Birth_Date", DATE.format("2026-02-30"), id="no-such-day"
    ),
    pytest.param(
        "students",
        student("1", Phone_Number=15),
        "Phone_Number",
        "expected text (a JSON string), got the number 15",
        id="number-for-string",
    ),
    pytest.param(
        "programs",
        program("1", Product_Name="   "),
        "Product_Name",
        "is required: expected text, got only spaces",
        id="required-string-of-spaces",
    ),
    # With `transform: [trim]`, spaces are trimmed to nothing first: the field is then empty.
    pytest.param(
        "students", student("1", First_Name="  \t "), "First_Name", "is required", id="required-trimmed-spaces"
    ),
    pytest.param("programs", program("1", MoodleID="١٢٣"), "MoodleID", INTEGER.format("١٢٣"), id="arabic-indic-digits"),
    pytest.param(
        "programs", program("1", MoodleID="1_000"), "MoodleID", INTEGER.format("1_000"), id="underscore-digits"
    ),
    pytest.param("programs", program("1", MoodleID="1.5"), "MoodleID", INTEGER.format("1.5"), id="fraction-text"),
    pytest.param(
        "programs",
        program("1", MoodleID=True),
        "MoodleID",
        "expected an integer, got a boolean",
        id="boolean-for-integer",
    ),
    pytest.param(
        "programs",
        program("1", MoodleID="99999999999999999999"),
        "MoodleID",
        "99999999999999999999 is out of range (a 64-bit integer)",
        id="integer-out-of-range",
    ),
    pytest.param(
        "programs",
        program("1", Program_Price="4500,50"),
        "Program_Price",
        "expected a number such as 4500.50 (ASCII digits, a point), got '4500,50'",
        id="decimal-comma",
    ),
    pytest.param(
        "programs",
        program("1", Program_Price="1.00001"),
        "Program_Price",
        "'1.00001' has more than 4 decimal places",
        id="decimal-scale",
    ),
    pytest.param(
        "programs",
        program("1", Program_Price="123456789012345"),
        "Program_Price",
        "'123456789012345' is too large (at most 14 digits before the point)",
        id="decimal-precision",
    ),
    pytest.param(
        "students",
        student("1", Academic_Email="a@b.c"),
        "Academic_Email",
        "'a@b.c' is not an email address: expected name@domain.tld",
        id="email-one-letter-tld",
    ),
    pytest.param(
        "students",
        student("1", Academic_Email="a\x01b@school.edu"),
        "Academic_Email",
        HIDDEN.format("a\x01b@school.edu", 0x01),
        id="email-control-character",
    ),
    pytest.param(
        "students",
        student("1", Academic_Email="ab\u202e@school.edu"),
        "Academic_Email",
        HIDDEN.format("ab\u202e@school.edu", 0x202E),
        id="email-right-to-left-override",
    ),
    pytest.param(
        "students",
        student("1", Status="active"),
        "Status",
        "'active' is not one of 'Pending', 'Passive', 'Enrollment Form', 'Approved', 'Approved-conditional', "
        "'Active', 'Freeze'",
        id="choice-case",
    ),
    pytest.param(
        "students",
        student("1", Modified_Time="2026-02-10T09:15:42"),
        "Modified_Time",
        "'2026-02-10T09:15:42' has no UTC offset; send it as 2026-02-10T09:15:42+03:00",
        id="datetime-without-offset",
    ),
    pytest.param(
        "students",
        student("1", Program={"id": "1\u200b"}),
        "Program",
        "a record id cannot contain a control or invisible character (U+200B)",
        id="lookup-invisible-id",
    ),
    # {"id": "-None-"} is the empty lookup: for a required one, a missing value.
    pytest.param(
        "classes", class_("1", BTEC_Program={"id": "-None-"}), "BTEC_Program", "is required", id="lookup-none"
    ),
]


@pytest.mark.parametrize(("entity", "record", "field", "message"), RULES)
async def test_each_strict_rule_has_its_exact_message(
    engine: SyncEngine, entity: str, record: dict[str, Any], field: str, message: str
) -> None:
    good = program("2") if entity == "programs" else student("2")
    if entity == "classes":
        await engine.sync("school", "programs", [program("1001")])
        good = class_("2")
    report = (await engine.sync("school", entity, [record, good])).to_builtins()
    assert [r["status"] for r in report["results"]] == ["INVALID", "NEW"]
    assert report["results"][0]["errors"] == [{"field": field, "message": message}]
    assert report["results"][0]["message"] == f"1 field error: {field} {message}"


async def test_an_object_with_the_none_id_is_the_empty_lookup_as_the_bare_placeholder_is(engine: SyncEngine) -> None:
    await engine.sync("school", "programs", [program("1001")])
    assert [r.status for r in (await engine.sync("school", "students", [student("1", Program="1001")])).results] == [
        "NEW"
    ]
    cleared = (await engine.sync("school", "students", [student("1", Program={"id": "-None-", "name": ""})])).results[0]
    assert (cleared.status, cleared.changes) == ("UPDATED", {"Program": ["1001", None]})
    bare = (await engine.sync("school", "students", [student("1", Program="-None-")])).results[0]
    assert bare.status == "UNCHANGED"
    async with engine.database.connect() as conn:
        row = (await conn.execute(sa.text("SELECT program_zoho_id, program_id FROM students"))).one()
    assert tuple(row) == (None, None)


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine) as api:
        yield api


async def test_a_form_field_that_is_not_utf8_is_a_400_naming_the_field(api: Api) -> None:
    response = await api.http.post(
        "/v1/sync/students",
        content=b"zoho_id=3001&First_Name=Ay%C5%9Fe&Last_Name=%FF%FE&Academic_Email=s%40school.edu",
        headers=api.auth() | {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.json() == {
        "status": "error",
        "status_code": 400,
        "error": "invalid_body",
        "message": "malformed form body: the field 'Last_Name' is not UTF-8 (byte 0xFF at 0, after %-decoding); "
        "send the form as UTF-8",
    }
    assert await api.engine.fetch_record("school", "students", "3001") is None
