"""What lands in Moodle: the desired state of each target of a record, from the shipped mapping
and from copies of it that map differently."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from syncengine.descriptors import Catalog, load_catalog, parse_catalog
from syncengine.engine import SyncEngine
from syncengine.mapping import DesiredState, Record, desired_states, mapping_digest
from tests.conftest import ENTITIES
from tests.records import class_, enrollment, program, student

FEB_10 = 1770681600  # 2026-02-10T00:00:00Z
JUN_30 = 1782777600  # 2026-06-30T00:00:00Z

STUDENT = {
    "first_name": "Ayşe",
    "last_name": "Yılmaz",
    "academic_email": "Ayse.Yilmaz@School.edu",
    "email": "ayse@home.example",
    "phone": "+90 555 0100",
    "status": "Active",
}
CLASS = {
    "name": "Business Strategy",
    "short_name": "BS-T1",
    "status": "Active",
    "start_date": date(2026, 2, 10),
    "end_date": date(2026, 6, 30),
    "program": "1001",
    "teacher": "2001",
}
ENROLLMENT = {"student": "3001", "class": "4001", "start_date": date(2026, 2, 10), "end_date": None}


def states(
    catalog: Catalog, entity: str, values: dict[str, Any], *, zoho_id: str = "9", deleted: bool = False, **ids: int
) -> tuple[DesiredState, ...]:
    """The desired states of one record; `ids` are known Moodle ids, `programs_1001=12`."""
    moodle_ids = {tuple(key.rsplit("_", 1)): value for key, value in ids.items()}
    targets = catalog.entity(entity).moodle
    assert targets is not None
    return desired_states(targets, Record(zoho_id, values, deleted), moodle_ids)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def school() -> Catalog:
    return load_catalog(ENTITIES)


def test_a_student_is_a_user_with_a_lower_case_username(school: Catalog) -> None:
    (user,) = states(school, "students", STUDENT, zoho_id="3001")
    assert (user.target, user.kind, user.active, user.leave, user.reason, user.missing) == (
        "user", "user", True, None, None, (),
    )  # fmt: skip
    assert user.params == {
        "username": "ayse.yilmaz@school.edu",
        "email": "Ayse.Yilmaz@School.edu",
        "firstname": "Ayşe",
        "lastname": "Yılmaz",
        "idnumber": "3001",
        "suspended": 0,
    }
    assert user.finds_by == (("idnumber",), ("username",), ("email",))


def test_a_student_leaving_the_active_statuses_is_suspended_and_comes_back(school: Catalog) -> None:
    (active,) = states(school, "students", STUDENT)
    (frozen,) = states(school, "students", STUDENT | {"status": "Freeze"})
    assert (frozen.active, frozen.leave, frozen.params["suspended"]) == (False, "suspend", 1)
    assert frozen.reason == "status is 'Freeze'; it belongs while one of: Active, Approved, Approved-conditional"
    assert frozen.params | {"suspended": 0} == active.params
    assert frozen.digest != active.digest
    (back,) = states(school, "students", STUDENT | {"status": "Approved"})
    assert (back.active, back.params["suspended"]) == (True, 0)
    assert back.digest == active.digest, "Moodle sees no difference between two active statuses"
    (pending,) = states(school, "students", STUDENT | {"status": None})
    assert pending.reason == "status is empty; it belongs while one of: Active, Approved, Approved-conditional"


def test_a_deleted_student_or_teacher_is_suspended_never_deleted(school: Catalog) -> None:
    (user,) = states(school, "students", STUDENT, deleted=True)
    assert (user.active, user.leave, user.reason, user.params["suspended"]) == (False, "suspend", "deleted", 1)
    teacher = {"name": "Ada Lovelace", "academic_email": "ada@school.edu"}  # no `leave:`: a user's default
    (user,) = states(school, "teachers", teacher, deleted=True)
    assert (user.active, user.leave, user.params["suspended"]) == (False, "suspend", 1)
    assert user.params["firstname"] == "Ada" and user.params["lastname"] == "Lovelace"


def test_a_program_is_a_category_and_a_delete_leaves_it_alone(school: Catalog) -> None:
    (category,) = states(school, "programs", {"name": "BTEC Business", "price": Decimal("4500.50")}, zoho_id="1001")
    assert (category.kind, category.params, category.active) == (
        "category", {"name": "BTEC Business", "idnumber": "1001"}, True,
    )  # fmt: skip
    (deleted,) = states(school, "programs", {"name": "BTEC Business"}, zoho_id="1001", deleted=True)
    assert (deleted.active, deleted.leave, deleted.params) == (False, "nothing", category.params)


def test_a_class_is_a_course_in_its_programs_category_with_its_teacher_enrolled(school: Catalog) -> None:
    course, teacher = states(
        school, "classes", CLASS, zoho_id="4001", programs_1001=12, teachers_2001=30, classes_4001=77
    )
    assert (course.target, course.kind, course.missing) == ("course", "course", ())
    assert course.params == {
        "fullname": "Business Strategy",
        "shortname": "BS-T1",
        "idnumber": "4001",
        "categoryid": 12,
        "startdate": FEB_10,
        "enddate": JUN_30,
        "visible": 1,
    }
    assert (teacher.target, teacher.kind, teacher.missing, teacher.active) == ("teacher", "enrolment", (), True)
    assert teacher.params == {"roleid": 3, "userid": 30, "courseid": 77, "suspend": 0}


def test_moodle_ids_not_known_yet_are_missing_and_do_not_change_the_digest(school: Catalog) -> None:
    known = states(school, "classes", CLASS, zoho_id="4001", programs_1001=12, teachers_2001=30, classes_4001=77)
    course, teacher = states(school, "classes", CLASS, zoho_id="4001")
    assert course.missing == (("programs", "1001"),)
    assert "categoryid" not in course.params
    assert teacher.missing == (("teachers", "2001"), ("classes", "4001"))
    assert teacher.params == {"roleid": 3, "suspend": 0}
    assert [s.digest for s in (course, teacher)] == [s.digest for s in known]
    (moved,) = states(school, "classes", CLASS | {"program": "1002"}, zoho_id="4001")[:1]
    assert moved.digest != course.digest, "another program is another category"


def test_a_class_leaving_its_statuses_hides_the_course_and_a_class_without_teacher_enrols_none(
    school: Catalog,
) -> None:
    course, teacher = states(school, "classes", CLASS | {"status": "Pending", "teacher": None}, programs_1001=12)
    assert (course.active, course.leave, course.params["visible"]) == (False, "hide", 0)
    assert course.reason == (
        "status is 'Pending'; it belongs while one of: Active, End, Final Evaluation, Initial Evaluation, "
        "Waiting Resubmission, Waiting Submission"
    )
    assert (teacher.active, teacher.leave, teacher.reason) == (
        False,
        "suspend",
        "'userid' is empty: teacher has no value",
    )
    (back, _) = states(school, "classes", CLASS | {"status": "End"}, programs_1001=12)
    assert (back.active, back.params["visible"]) == (True, 1)


def test_an_enrollment_is_a_student_enrolment_with_dates_and_a_delete_suspends_it(school: Catalog) -> None:
    (enrolment,) = states(school, "enrollments", ENROLLMENT, students_3001=40, classes_4001=77)
    assert enrolment.params == {"roleid": 5, "userid": 40, "courseid": 77, "timestart": FEB_10, "suspend": 0}
    assert enrolment.finds_by == (("userid", "courseid"),)
    (deleted,) = states(school, "enrollments", ENROLLMENT, deleted=True, students_3001=40, classes_4001=77)
    assert (deleted.active, deleted.leave, deleted.params["suspend"]) == (False, "suspend", 1)
    (ended,) = states(school, "enrollments", ENROLLMENT | {"end_date": date(2026, 6, 30)})
    assert (ended.params["timeend"], ended.missing) == (JUN_30, (("students", "3001"), ("classes", "4001")))


def test_the_digest_changes_with_what_moodle_sees_only(school: Catalog) -> None:
    targets = school.entity("students").moodle
    assert targets is not None
    digest = mapping_digest(targets, Record("3001", STUDENT))
    assert mapping_digest(targets, Record("3001", STUDENT | {"phone": "+90 555 0199"})) == digest
    assert mapping_digest(targets, Record("3001", STUDENT | {"academic_email": "AYSE.YILMAZ@school.edu"})) != digest
    assert mapping_digest(targets, Record("3001", STUDENT | {"last_name": "Kaya"})) != digest
    assert mapping_digest(targets, Record("3001", STUDENT, deleted=True)) != digest


TEMPLATES = """
version: 1
entities:
  teachers:
    source: Teachers
    singular: teacher
    fields:
      name: {from: Name, type: string}
      mail: {from: Academic_Email, type: email}
      code: {from: Code, type: string}
      senior: {type: boolean}
      hired: {from: Hired_At, type: datetime}
      active: {from: Active, type: choice, choices: ["Yes", "No"]}
    moodle:
      - kind: user
        when: {Active: ["Yes"]}
        leave: nothing
        params:
          username: "{Academic_Email|lower}"
          email: "{mail | trim}"
          firstname: "{name|first_word}"
          lastname: "{name|other_words|upper}"
          idnumber: "T-{code}-{{{zoho_id}}}"
          auth: oauth2
      - kind: enrolment
        name: mentor
        params: {roleid: "4", userid: "{moodle_id}", courseid: "{senior}", timestart: "{hired}", timeend: true}
"""


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            {"name": " Ada  Lovelace King", "mail": "Ada@X.edu ", "code": "7", "active": "Yes"},
            {"username": "ada@x.edu ", "email": "Ada@X.edu", "firstname": "Ada", "lastname": "LOVELACE KING",
             "idnumber": "T-7-{9}", "auth": "oauth2", "suspended": 0},
            id="filters in order, Zoho names, text around placeholders, escaped braces, a text literal",
        ),
        pytest.param(
            {"name": "Plato", "mail": "p@x.edu", "code": None, "active": "No"},
            {"username": "p@x.edu", "email": "p@x.edu", "firstname": "Plato", "lastname": "PLATO", "auth": "oauth2",
             "suspended": 0},
            id="a one-word name is both names; an empty placeholder empties its parameter; leave nothing",
        ),
    ],
)  # fmt: skip
def test_templates_and_filters(values: dict[str, Any], expected: dict[str, Any]) -> None:
    catalog = parse_catalog(textwrap.dedent(TEMPLATES))
    user, _ = states(catalog, "teachers", values)
    assert user.params == expected
    assert user.active is (values["active"] == "Yes")
    assert user.leave == (None if user.active else "nothing")


def test_literals_booleans_and_date_times_become_moodle_integers() -> None:
    catalog = parse_catalog(textwrap.dedent(TEMPLATES))
    hired = datetime(2026, 2, 10, 6, 15, 42, tzinfo=UTC)  # 09:15:42+03:00
    _, mentor = states(catalog, "teachers", {"senior": True, "hired": hired, "active": "Yes"}, teachers_9=30)
    assert mentor.target == "mentor"
    assert mentor.params == {
        "roleid": 4,
        "userid": 30,
        "courseid": 1,
        "timestart": 1770704142,
        "timeend": 1,
        "suspend": 0,
    }


def test_an_enrolment_mapped_to_unenrol_says_so_on_delete() -> None:
    text = ENTITIES.read_text().replace(
        '        timeend: "{end_date}"\n', '        timeend: "{end_date}"\n      leave: unenrol\n'
    )
    (enrolment,) = states(
        parse_catalog(text), "enrollments", ENROLLMENT, deleted=True, students_3001=40, classes_4001=77
    )
    assert (enrolment.active, enrolment.leave, enrolment.params["suspend"]) == (False, "unenrol", 0)


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


STAFF = """
  staff:
    source: BTEC_Staff
    singular: staff_member
    fields:
      full_name: {from: Full_Name, type: string, required: true}
      work_email: {from: Work_Email, type: email}
    moodle:
      kind: user
      params:
        username: "{work_email|lower}"
        email: "{work_email}"
        firstname: "{full_name|first_word}"
        lastname: "{full_name|other_words}"
        idnumber: "staff-{zoho_id}"
"""


def test_a_copy_of_the_yaml_that_maps_differently_changes_what_lands_without_code(school: Catalog) -> None:
    text = ENTITIES.read_text()
    students = text[text.index("  students:") :]
    text = text.replace(students, replaced(students, '"{academic_email|lower}"', '"{Email|lower}"'))
    text = replaced(text, "roleid: 3 ", "roleid: 4 ")
    other = parse_catalog(text + STAFF)

    (shipped,) = states(school, "students", STUDENT)
    (copied,) = states(other, "students", STUDENT)
    assert (shipped.params["username"], copied.params["username"]) == ("ayse.yilmaz@school.edu", "ayse@home.example")
    assert copied.digest != shipped.digest
    _, shipped_teacher = states(school, "classes", CLASS, teachers_2001=30, classes_9=77)
    _, copied_teacher = states(other, "classes", CLASS, teachers_2001=30, classes_9=77)
    assert (shipped_teacher.params["roleid"], copied_teacher.params["roleid"]) == (3, 4)
    assert school.entity("teachers").moodle is not None and "staff" not in school.entities
    (staff,) = states(other, "staff", {"full_name": "Grace Hopper", "work_email": "G.Hopper@School.edu"}, zoho_id="8")
    assert (staff.kind, staff.params) == (
        "user",
        {"username": "g.hopper@school.edu", "email": "G.Hopper@School.edu", "firstname": "Grace",
         "lastname": "Hopper", "idnumber": "staff-8", "suspended": 0},
    )  # fmt: skip


async def test_records_as_each_database_stores_them_map_alike(engine: SyncEngine, school: Catalog) -> None:
    """Values read back from SQLite and PostgreSQL (dates, lookups) give Moodle's types."""
    await engine.sync("school", "programs", [program("1001")])
    await engine.sync("school", "students", [student("3001", Academic_Email="Ayse@School.edu")])
    await engine.sync("school", "classes", [class_("4001", Class_Short_Name="BS-T1", Class_Status="Active")])
    await engine.sync("school", "enrollments", [enrollment("5001", Start_Date="2026-02-10", End_Date="2026-06-30")])
    found: dict[str, tuple[DesiredState, ...]] = {}
    for entity, zoho_id in [("students", "3001"), ("classes", "4001"), ("enrollments", "5001")]:
        stored = await engine.fetch_record("school", entity, zoho_id)
        assert stored is not None
        values = {f.name: stored["values"][f.source] for f in school.entity(entity).fields}
        found[entity] = states(
            school, entity, values, zoho_id=zoho_id, programs_1001=12, students_3001=40, classes_4001=77
        )
    assert found["students"][0].params["username"] == "ayse@school.edu"
    assert found["classes"][0].params | {"fullname": ""} == {
        "fullname": "", "shortname": "BS-T1", "idnumber": "4001", "categoryid": 12,
        "startdate": 1771200000, "enddate": 1778198400, "visible": 1,
    }  # fmt: skip
    assert found["classes"][1].reason == "'userid' is empty: teacher has no value"
    assert found["enrollments"][0].params == {
        "roleid": 5, "userid": 40, "courseid": 77, "timestart": FEB_10, "timeend": JUN_30, "suspend": 0,
    }  # fmt: skip
