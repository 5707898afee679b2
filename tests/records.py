"""Small factories of Zoho-shaped records, with the school's real field names."""

from __future__ import annotations

from typing import Any

MODIFIED = "2026-02-10T09:15:42+03:00"


def program(zoho_id: str = "1001", **fields: Any) -> dict[str, Any]:
    return {"id": zoho_id, "Product_Name": f"Program {zoho_id}", "Program_Price": 4500.0, "Status": "Approved"} | fields


def teacher(zoho_id: str = "2001", **fields: Any) -> dict[str, Any]:
    return {"id": zoho_id, "Name": f"Teacher {zoho_id}", "Academic_Email": f"t{zoho_id}@school.edu"} | fields


def student(zoho_id: str = "3001", **fields: Any) -> dict[str, Any]:
    return {
        "id": zoho_id,
        "First_Name": "Ayşe",
        "Last_Name": "Yılmaz",
        "Academic_Email": f"s{zoho_id}@school.edu",
        "Status": "Active",
        "Modified_Time": MODIFIED,
    } | fields


def class_(zoho_id: str = "4001", program_id: str = "1001", **fields: Any) -> dict[str, Any]:
    return {
        "id": zoho_id,
        "Class_Name": f"Class {zoho_id}",
        "BTEC_Program": {"name": "Program", "id": program_id},
        "Start_Date": "2026-02-16",
        "End_Date": "2026-05-08",
        "Modified_Time": MODIFIED,
    } | fields


def enrollment(
    zoho_id: str = "5001", student_id: str = "3001", class_id: str = "4001", **fields: Any
) -> dict[str, Any]:
    return {
        "id": zoho_id,
        "Enrolled_Students": {"name": "Student", "id": student_id},
        "Classes": class_id,
        "Enrollment_Type": "Normal",
        "Modified_Time": MODIFIED,
    } | fields


#: A descriptor with every field type, with and without the options that change what it accepts.
EVERY_TYPE_YAML = """
version: 1
entities:
  parents:
    source: Parents
    singular: parent
    fields:
      name: {from: Name, type: string}
  kinds:
    source: Kinds
    singular: kind
    version_field: Modified_Time
    fields:
      plain: {from: Plain, type: string}
      short: {from: Short, type: string, max_length: 5}
      trimmed: {from: Trimmed, type: string, transform: [trim]}
      coded: {from: Coded, type: string, pattern: "[A-Z]{3}"}
      note: {from: Note, type: text}
      email: {from: Email, type: email}
      count: {from: Count, type: integer}
      small: {from: Small, type: integer, min: -3, max: 3}
      price: {from: Price, type: decimal, min: 0}
      flag: {from: Flag, type: boolean}
      day: {from: Day, type: date}
      late_day: {from: Late_Day, type: date, min: "2020-01-01", max: "2030-12-31"}
      moment: {from: Moment, type: datetime}
      late_moment: {from: Late_Moment, type: datetime, min: "2020-01-01T00:00:00Z"}
      mode: {from: Mode, type: choice, choices: [Onsite, Online]}
      tags: {from: Tags, type: multichoice, choices: [a, b]}
      parent: {from: Parent, type: lookup, entity: parents}
      other: {from: Other, type: lookup, entity: parents, required: true}
  unversioned:
    source: Unversioned
    singular: unversioned
    fields:
      day: {from: Day, type: date}
      parent: {from: Parent, type: lookup, entity: parents}
"""
