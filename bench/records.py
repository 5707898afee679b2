"""Zoho-shaped records for the benchmark: the school's real field names, lookups as
`{"name", "id"}` objects, `$` meta keys and `Modified_Time`, as a list call returns them.

    >>> world = World(students=100, classes=10, programs=2)
    >>> enrollments(world, 3)[0]["Enrolled_Students"]
    {'name': 'STU-000000', 'id': '6284103000100000000'}

Ids are deterministic, so every scenario (engine, naive, raw, dlt) loads the same rows.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PROGRAM_BASE = 6284103000010000000
STUDENT_BASE = 6284103000100000000
CLASS_BASE = 6284103000200000000
ENROLLMENT_BASE = 6284103001000000000
MODIFIED = dt.datetime(2026, 2, 10, 9, 15, 42, tzinfo=dt.timezone(dt.timedelta(hours=3)))
OWNER = {"name": "Academic Office", "id": "6284103000000485001", "email": "academic@example.edu"}
ENROLLMENT_TYPES = ("Normal", "Recording", "Self-Study", "Not Graded")
STUDY_MODES = ("Onsite", "Online", "Blended")


@dataclass(frozen=True)
class World:
    """How many parents the enrollments point to."""

    students: int = 10_000
    classes: int = 500
    programs: int = 20


def _meta() -> dict[str, Any]:
    return {"$approval_state": "approved", "$editable": True, "$state": "save", "$process_flow": False}


def programs(world: World) -> list[dict[str, Any]]:
    return [
        {
            "id": str(PROGRAM_BASE + i),
            "Product_Name": f"Pearson BTEC Level 5 HND {i}",
            "Program_Price": 4500.0 + i,
            "Status": "Approved",
            "Program_Type": "HND",
            "Modified_Time": MODIFIED.isoformat(),
            **_meta(),
        }
        for i in range(world.programs)
    ]


def students(world: World) -> list[dict[str, Any]]:
    return [
        {
            "id": str(STUDENT_BASE + i),
            "Name": f"STU-{i:06d}",
            "First_Name": "Ayşe",
            "Last_Name": f"Yılmaz {i}",  # noqa: RUF001 - a real Turkish name
            "Academic_Email": f"s{i}@school.edu",
            "Email": f"ayse.{i}@example.com",
            "Status": "Active",
            "Study_Mode": STUDY_MODES[i % 3],
            "Program": {"name": f"Program {i % world.programs}", "id": str(PROGRAM_BASE + i % world.programs)},
            "Owner": OWNER,
            "Modified_Time": MODIFIED.isoformat(),
            **_meta(),
        }
        for i in range(world.students)
    ]


def classes(world: World) -> list[dict[str, Any]]:
    return [
        {
            "id": str(CLASS_BASE + i),
            "Name": f"CLS-{i:05d}",
            "Class_Name": f"Unit {i % 40}: Database Design & Development — Group {i}",
            "Class_Short_Name": f"HND-IT-U{i % 40}-{i}",
            "Class_Status": "Active",
            "Term": "T2",
            "Year": "2025/2026",
            "Start_Date": "2026-02-16",
            "End_Date": "2026-05-08",
            "BTEC_Program": {"name": f"Program {i % world.programs}", "id": str(PROGRAM_BASE + i % world.programs)},
            "Owner": OWNER,
            "Modified_Time": MODIFIED.isoformat(),
            **_meta(),
        }
        for i in range(world.classes)
    ]


def enrollment(world: World, i: int, *, updated: bool = False, invalid: bool = False) -> dict[str, Any]:
    """One BTEC_Enrollments record, 14 keys; `updated` changes two fields, `invalid` breaks two."""
    student, klass = i % world.students, (i * 7) % world.classes
    modified = MODIFIED + dt.timedelta(days=1) if updated else MODIFIED
    return {
        "id": str(ENROLLMENT_BASE + i),
        "Name": f"ENR-{i:07d}",
        "Enrolled_Students": {"name": f"STU-{student:06d}", "id": str(STUDENT_BASE + student)},
        "Classes": {"name": f"CLS-{klass:05d}", "id": str(CLASS_BASE + klass)},
        "Enrollment_Type": "Unknown" if invalid else ENROLLMENT_TYPES[(i + updated) % 4],
        "Start_Date": "16/02/2026" if invalid else "2026-02-16",
        "End_Date": "2026-06-30" if updated else "2026-05-08",
        "Owner": OWNER,
        "Created_Time": "2026-01-20T11:02:05+03:00",
        "Modified_Time": modified.isoformat(),
        **_meta(),
    }


def enrollments(
    world: World, count: int, *, start: int = 0, updated: float = 0.0, invalid: float = 0.0
) -> list[dict[str, Any]]:
    """`count` enrollments from index `start`; a share of them `updated` or `invalid` (every n-th).

    The list is frozen out of the garbage collector's view (`gc.freeze`): a scenario holds up to
    300,000 pre-built records, which a service never does (its records come and go with each
    request), and every full collection would otherwise walk all of them, in whatever is being
    measured. Reference counting still frees them. Every scenario's records are made here, so
    the engine, the baselines and dlt are measured alike.
    """
    made = list(iter_enrollments(world, count, start=start, updated=updated, invalid=invalid))
    gc.freeze()
    return made


def iter_enrollments(
    world: World, count: int, *, start: int = 0, updated: float = 0.0, invalid: float = 0.0
) -> Iterator[dict[str, Any]]:
    every_updated = round(1 / updated) if updated else 0
    every_invalid = round(1 / invalid) if invalid else 0
    for i in range(start, start + count):
        yield enrollment(
            world,
            i,
            updated=bool(every_updated) and i % every_updated == 0,
            invalid=bool(every_invalid) and i % every_invalid == 0,
        )


def batches(records: list[Any], size: int) -> Iterator[list[Any]]:
    for offset in range(0, len(records), size):
        yield records[offset : offset + size]
