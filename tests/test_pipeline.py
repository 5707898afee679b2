"""The pipeline on real databases: every status, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
from decimal import Decimal
from typing import Any, cast

import msgspec
import pytest
import sqlalchemy as sa

from syncengine.descriptors import parse_catalog
from syncengine.engine import SyncEngine
from syncengine.fingerprints import fingerprint
from syncengine.parsing import parse_record
from syncengine.report import SyncReport
from tests.conftest import Databases, count_rows
from tests.records import EVERY_TYPE_YAML, class_, enrollment, program, student, teacher


def statuses(report: SyncReport) -> list[str]:
    return [result.status for result in report.results]


def result(report: SyncReport, index: int = 0) -> dict[str, Any]:
    return cast(dict[str, Any], report.to_builtins()["results"][index])


async def seed(engine: SyncEngine, tenant: str = "school") -> None:
    """A program, a student and a class: what an enrollment needs."""
    assert statuses(await engine.sync(tenant, "programs", [program("1001")])) == ["NEW"]
    assert statuses(await engine.sync(tenant, "students", [student("3001")])) == ["NEW"]
    assert statuses(await engine.sync(tenant, "classes", [class_("4001")])) == ["NEW"]


async def test_new_unchanged_updated(engine: SyncEngine) -> None:
    first = await engine.sync("school", "students", [student("3001")])
    assert result(first) == {"zoho_student_id": "3001", "status": "NEW", "message": "created"}

    again = await engine.sync("school", "students", [student("3001")])
    assert result(again) == {"zoho_student_id": "3001", "status": "UNCHANGED", "message": "no change"}

    changed = await engine.sync("school", "students", [student("3001", Status="Freeze", Birth_Date="2001-04-12")])
    assert result(changed) == {
        "zoho_student_id": "3001",
        "status": "UPDATED",
        "message": "updated Birth_Date, Status",
        "changes": {"Birth_Date": [None, "2001-04-12"], "Status": ["Active", "Freeze"]},
    }
    assert await count_rows(engine.database, "students") == 1


async def test_invalid_reports_every_field_error_and_writes_nothing(engine: SyncEngine) -> None:
    bad = student(
        "3001",
        First_Name=None,
        Academic_Email="not-an-email",
        Birth_Date="12/04/2001",
        Status="Enrolled",
        Study_Mode=7,
        Modified_Time="yesterday",
    )
    del bad["Last_Name"]
    report = await engine.sync("school", "students", [bad])
    assert result(report)["status"] == "INVALID"
    assert result(report)["errors"] == [
        {"field": "First_Name", "message": "is required"},
        {"field": "Last_Name", "message": "is required"},
        {"field": "Academic_Email", "message": "'not-an-email' is not an email address: expected name@domain.tld"},
        {"field": "Birth_Date", "message": "expected a date as YYYY-MM-DD, got '12/04/2001'"},
        {
            "field": "Status",
            "message": "'Enrolled' is not one of 'Pending', 'Passive', 'Enrollment Form', 'Approved', "
            "'Approved-conditional', 'Active', 'Freeze'",
        },
        {"field": "Study_Mode", "message": "expected one of 'Onsite', 'Online', 'Blended', got the number 7"},
        {
            "field": "Modified_Time",
            "message": "expected a date-time with an offset, as 2026-02-10T09:15:42+03:00, got 'yesterday'",
        },
    ]
    assert report.results[0].message.startswith("7 field errors: First_Name is required; Last_Name is required")
    assert await count_rows(engine.database, "students") == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a string", "expected a JSON object, got str"),
        ([1, 2], "expected a JSON object, got a list"),
        (None, "expected a JSON object, got null"),
        ({"First_Name": "A", "Last_Name": "B", "Academic_Email": "a@b.co"}, None),
    ],
)
async def test_records_that_cannot_be_read_are_invalid(engine: SyncEngine, raw: Any, message: str | None) -> None:
    report = await engine.sync("school", "students", [raw, student("3001")])
    assert statuses(report) == ["INVALID", "NEW"]
    errors = result(report)["errors"]
    if message is None:
        assert errors == [{"field": "id", "message": "missing: every record needs its Zoho record id in 'id'"}]
    else:
        assert errors == [{"field": "(record)", "message": message}]
    assert await count_rows(engine.database, "students") == 1


async def test_missing_required_lookup_is_skipped_until_its_parent_arrives(engine: SyncEngine) -> None:
    skipped = await engine.sync("school", "classes", [class_("4001", program_id="1001")])
    assert result(skipped) == {
        "zoho_class_id": "4001",
        "status": "SKIPPED",
        "message": "BTEC_Program points to program 1001, which is not synced yet for this tenant; "
        "sync that program first, then send this record again",
        "reason": "program_not_synced_yet",
    }
    assert await count_rows(engine.database, "classes") == 0

    await engine.sync("school", "programs", [program("1001")])
    assert statuses(await engine.sync("school", "classes", [class_("4001")])) == ["NEW"]


async def test_enrollment_names_the_missing_student(engine: SyncEngine) -> None:
    await engine.sync("school", "programs", [program("1001")])
    await engine.sync("school", "classes", [class_("4001")])
    report = await engine.sync("school", "enrollments", [enrollment("5001", student_id="3999")])
    assert result(report)["reason"] == "student_not_synced_yet"
    assert "student 3999" in result(report)["message"]


async def test_optional_lookup_is_stored_even_when_its_target_is_missing(engine: SyncEngine) -> None:
    report = await engine.sync("school", "students", [student("3001", Program={"id": "1001", "name": "X"})])
    assert statuses(report) == ["NEW"]
    async with engine.database.connect() as conn:
        row = (await conn.execute(sa.text("SELECT program_zoho_id, program_id FROM students"))).one()
    assert tuple(row) == ("1001", None)


async def test_lookup_as_object_or_bare_id_is_the_same_value(engine: SyncEngine) -> None:
    await seed(engine)
    as_object = enrollment("5001", Classes={"id": "4001", "name": "Class"})
    as_bare_id = enrollment("5001", Classes="4001")
    assert statuses(await engine.sync("school", "enrollments", [as_object])) == ["NEW"]
    assert statuses(await engine.sync("school", "enrollments", [as_bare_id])) == ["UNCHANGED"]
    async with engine.database.connect() as conn:
        row = (await conn.execute(sa.text("SELECT student_id, class_id FROM enrollments"))).one()
        ids = (await conn.execute(sa.text("SELECT (SELECT id FROM students), (SELECT id FROM classes)"))).one()
    assert tuple(row) == tuple(ids)


async def test_stale_update_is_skipped_and_the_newer_version_kept(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001", Modified_Time="2026-02-10T09:00:00+03:00")])
    # 05:00 UTC is earlier than 06:00 UTC, whatever the offsets say.
    stale = await engine.sync(
        "school", "students", [student("3001", Status="Freeze", Modified_Time="2026-02-10T07:00:00+02:00")]
    )
    assert result(stale)["reason"] == "stale_update"
    assert result(stale)["message"] == (
        "Modified_Time 2026-02-10T05:00:00+00:00 is older than the stored 2026-02-10T06:00:00+00:00; the newer version is kept"
    )
    same_instant = await engine.sync("school", "students", [student("3001", Modified_Time="2026-02-10T06:00:00Z")])
    assert statuses(same_instant) == ["UNCHANGED"]
    newer = await engine.sync(
        "school", "students", [student("3001", Status="Freeze", Modified_Time="2026-02-11T06:00:00Z")]
    )
    assert statuses(newer) == ["UPDATED"]


async def test_datetimes_with_offsets_are_stored_in_utc(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001", Modified_Time="2026-02-10T09:15:42+03:00")])
    async with engine.database.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT source_version FROM students"))).scalar_one()
    assert str(stored).startswith("2026-02-10 06:15:42")


async def test_none_placeholder_and_empty_strings_mean_empty(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001", Study_Mode="Online")])
    report = await engine.sync("school", "students", [student("3001", Study_Mode="-None-", Email="")])
    assert result(report)["changes"] == {"Study_Mode": ["Online", None]}
    again = await engine.sync("school", "students", [student("3001", Study_Mode=None, Email=None)])
    assert statuses(again) == ["UNCHANGED"]


async def test_fingerprint_sees_case_but_not_unmapped_fields(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001")])
    unmapped = await engine.sync(
        "school", "students", [student("3001", Owner={"id": "9", "name": "Office"}, **{"$state": "save"})]
    )
    assert statuses(unmapped) == ["UNCHANGED"]
    case = await engine.sync("school", "students", [student("3001", Last_Name="YILMAZ")])
    assert result(case)["changes"] == {"Last_Name": ["Yılmaz", "YILMAZ"]}


async def test_absent_fields_keep_their_stored_values(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001", Phone_Number="+90 555")])
    patch = await engine.sync("school", "students", [{"id": "3001", "Status": "Freeze"}])
    assert result(patch)["changes"] == {"Status": ["Active", "Freeze"]}
    async with engine.database.connect() as conn:
        row = (await conn.execute(sa.text("SELECT first_name, phone, status FROM students"))).one()
    assert tuple(row) == ("Ayşe", "+90 555", "Freeze")


async def test_repeated_ids_in_one_batch_apply_in_order(engine: SyncEngine) -> None:
    report = await engine.sync(
        "school",
        "students",
        [
            student("3001"),
            student("3001"),
            student("3001", Status="Freeze"),
            student("3001", Status="Active", Modified_Time="2026-01-01T00:00:00Z"),
            {"id": "3001", "$deleted": True},
            student("3001", Modified_Time="2026-03-01T00:00:00Z"),  # a restore needs a later version
        ],
    )
    assert statuses(report) == ["NEW", "UNCHANGED", "UPDATED", "SKIPPED", "DELETED", "NEW"]
    assert result(report, 2)["changes"] == {"Status": ["Active", "Freeze"]}
    assert result(report, 5)["message"] == "restored: it had been deleted"
    assert await count_rows(engine.database, "students") == 1


async def test_delete_is_soft_and_reported(engine: SyncEngine) -> None:
    await engine.sync("school", "students", [student("3001")])
    deleted = await engine.sync("school", "students", [{"id": "3001", "$deleted": True}])
    assert result(deleted) == {"zoho_student_id": "3001", "status": "DELETED", "message": "deleted"}
    again = await engine.sync(
        "school", "students", [{"id": "3001", "$deleted": True}, {"id": "3999", "$deleted": True}]
    )
    assert [r["reason"] for r in again.to_builtins()["results"]] == ["not_found", "not_found"]
    assert [r.message for r in again.results] == ["already deleted", "not stored for this tenant; nothing to delete"]
    async with engine.database.connect() as conn:
        deleted_at = (await conn.execute(sa.text("SELECT deleted_at FROM students"))).scalar_one()
    assert deleted_at is not None


async def test_a_deleted_parent_no_longer_satisfies_a_lookup(engine: SyncEngine) -> None:
    await engine.sync("school", "programs", [program("1001")])
    await engine.sync("school", "programs", [{"id": "1001", "$deleted": True}])
    report = await engine.sync("school", "classes", [class_("4001")])
    assert result(report)["reason"] == "program_not_synced_yet"


async def test_a_batch_mixing_every_status(engine: SyncEngine) -> None:
    await engine.sync("school", "programs", [program("1001"), program("1002"), program("1003")])
    await engine.sync("school", "programs", [program("1004", Modified_Time="2026-03-01T00:00:00Z")])
    report = await engine.sync(
        "school",
        "programs",
        [
            program("1005"),
            program("1001", Program_Price="4600"),
            program("1002"),
            program("1006", Program_Price=-1),
            program("1004", Modified_Time="2026-02-01T00:00:00Z"),
            {"id": "1003", "$deleted": True},
        ],
    )
    assert statuses(report) == ["NEW", "UPDATED", "UNCHANGED", "INVALID", "SKIPPED", "DELETED"]
    assert report.to_builtins()["summary"] == {
        "NEW": 1,
        "UPDATED": 1,
        "UNCHANGED": 1,
        "INVALID": 1,
        "SKIPPED": 1,
        "DELETED": 1,
    }
    assert result(report, 1)["changes"] == {"Program_Price": ["4500", "4600"]}
    assert result(report, 3)["errors"] == [{"field": "Program_Price", "message": "-1 is less than the minimum 0"}]
    assert await count_rows(engine.database, "programs") == 5


async def test_tenants_are_separate(engine: SyncEngine) -> None:
    await engine.sync("north", "students", [student("3001")])
    assert statuses(await engine.sync("south", "students", [student("3001", Status="Freeze")])) == ["NEW"]
    assert statuses(await engine.sync("north", "students", [student("3001")])) == ["UNCHANGED"]
    assert await count_rows(engine.database, "students", "north") == 1
    assert await count_rows(engine.database, "students", "south") == 1
    # A parent synced for one tenant does not satisfy another tenant's lookup.
    await engine.sync("north", "programs", [program("1001")])
    assert result(await engine.sync("south", "classes", [class_("4001")]))["reason"] == "program_not_synced_yet"


async def test_dry_run_reports_but_writes_nothing(engine: SyncEngine) -> None:
    report = await engine.sync("school", "students", [student("3001"), student("3001", Status="Freeze")], dry_run=True)
    assert statuses(report) == ["NEW", "UPDATED"]
    assert report.to_builtins()["dry_run"] is True
    assert await count_rows(engine.database, "students") == 0
    assert await count_rows(engine.database, "syncengine_outbox") == 0


async def test_changes_are_queued_for_moodle_in_the_same_transaction(engine: SyncEngine) -> None:
    await seed(engine)
    await engine.sync("school", "students", [student("3001", Status="Freeze"), student("3002")])
    await engine.sync("school", "students", [{"id": "3002", "$deleted": True}])
    await engine.sync("school", "units", [{"id": "7001", "Name": "Unit 1"}])  # units do not land in Moodle
    async with engine.database.connect() as conn:
        rows = (
            await conn.execute(sa.text("SELECT entity, zoho_id, operation, state FROM syncengine_outbox ORDER BY id"))
        ).all()
    assert [tuple(row) for row in rows] == [
        ("programs", "1001", "upsert", "pending"),
        ("students", "3001", "upsert", "pending"),
        ("classes", "4001", "upsert", "pending"),
        ("students", "3001", "upsert", "pending"),
        ("students", "3002", "upsert", "pending"),
        ("students", "3002", "delete", "pending"),
    ]


async def outbox(engine: SyncEngine) -> list[tuple[str, str, str]]:
    async with engine.database.connect() as conn:
        rows = await conn.execute(sa.text("SELECT entity, zoho_id, operation FROM syncengine_outbox ORDER BY id"))
        return [(row.entity, row.zoho_id, row.operation) for row in rows]


async def test_an_update_is_queued_only_when_a_field_its_moodle_mapping_reads_changed(engine: SyncEngine) -> None:
    """Issue 16: an UPDATED record writes a delivery when its Moodle parameters changed: a field
    a template or a `when` of its mapping reads, a lookup's included (for its record's Moodle id)."""
    await seed(engine)
    await engine.sync("school", "teachers", [teacher("2001")])
    await engine.sync("school", "units", [{"id": "7001", "Name": "Unit 1"}])
    cases = [
        ("students", student("3001", Phone_Number="+90 555"), False),  # read by no mapping
        ("students", student("3001", Phone_Number="+90 555", Status="Freeze"), True),  # a `when`
        ("students", student("3001", Phone_Number="+90 555", Status="Freeze", First_Name="Ada"), True),  # a template
        ("classes", class_("4001", Unit="7001"), False),  # a lookup no mapping reads
        ("classes", class_("4001", Unit="7001", Teacher="2001"), True),  # a lookup whose Moodle id a target reads
        ("programs", program("1001", Program_Price=5000), False),
    ]
    for entity, record, delivered in cases:
        before = await outbox(engine)
        assert statuses(await engine.sync("school", entity, [record])) == ["UPDATED"], record
        assert (await outbox(engine))[len(before) :] == ([(entity, record["id"], "upsert")] if delivered else [])
    # Two versions in one batch: the first one's delivery stays, though the second changes no mapped field.
    before = await outbox(engine)
    batch = [student("3001", Last_Name="Lovelace"), student("3001", Last_Name="Lovelace", Phone_Number="+90 556")]
    assert statuses(await engine.sync("school", "students", batch)) == ["UPDATED", "UPDATED"]
    assert (await outbox(engine))[len(before) :] == [("students", "3001", "upsert")]


@pytest.mark.parametrize(
    "phones",
    [
        ["a,b", "{x}", " spaced ", "NULL", "", "Ünïcödé 電話", "tab\there", "semi;colon"],
        ['quo"te', "back\\slash", "plain", "{", "}"],
    ],
    ids=["array-literal", "escaping-left-to-the-driver"],
)
async def test_text_of_any_shape_is_stored_as_sent(engine: SyncEngine, phones: list[str]) -> None:
    """Arrays travel as literals when no element needs escaping, as lists otherwise: both store
    every string exactly, ids included."""
    ids = [f"7{i}" for i in range(len(phones) - 1)] + ["x,{y}"]
    batch = [
        student(zoho_id, Phone_Number=phone, Academic_Email=f"s{i}@school.edu")  # "x,{y}" makes no email
        for i, (zoho_id, phone) in enumerate(zip(ids, phones, strict=True))
    ]
    assert statuses(await engine.sync("school", "students", batch)) == ["NEW"] * len(batch)
    async with engine.database.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT zoho_id, phone FROM students WHERE tenant_id = 'school'"))).all()
    assert sorted(rows) == sorted(zip(ids, [phone or None for phone in phones], strict=True))
    assert statuses(await engine.sync("school", "students", batch)) == ["UNCHANGED"] * len(batch)


async def test_types_round_trip_without_spurious_changes(engine: SyncEngine) -> None:
    """Every stored type reads back as the value it was written as."""
    await engine.sync("school", "programs", [program("1001", Program_Price="4500.50", MoodleID="117")])
    await engine.sync("school", "teachers", [teacher("2001", Email=" T@School.edu ")])
    await engine.sync("school", "units", [{"id": "7001", "Name": "U", "Unit_Credit": "15", "Program": "1001"}])
    again = [
        await engine.sync("school", "programs", [program("1001", Program_Price=4500.5, MoodleID=117)]),
        await engine.sync("school", "teachers", [teacher("2001", Email="T@School.edu")]),
        await engine.sync(
            "school", "units", [{"id": "7001", "Name": "U", "Unit_Credit": 15.0, "Program": {"id": "1001"}}]
        ),
    ]
    assert [statuses(report) for report in again] == [["UNCHANGED"]] * 3


async def watch_statements(engine: SyncEngine) -> list[str]:
    """The statements the engine runs from now on, but for transaction control.

    SQLite's go through SQLAlchemy; PostgreSQL's straight to asyncpg, whose query logger sees
    them on every connection opened from now on.
    """
    statements: list[str] = []
    control = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA", "SAVEPOINT", "RELEASE")

    def count(statement: str) -> None:
        statement = statement.removeprefix("BEGIN; ")  # PostgreSQL's lane lock travels with the BEGIN
        if not statement.lstrip().upper().startswith(control):
            statements.append(statement)

    if engine.database.dialect.name == "postgresql":

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.driver_connection.add_query_logger(lambda logged: count(logged.query))

        sa.event.listen(engine.database.sync_engine, "connect", on_connect)
        await engine.database.dispose()
    else:
        sa.event.listen(
            engine.database.sync_engine, "before_cursor_execute", lambda _c, _cur, statement, *_: count(statement)
        )
    return statements


async def test_statement_count_does_not_grow_with_the_batch(engine: SyncEngine) -> None:
    await engine.sync("school", "programs", [program("1001")])
    await engine.sync("school", "students", [student("3001")])
    await engine.sync("school", "classes", [class_("4001")])
    statements = await watch_statements(engine)

    async def run(size: int, offset: int) -> int:
        statements.clear()
        batch = [enrollment(str(offset + i)) for i in range(size)]
        report = await engine.sync("school", "enrollments", batch)
        assert report.summary["NEW"] == size
        return len(statements)

    # The first run opens a connection (the driver asks the server a few things) and resolves
    # the student and the class, which the engine then remembers for a few seconds.
    assert await run(1, 9_000) >= 4
    small, large = await run(3, 10_000), await run(2_000, 20_000)
    if engine.database.dialect.name == "postgresql":
        # Fetch stored rows, take the lane lock with BEGIN, then per part one statement writing
        # rows and deliveries.
        assert engine.part_records is not None
        assert (small, large) == (3, 2 + 2_000 // engine.part_records)
    else:
        # The same read (BEGIN IMMEDIATE holds the file), then the rows and the deliveries: one part.
        assert engine.part_records is None
        assert (small, large) == (3, 3)
    statements.clear()
    unchanged = await engine.sync("school", "enrollments", [enrollment(str(20_000 + i)) for i in range(2_000)])
    assert unchanged.summary["UNCHANGED"] == 2_000
    assert len(statements) == 1  # only the fetch: known lookups are not looked up again


async def test_rows_the_fetch_did_not_find_are_inserted_without_on_conflict(engine: SyncEngine) -> None:
    """New rows go in by a plain insert (PostgreSQL's speculative insertion, ON CONFLICT, costs
    more); rows that exist are updated (PostgreSQL, where still as fetched) or upserted (SQLite)."""
    statements = await watch_statements(engine)

    def writes() -> tuple[int, int]:
        """Statements inserting new rows, and statements writing rows that exist."""
        text = " ".join(statements)
        statements.clear()
        upserts = text.count("ON CONFLICT")
        return text.count("INSERT INTO students") - upserts, text.count("UPDATE students") + upserts

    await engine.sync("school", "students", [student("3001"), student("3002")])
    assert writes() == (1, 0)
    await engine.sync("school", "students", [student("3001", Status="Freeze"), student("3003")])
    assert writes() == (1, 1)
    await engine.sync("school", "students", [{"id": "3002", "$deleted": True}])
    restore = student("3002", Modified_Time="2026-03-01T00:00:00Z")  # later than the delete
    await engine.sync("school", "students", [restore])  # restored: its row exists
    assert writes() == (0, 2)
    assert await count_rows(engine.database, "students") == 3


async def test_lookups_seen_live_are_remembered_for_a_few_seconds(engine: SyncEngine) -> None:
    await seed(engine)
    await engine.sync("school", "students", [student("3002")])
    statements = await watch_statements(engine)

    def resolves() -> int:  # the lookup statements so far
        return sum(" AS part" in s for s in statements)

    assert statuses(await engine.sync("school", "enrollments", [enrollment("5001")])) == ["NEW"]
    assert resolves() == 1  # the first time, the student and the class are looked up
    assert statuses(await engine.sync("school", "enrollments", [enrollment("5002")])) == ["NEW"]
    assert resolves() == 1  # then remembered
    # A parent deleted by this process is forgotten at once: its children wait for it again.
    assert statuses(await engine.sync("school", "students", [{"id": "3001", "$deleted": True}])) == ["DELETED"]
    report = await engine.sync("school", "enrollments", [enrollment("5003")])
    assert (statuses(report), report.results[0].reason) == (["SKIPPED"], "student_not_synced_yet")
    assert resolves() == 2
    # A parent that was not synced yet is asked for every time, so it counts as soon as it lands.
    assert statuses(await engine.sync("school", "enrollments", [enrollment("5004", student_id="3003")])) == ["SKIPPED"]
    await engine.sync("school", "students", [student("3003")])
    assert statuses(await engine.sync("school", "enrollments", [enrollment("5004", student_id="3003")])) == ["NEW"]


async def test_remembered_lookups_expire(engine: SyncEngine) -> None:
    forgetful = SyncEngine(engine.catalog, engine.database, lookup_cache_seconds=0.05)
    await seed(forgetful)
    statements = await watch_statements(forgetful)
    await forgetful.sync("school", "enrollments", [enrollment("5001")])
    await asyncio.sleep(0.1)
    await forgetful.sync("school", "enrollments", [enrollment("5002")])
    assert sum(" AS part" in s for s in statements) == 2  # the lookup statement, each time


async def test_concurrent_batches_with_overlapping_ids_leave_one_row_each(engine: SyncEngine) -> None:
    rng = random.Random(7)
    batches = []
    for n in range(20):
        ids = rng.sample(range(30), 12)
        batches.append(
            [student(str(4000 + i), Status=rng.choice(["Active", "Freeze"]), Phone_Number=str(n)) for i in ids]
        )
    reports = await asyncio.gather(*(engine.sync("school", "students", batch) for batch in batches))
    assert all(set(statuses(report)) <= {"NEW", "UPDATED", "UNCHANGED"} for report in reports)
    touched = {record["id"] for batch in batches for record in batch}
    assert await count_rows(engine.database, "students", "school") == len(touched)


async def test_values_a_database_cannot_hold_are_invalid_not_cut(engine: SyncEngine) -> None:
    long_id = "9" * 65
    report = await engine.sync(
        "school",
        "programs",
        [
            program(long_id),
            program("1001", MoodleID=2**63),
            program("1002", Product_Name="A\x00B"),
            program("1003"),
        ],
    )
    assert statuses(report) == ["INVALID", "INVALID", "INVALID", "NEW"]
    assert [r["errors"] for r in report.to_builtins()["results"][:3]] == [
        [{"field": "id", "message": "a record id is at most 64 characters; this one has 65"}],
        [{"field": "MoodleID", "message": "9223372036854775808 is out of range (a 64-bit integer)"}],
        [{"field": "Product_Name", "message": "contains a NUL character, which cannot be stored"}],
    ]
    lookup = await engine.sync("school", "students", [student("3001", Program={"id": "1" * 70})])
    assert lookup.to_builtins()["results"][0]["errors"] == [
        {"field": "Program", "message": "a record id is at most 64 characters; this one has 70"}
    ]


async def test_concurrent_large_batches_do_not_exhaust_locks(engine: SyncEngine) -> None:
    """Four concurrent batches of 5,000 (the HTTP limit) on one table and tenant."""
    batches = [[student(str(100_000 + n * 5_000 + i)) for i in range(5_000)] for n in range(4)]
    reports = await asyncio.gather(*(engine.sync("school", "students", batch) for batch in batches))
    assert [report.summary["NEW"] for report in reports] == [5_000] * 4


def test_the_fingerprint_is_sha256_of_the_sorted_json_of_non_empty_values_by_zoho_name(catalog: Any) -> None:
    """Stored fingerprints outlive releases: this definition must never change by accident."""
    entity = catalog.entity("students")
    record = parse_record(entity, student("3001", Phone_Number="-None-", Birth_Date="2001-04-12"))
    assert not record.errors
    values = {f.name: record.values.get(f.name) for f in entity.fields}
    by_zoho_name = {f.source: values[f.name] for f in entity.fields if values[f.name] is not None}
    expected = hashlib.sha256(msgspec.json.encode(by_zoho_name, order="sorted")).hexdigest()
    assert fingerprint(entity, values) == expected
    assert list(by_zoho_name) != sorted(by_zoho_name)  # the descriptor's order is not the sorted one
    # One value of it, written out, so that an encoder change shows too.
    assert fingerprint(entity, {f.name: None for f in entity.fields} | {"first_name": "Ayşe"}) == (
        hashlib.sha256('{"First_Name":"Ayşe"}'.encode()).hexdigest()
    )


async def test_every_field_type_reads_back_as_written(databases: Databases, dialect: str) -> None:
    """Each type through each dialect's write path (arrays, literals, driver parameters) and back:
    the stored values, read again, give the same fingerprint, and the API shows them as sent."""
    catalog = parse_catalog(EVERY_TYPE_YAML)
    engine = SyncEngine(catalog, await databases.create(dialect, catalog))
    await engine.sync("school", "parents", [{"id": "1", "Name": "P"}])
    kinds = [
        {
            "id": str(10 + i),
            "Modified_Time": f"2026-02-1{i}T09:15:42.12345{i}+03:00",
            "Plain": f"a,b {{{i}}}",
            "Note": 'say "hi"\\n' if i else "",
            "Email": f"k{i}@school.example",
            "Count": -(2**62) + i,
            "Price": f"{i}.0050",
            "Flag": i % 2 == 0,
            "Day": f"2026-0{i + 1}-28",
            "Moment": f"2026-03-0{i + 1}T23:59:59.99999{i}Z",
            "Mode": ["Onsite", "Online", None][i],
            "Tags": [["a", "b"], "b", []][i],
            "Parent": {"id": "1", "name": "P"},
            "Other": "1",
        }
        for i in range(3)
    ]
    assert statuses(await engine.sync("school", "kinds", kinds)) == ["NEW"] * 3
    assert statuses(await engine.sync("school", "kinds", kinds)) == ["UNCHANGED"] * 3
    stored = await engine.fetch_record("school", "kinds", "10")
    assert stored is not None
    assert {key: stored["values"][key] for key in ("Plain", "Count", "Price", "Flag", "Day", "Moment", "Tags")} == {
        "Plain": "a,b {0}",
        "Count": -(2**62),
        "Price": Decimal("0.005"),
        "Flag": True,
        "Day": dt.date(2026, 1, 28),
        "Moment": dt.datetime(2026, 3, 1, 23, 59, 59, 999990, tzinfo=dt.UTC),
        "Tags": ["a", "b"],
    }


@pytest.mark.parametrize("size", [1, 120, 450])
async def test_a_generator_of_records_is_synced_like_a_list(engine: SyncEngine, size: int) -> None:
    records = [student(str(5000 + i)) for i in range(size)]
    report = await engine.sync("school", "students", (record for record in records))
    assert report.summary["NEW"] == size
    again = await engine.sync("school", "students", records, dry_run=True)
    assert again.summary["UNCHANGED"] == size and again.to_builtins()["dry_run"] is True
