"""`syncengine check` on `moodle:` sections: each problem, at its line and column, all at once."""

from __future__ import annotations

import textwrap

import pytest

from syncengine.descriptors import DescriptorError, parse_catalog

HEAD = """
version: 1
entities:
  programs:
    source: Products
    singular: program
    fields:
      name: {from: Product_Name, type: string}
      active: {type: boolean}
  units:
    source: BTEC
    singular: unit
    fields:
      name: {from: Name, type: string}
"""


def problems(entities: str) -> list[str]:
    """The problems of HEAD (two entities, no mapping) followed by `entities`, as check prints them."""
    text = textwrap.dedent(HEAD).lstrip() + textwrap.indent(textwrap.dedent(entities).lstrip(), "  ")
    with pytest.raises(DescriptorError) as caught:
        parse_catalog(text, "e.yaml")
    return [str(problem) for problem in caught.value.problems]


CASES = [
    pytest.param(
        """
        teachers:
          source: BTEC_Teachers
          singular: teacher
          fields:
            name: {type: string}
          moodle: {kind: category, params: {name: "{name}"}, leave: hide}
        people:
          source: People
          singular: person
          fields:
            name: {type: string}
          moodle: {kind: learner}
        """,
        [
            "e.yaml:19:38: entities.teachers.moodle.params: a category needs 'idnumber' (required: name, idnumber)",
            "e.yaml:19:63: entities.teachers.moodle.leave: 'hide' does not apply to a category (its actions: nothing)",
            "e.yaml:25:20: entities.people.moodle.kind: unknown kind 'learner' (valid: user, category, course, enrolment)",
        ],
        id="unknown kind, a required parameter left out, a leave action of another kind",
    ),
    pytest.param(
        """
        students:
          source: BTEC_Students
          singular: student
          fields:
            email: {from: Email, type: email}
            name: {type: string}
            status: {type: choice, choices: [Active, Passive]}
          moodle:
            kind: user
            when: {status: [Active, Gone], name: [x], state: [y]}
            leave: unenrol
            params:
              username: "{mail|lower}"
              email: "{Email|shout}"
              firstname: "{name"
              lastname: "{}"
              phone1: "{name}"
              suspended: 0
        """,
        [
            "e.yaml:23:31: entities.students.moodle.when.status.1: 'Gone' is not a choice of field 'status' (its choices: Active, Passive)",
            "e.yaml:23:44: entities.students.moodle.when.name: field 'name' is of type 'string'; a condition needs a choice field",
            "e.yaml:23:49: entities.students.moodle.when.state: unknown field 'state' (choice fields: status)",
            "e.yaml:24:14: entities.students.moodle.leave: 'unenrol' does not apply to a user (its actions: suspend, nothing)",
            "e.yaml:26:19: entities.students.moodle.params.username: unknown field 'mail' in '{mail|lower}' (valid: zoho_id, moodle_id, email, name, status, or a field's Zoho name)",
            "e.yaml:27:16: entities.students.moodle.params.email: unknown filter 'shout' in '{Email|shout}' (valid: lower, upper, trim, first_word, other_words)",
            "e.yaml:28:20: entities.students.moodle.params.firstname: unmatched '{' in '{name': write '{{' for a brace itself",
            "e.yaml:29:19: entities.students.moodle.params.lastname: '{}' names no field",
            "e.yaml:30:9: entities.students.moodle.params.phone1: unknown parameter 'phone1' of a user (valid: auth, email, firstname, idnumber, lastname, username)",
            "e.yaml:31:9: entities.students.moodle.params.suspended: 'suspended' is set by 'when' and 'leave' (0 while the record belongs, 1 after 'suspend'): remove it",
        ],
        id="conditions, unknown fields, filters and parameters, template syntax, the state parameter",
    ),
    pytest.param(
        """
        classes:
          source: BTEC_Classes
          singular: class
          fields:
            name: {type: string}
            start: {type: date}
            program: {type: lookup, entity: programs}
            unit: {type: lookup, entity: units}
          moodle:
            - kind: course
              params:
                fullname: "{name}"
                shortname: "{moodle_id}"
                categoryid: "{program.name}"
                startdate: "{name}"
                enddate: "day {start}"
                idnumber: "{unit.moodle_id}"
            - kind: enrolment
              params: {roleid: student, userid: "{start|lower}", courseid: "{name.moodle_id}", timestart: "{zoho_id}"}
        """,
        [
            "e.yaml:26:22: entities.classes.moodle.0.params.shortname: '{moodle_id}' is this record's own Moodle id, known once its first target is delivered: use it in a later target only",
            "e.yaml:27:23: entities.classes.moodle.0.params.categoryid: '{program.name}': a looked-up record gives only its moodle_id ('{program.moodle_id}')",
            "e.yaml:28:22: entities.classes.moodle.0.params.startdate: 'startdate' takes an integer; field 'name' is of type 'string': use an integer, boolean, date or date-time field, or a lookup's moodle_id",
            "e.yaml:29:20: entities.classes.moodle.0.params.enddate: 'enddate' takes an integer; text around a placeholder makes text: use one placeholder",
            "e.yaml:30:21: entities.classes.moodle.0.params.idnumber: '{unit.moodle_id}': entity 'units' has no moodle mapping, so its records have no Moodle id: map units or remove this",
            "e.yaml:32:26: entities.classes.moodle.1.params.roleid: 'roleid' takes an integer, got 'student'",
            "e.yaml:32:43: entities.classes.moodle.1.params.userid: 'userid' takes an integer; a filter gives text: use an integer, boolean, date or date-time field, or a lookup's moodle_id",
            "e.yaml:32:70: entities.classes.moodle.1.params.courseid: '{name.moodle_id}': field 'name' is of type 'string'; only a lookup's record has a Moodle id",
            "e.yaml:32:101: entities.classes.moodle.1.params.timestart: 'timestart' takes an integer; zoho_id is text: use an integer, boolean, date or date-time field, or a lookup's moodle_id",
        ],
        id="integers, looked-up Moodle ids, the record's own Moodle id",
    ),
    pytest.param(
        """
        classes:
          source: BTEC_Classes
          singular: class
          fields:
            name: {type: string}
          moodle:
            - {kind: enrolment, params: {roleid: 3}}
            - {kind: learner}
            - {kind: enrolment, name: Teacher}
            - {kind: enrolment, name: enrolment, params: {roleid: 4, userid: 1, courseid: "{moodle_id}"}}
        grades:
          source: BTEC_Grades
          singular: grade
          fields:
            name: {type: string}
          moodle: []
        """,
        [
            "e.yaml:20:35: entities.classes.moodle.0.params: an enrolment needs 'userid', 'courseid' (required: roleid, userid, courseid)",
            "e.yaml:21:16: entities.classes.moodle.1.kind: unknown kind 'learner' (valid: user, category, course, enrolment)",
            "e.yaml:22:9: entities.classes.moodle.2: an enrolment needs 'roleid', 'userid', 'courseid' (required: roleid, userid, courseid)",
            "e.yaml:22:33: entities.classes.moodle.2.name: 'Teacher' must be lower_snake_case",
            "e.yaml:23:33: entities.classes.moodle.3.name: two targets are named 'enrolment': give each a distinct name",
            "e.yaml:29:13: entities.grades.moodle: lists no target: add one, or remove the moodle key",
        ],
        id="several targets: names, a broken one keeps its place, an empty list",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("entities", "expected"), CASES)
def test_broken_mappings_report_every_problem_with_its_place(entities: str, expected: list[str]) -> None:
    assert problems(entities) == expected
