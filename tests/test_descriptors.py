"""The descriptor language: the real entities.yaml, and broken files with their exact messages."""

from __future__ import annotations

import json
import textwrap
from decimal import Decimal

import jsonschema
import pytest
import yaml

from syncengine.descriptors import DescriptorError, load_catalog, parse_catalog
from syncengine.spec import json_schema
from tests.conftest import ENTITIES, ROOT


def problems(text: str) -> list[str]:
    with pytest.raises(DescriptorError) as caught:
        parse_catalog(textwrap.dedent(text).lstrip(), "e.yaml")
    return [str(problem) for problem in caught.value.problems]


def test_the_school_entities_load_in_dependency_order() -> None:
    catalog = load_catalog(ENTITIES)
    assert list(catalog.entities) == [
        "programs", "teachers", "students", "units", "classes",
        "registrations", "enrollments", "payments", "grades",
    ]  # fmt: skip
    assert {entity.name: entity.requires for entity in catalog} == {
        "programs": (),
        "teachers": (),
        "students": (),
        "units": (),
        "classes": ("programs",),
        "registrations": ("students", "programs"),
        "enrollments": ("students", "classes"),
        "payments": ("registrations",),
        "grades": ("students", "classes"),
    }
    assert catalog.entity("enrollments").source == "BTEC_Enrollments"
    assert catalog.entity("students").id_key == "zoho_student_id"
    price = next(f for f in catalog.entity("programs").fields if f.source == "Program_Price")
    assert price.options.min == Decimal(0)


VALID = """
version: 1
entities:
  programs:
    source: Products
    singular: program
    fields:
      name: {from: Product_Name, type: string, required: true}
"""

BROKEN = [
    pytest.param(
        "version: 1\nentities:\n  programs: [\n",
        ["e.yaml:4:1: invalid YAML: expected the node content, but found '<stream end>'"],
        id="unreadable YAML",
    ),
    pytest.param("", ["e.yaml:1:1: the file is empty; it needs 'version: 1' and 'entities:'"], id="empty file"),
    pytest.param(
        "version: 2\nentities: {}\n",
        ["e.yaml:1:10: version: unknown version 2 (valid: 1)"],
        id="unknown version",
    ),
    pytest.param(
        "entities: []\n",
        ["e.yaml:1:1: missing required key 'version'", "e.yaml:1:11: entities: expected a mapping, got a list"],
        id="missing version, entities not a mapping",
    ),
    pytest.param(
        """
        version: 1
        entities:
          programs:
            source: Products
            singular: program
            colour: red
            fields:
              name: {from: Product_Name, type: strin, required: yes}
              price: {from: Program_Price, type: decimal, min: abc, choices: [a]}
        """,
        [
            "e.yaml:6:5: entities.programs.colour: unknown key 'colour' "
            "(valid: description, fields, moodle, rules, singular, source, version_aliases, version_field)",
            "e.yaml:8:40: entities.programs.fields.name.type: unknown type 'strin' (valid: string, text, email, "
            "integer, decimal, boolean, date, datetime, choice, multichoice, lookup)",
            "e.yaml:9:56: entities.programs.fields.price.min: not a valid decimal: expected a number such as 4500.50 (ASCII digits, a point), got 'abc'",
            "e.yaml:9:61: entities.programs.fields.price.choices: option 'choices' does not apply to type "
            "'decimal' (its options: max, min)",
        ],
        id="unknown key, unknown type, bad option value, option of another type",
    ),
    pytest.param(
        """
        version: 1
        entities:
          classes:
            source: BTEC_Classes
            singular: class
            fields:
              program: {from: BTEC_Program, type: lookup, entity: programmes, required: true}
              status: {type: choice}
              term: {type: choice, choices: [T1, T1]}
              code: {type: string, pattern: "[a-", max_length: 0}
              size: {type: integer, min: 10, max: 1}
              kind: {type: choice, choices: [A, B], default: C}
        """,
        [
            "e.yaml:7:59: entities.classes.fields.program.entity: unknown entity 'programmes' (known: classes)",
            "e.yaml:8:15: entities.classes.fields.status: type 'choice' needs 'choices'",
            "e.yaml:9:37: entities.classes.fields.term.choices: choices are repeated",
            "e.yaml:10:37: entities.classes.fields.code.pattern: not a valid regular expression: "
            "unterminated character set at position 0",
            "e.yaml:10:56: entities.classes.fields.code.max_length: must be at least 1",
            "e.yaml:11:34: entities.classes.fields.size.min: is greater than max",
            "e.yaml:12:54: entities.classes.fields.kind.default: not a valid choice: 'C' is not one of 'A', 'B'",
        ],
        id="bad options",
    ),
    pytest.param(
        """
        version: 1
        entities:
          classes:
            source: BTEC_Classes
            singular: class
            fields:
              unit: {from: Unit, type: lookup, entity: units, required: true}
          units:
            source: BTEC
            singular: unit
            fields:
              first_class: {from: Class, type: lookup, entity: classes, required: true}
        """,
        ["e.yaml:3:3: entities.classes: dependency cycle through required lookups: classes -> units -> classes"],
        id="dependency cycle",
    ),
    pytest.param(
        """
        version: 1
        entities:
          programs:
            source: Products
            singular: program
            fields:
              name: {from: Product_Name, type: string}
              title: {from: Product_Name, type: string}
              name: {from: Product_Name, type: text}
          courses:
            source: Products
            singular: program
            fields:
              Name: {type: string}
              zoho_id: {type: string}
              teacher_id: {type: integer}
              teacher: {type: lookup, entity: programs}
        """,
        [
            "e.yaml:8:21: entities.programs.fields.title.from: Zoho field 'Product_Name' is already mapped by 'name'",
            "e.yaml:9:7: entities.programs.fields.name: duplicate key 'name'",
            "e.yaml:11:13: entities.courses.source: duplicate source 'Products' (also used by programs)",
            "e.yaml:12:15: entities.courses.singular: duplicate singular 'program' (also used by programs)",
            "e.yaml:14:7: entities.courses.fields.Name: field name 'Name' must be lower_snake_case",
            "e.yaml:15:7: entities.courses.fields.zoho_id: column 'zoho_id' clashes with a system column; rename the field",
            "e.yaml:17:7: entities.courses.fields.teacher: column 'teacher_id' clashes with field 'teacher_id'; "
            "rename the field",
        ],
        id="duplicate names",
    ),
    pytest.param(
        """
        version: 1
        entities:
          classes:
            source: BTEC_Classes
            singular: class
            fields:
              name: {from: Class_Name, type: string}
              start: {from: Start_Date, type: date}
              end: {from: End_Date, type: date}
              starts_at: {from: Starts_At, type: datetime}
            rules:
              - {field: end, not_before: begin}
              - {field: name, not_after: end}
              - {field: end, not_before: starts_at}
              - {field: end}
              - {field: end, not_before: start, not_after: start}
              - {field: end, not_before: end}
              - {field: end, after: start}
        """,
        [
            "e.yaml:12:34: entities.classes.rules.0.not_before: unknown field 'begin' (valid: name, start, end, starts_at)",
            "e.yaml:13:17: entities.classes.rules.1.field: field 'name' is of type 'string'; rules compare date, datetime, integer, decimal",
            "e.yaml:14:34: entities.classes.rules.2.not_before: compares a date with a datetime; both fields must be of one type",
            "e.yaml:15:9: entities.classes.rules.3: a rule needs exactly one of not_before, not_after",
            "e.yaml:16:9: entities.classes.rules.4: a rule needs exactly one of not_before, not_after",
            "e.yaml:17:34: entities.classes.rules.5.not_before: compares a field with itself",
            "e.yaml:18:22: entities.classes.rules.6.after: unknown key 'after' (valid: field, not_after, not_before)",
        ],
        id="rules between fields",
    ),
    pytest.param(
        """
        version: 1
        entities:
          students:
            source: BTEC_Students
            singular: student
            version_field: modified_time
            version_aliases: [last_modified, Event, student_no]
            fields:
              name: {from: Name, type: string, aliases: [full_name, NAME]}
              number: {from: Number, type: string, aliases: [full_name, name, student_no, Student_No, ""]}
              modified: {from: Modified_Time, type: datetime}
              code: {type: string, aliases: [Zoho_Id]}
              code_two: {from: Code, type: string}
          programs:
            source: Products
            singular: program
            version_aliases: [changed]
            fields:
              name: {from: Product_Name, type: string}
        """,
        [
            "e.yaml:6:20: entities.students.version_field: 'modified_time' differs from Zoho field "
            "'Modified_Time' of field 'modified' only in case: spell it 'Modified_Time'",
            "e.yaml:7:38: entities.students.version_aliases.1: alias 'Event' is a key of the form webhook "
            "itself (id, zoho_id, event): choose another",
            "e.yaml:7:45: entities.students.version_aliases.2: alias 'student_no' clashes with alias "
            "'student_no' of field 'number' (form keys match in any case): remove it or choose another",
            "e.yaml:9:61: entities.students.fields.name.aliases.1: alias 'NAME' is the Zoho name 'Name' in "
            "another case; form keys match in any case: remove it",
            "e.yaml:10:54: entities.students.fields.number.aliases.0: alias 'full_name' clashes with alias "
            "'full_name' of field 'name' (form keys match in any case): remove it or choose another",
            "e.yaml:10:65: entities.students.fields.number.aliases.1: alias 'name' clashes with Zoho field "
            "'Name' of field 'name' (form keys match in any case): remove it or choose another",
            "e.yaml:10:83: entities.students.fields.number.aliases.3: alias 'Student_No' is repeated: remove it",
            "e.yaml:10:95: entities.students.fields.number.aliases.4: alias '' is empty: remove it",
            "e.yaml:12:38: entities.students.fields.code.aliases.0: alias 'Zoho_Id' is a key of the form "
            "webhook itself (id, zoho_id, event): choose another",
            "e.yaml:13:24: entities.students.fields.code_two.from: Zoho field 'Code' clashes with Zoho field "
            "'code' of field 'code': form keys match in any case, so one key would name both; map only one of them",
            "e.yaml:17:22: entities.programs.version_aliases: needs version_field: name the Zoho field of the "
            "version first",
        ],
        id="form keys and aliases",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_descriptors_report_every_problem_with_its_place(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_a_valid_minimal_descriptor_loads() -> None:
    catalog = parse_catalog(textwrap.dedent(VALID))
    assert [f.source for f in catalog.entity("programs").fields] == ["Product_Name"]


def test_form_keys_are_each_zoho_name_and_alias_in_lower_case() -> None:
    catalog = parse_catalog(
        textwrap.dedent(VALID).replace("required: true}", "required: true, aliases: [Title]}")
        + "    version_field: Modified_Time\n    version_aliases: [changed_at]\n"
    )
    assert catalog.entity("programs").form_keys == {
        "product_name": "Product_Name",
        "title": "Product_Name",
        "modified_time": "Modified_Time",
        "changed_at": "Modified_Time",
    }


def test_unreadable_file_says_what_to_do(tmp_path: object) -> None:
    with pytest.raises(DescriptorError) as caught:
        load_catalog("/nonexistent/entities.yaml")
    assert str(caught.value) == (
        "/nonexistent/entities.yaml:1:1: cannot read the descriptor file: No such file or directory; "
        "set SYNCENGINE_ENTITIES or pass --entities"
    )


def test_published_json_schema_is_current() -> None:
    published = json.loads((ROOT / "entities.schema.json").read_text())
    assert published == json_schema(), "run `syncengine schema > entities.schema.json`"


def test_json_schema_accepts_the_school_file_and_rejects_typos() -> None:
    schema = json_schema()
    jsonschema.validate(yaml.safe_load(ENTITIES.read_text()), schema)
    broken = yaml.safe_load(VALID.replace("type: string", "type: strin"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
