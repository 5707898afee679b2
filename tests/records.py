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
