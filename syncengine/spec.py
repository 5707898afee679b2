"""The descriptor language: the shape of `entities.yaml`, as msgspec Structs.

These Structs are the single definition of which keys exist and what type each takes. The
checker (`descriptors.py`) walks them to report every problem with its position, and
`json_schema()` publishes them for editors (`syncengine schema`).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal

import msgspec

from syncengine.fieldtypes import FIELD_TYPES, TRANSFORMS

FieldTypeName = Literal[
    "string", "text", "email", "integer", "decimal", "boolean",
    "date", "datetime", "choice", "multichoice", "lookup",
]  # fmt: skip
TransformName = Literal["trim", "lower"]
MoodleKind = Literal["user", "category", "course", "enrolment"]
LeaveAction = Literal["suspend", "unenrol", "hide", "nothing"]
Number = int | float | str


class Spec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every descriptor object: unknown keys are errors, values never change."""


class FieldSpec(Spec, kw_only=True, frozen=True):
    """One mapped Zoho field. `from` is the Zoho API name; it defaults to the field's name.

    `aliases` are other keys a form webhook may send the field as (`[student_id]`); a form's keys
    match the API name and the aliases in any case. JSON bodies use the API name, exactly."""

    type: FieldTypeName
    from_: str | None = msgspec.field(default=None, name="from")
    aliases: list[str] | None = None
    required: bool = False
    default: Any = None
    description: str | None = None
    max_length: int | None = None
    pattern: str | None = None
    transform: list[TransformName] | None = None
    min: Number | None = None
    max: Number | None = None
    choices: list[str] | None = None
    entity: str | None = None


class TargetSpec(Spec, kw_only=True, frozen=True):
    """One Moodle object a record becomes: `{kind: user, params: {username: "{academic_email|lower}"}}`.

    `params` maps a Moodle parameter of the kind to a literal (`5`) or a template (`"{zoho_id}"`,
    `"{program.moodle_id}"`, `"{name|first_word}"`). `when` lists, per choice field, the values under
    which the record belongs in Moodle; `leave` says what leaving it (or a delete) does: `suspend`,
    `unenrol`, `hide` or `nothing` (the kind's default when absent). `name` tells apart several
    targets of one entity; it defaults to the kind.
    """

    kind: MoodleKind
    name: str | None = None
    params: dict[str, str | int | bool] = {}
    when: dict[str, list[str]] = {}
    leave: LeaveAction | None = None


class RuleSpec(Spec, kw_only=True, frozen=True):
    """A rule between two fields of one record, checked once the record is merged with what is
    stored: `{field: end_date, not_before: start_date}`. Both fields are dates, date-times,
    integers or decimals of one type; a rule with either value empty holds."""

    field: str
    not_before: str | None = None
    not_after: str | None = None


class EntitySpec(Spec, kw_only=True, frozen=True):
    """One synced Zoho module. `version_field` names the Zoho field holding a record's version
    (`Modified_Time`); `version_aliases` are other keys a form webhook may send it as."""

    source: str
    singular: str
    description: str | None = None
    version_field: str | None = None
    version_aliases: list[str] = []
    fields: dict[str, FieldSpec]
    rules: list[RuleSpec] = []
    moodle: TargetSpec | list[TargetSpec] | None = None


class DescriptorFile(Spec, kw_only=True, frozen=True):
    """The whole of `entities.yaml`."""

    version: Literal[1]
    entities: dict[str, EntitySpec]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `entities.yaml`, for editors (yaml-language-server and the like)."""
    schema = msgspec.json.schema(DescriptorFile)
    for definition in schema["$defs"].values():
        # msgspec 0.23 dedents docstrings and earlier versions did not: the same text either way.
        if "description" in definition:
            definition["description"] = inspect.cleandoc(definition["description"])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "syncengine entities.yaml"
    return schema


# The Literal lists above are what editors see; the registries are what the engine runs.
assert set(typing.get_args(FieldTypeName)) == set(FIELD_TYPES), "FieldTypeName and FIELD_TYPES disagree"
assert set(typing.get_args(TransformName)) == set(TRANSFORMS), "TransformName and TRANSFORMS disagree"
