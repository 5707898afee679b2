"""The Moodle mapping: which Moodle objects a stored record becomes, with which parameters.

An entity's `moodle:` section (`spec.TargetSpec`) is compiled once, at load, into `Target`s; from
then on everything here is a pure function of a record's stored values:

    states = desired_states(entity.moodle, Record(zoho_id, values),   # values by our field names
                            moodle_ids={(lookup.target, parent_zoho_id): 12})
    states[0].kind, states[0].params    # the target's kind and its Moodle parameters

`KINDS` is the one table of what each Moodle kind takes; nothing else here knows Moodle.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from syncengine.spec import FieldSpec, LeaveAction, MoodleKind, TargetSpec

ParamType = Literal["int", "text"]
#: Where a problem stands, below the entity's `moodle` key, and whether it is the key itself.
Where = tuple[tuple[str | int, ...], str, bool]


@dataclass(frozen=True)
class StateParam:
    """The parameter that a condition drives: its value while the record belongs, and after
    `action` (for a user: `suspended` is 0, then 1 after `suspend`)."""

    name: str
    active: int
    left: int
    action: LeaveAction


@dataclass(frozen=True)
class Kind:
    """A Moodle object kind: its parameters (Moodle's names and types), the required ones, the
    parameters a find-or-create looks it up by (each tuple in turn; targets.py's look-ups read
    them), and its leave actions."""

    name: MoodleKind
    params: dict[str, ParamType]
    required: tuple[str, ...]
    finds_by: tuple[tuple[str, ...], ...]
    leaves: tuple[LeaveAction, ...]
    state: StateParam | None = None

    @property
    def default_leave(self) -> LeaveAction:
        return self.leaves[0]


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "user",
            {"username": "text", "email": "text", "firstname": "text", "lastname": "text",
             "idnumber": "text", "auth": "text", "suspended": "int"},
            required=("username", "email", "firstname", "lastname"),
            finds_by=(("idnumber",), ("username",), ("email",)),
            leaves=("suspend", "nothing"),
            state=StateParam("suspended", active=0, left=1, action="suspend"),
        ),
        Kind(
            "category",
            {"name": "text", "idnumber": "text", "parent": "int"},
            required=("name", "idnumber"),
            finds_by=(("idnumber",),),
            leaves=("nothing",),
        ),
        Kind(
            "course",
            {"fullname": "text", "shortname": "text", "categoryid": "int", "idnumber": "text",
             "startdate": "int", "enddate": "int", "visible": "int"},
            required=("fullname", "shortname", "categoryid"),
            finds_by=(("idnumber",),),
            leaves=("hide", "nothing"),
            state=StateParam("visible", active=1, left=0, action="hide"),
        ),
        Kind(
            "enrolment",
            {"roleid": "int", "userid": "int", "courseid": "int", "timestart": "int", "timeend": "int",
             "suspend": "int"},
            required=("roleid", "userid", "courseid"),
            finds_by=(("userid", "courseid"),),
            leaves=("suspend", "unenrol", "nothing"),
            state=StateParam("suspend", active=0, left=1, action="suspend"),
        ),
    )
}  # fmt: skip


def _words(text: str) -> list[str]:
    return text.split()


#: Template filters: text in, text out.
FILTERS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "trim": str.strip,
    "first_word": lambda text: (_words(text) or [""])[0],
    # The words after the first; a one-word value is kept whole (Moodle needs both names).
    "other_words": lambda text: " ".join(_words(text)[1:]) or text.strip(),
}
#: Field types whose value an `int` parameter takes as it is (dates as Unix times, booleans as 0/1).
INT_FIELD_TYPES = ("integer", "boolean", "date", "datetime")


@dataclass(frozen=True)
class Ref:
    """A placeholder: the value of field `source` (or of `zoho_id`) or, when `entity` is set, the
    Moodle id of that entity's record whose Zoho id is that value; then `filters`, in order."""

    source: str
    entity: str | None = None
    filters: tuple[str, ...] = ()
    gives_int: bool = False


Template = tuple[str | Ref, ...]


@dataclass(frozen=True)
class Target:
    """One compiled target of an entity: what `desired_state` reads."""

    entity: str
    name: str
    kind: Kind
    params: dict[str, int | Template]
    when: tuple[tuple[str, frozenset[str]], ...] = ()
    leave: LeaveAction = "nothing"

    @property
    def reads(self) -> frozenset[str]:
        """The fields (by our names) `desired_state` reads: its templates' placeholders (a lookup
        field for its record's Moodle id too) and its conditions; never `zoho_id`, which no
        update changes."""
        refs = (part for value in self.params.values() if not isinstance(value, int) for part in value)
        placeholders = {part.source for part in refs if isinstance(part, Ref) and part.source != "zoho_id"}
        return frozenset(placeholders | {name for name, _ in self.when})


@dataclass(frozen=True)
class Record:
    """A stored record: values by our field names (a lookup's value is the Zoho id it points to)."""

    zoho_id: str
    values: Mapping[str, Any]
    deleted: bool = False


@dataclass(frozen=True)
class DesiredState:
    """What one target of a record should be in Moodle.

    `params` are Moodle's names and types; a parameter whose value is empty or whose looked-up
    Moodle id is not known yet is left out. `active` is False when the record does not belong
    (deleted, outside its `when`, or a required parameter empty): then `leave` is the action to
    take and `reason` says why; a record that never reached Moodle needs no call then. `missing`
    lists the `(entity, zoho_id)` whose Moodle ids are needed and not known yet: wait for them.
    `digest` changes exactly when what Moodle would get changes (it does not depend on whether
    looked-up Moodle ids are known yet).
    """

    target: str
    kind: str
    params: dict[str, int | str]
    active: bool
    leave: LeaveAction | None = None
    reason: str | None = None
    missing: tuple[tuple[str, str], ...] = ()
    digest: str = field(default="", compare=False)

    @property
    def finds_by(self) -> tuple[tuple[str, ...], ...]:
        return KINDS[self.kind].finds_by


# Computing desired states.


def desired_states(
    targets: Sequence[Target], record: Record, moodle_ids: Mapping[tuple[str, str], int]
) -> tuple[DesiredState, ...]:
    """Every target of a record, in the order of the mapping (the first is the record's own object)."""
    return tuple(desired_state(target, record, moodle_ids) for target in targets)


def fields_read(targets: Sequence[Target]) -> frozenset[str]:
    """Every field the targets read: an update that changes none of them changes nothing Moodle
    gets. In the shipped entities.yaml an enrollment's mapping reads student, class, start_date
    and end_date, not enrollment_type."""
    return frozenset().union(*(target.reads for target in targets))


def mapping_digest(targets: Sequence[Target], record: Record) -> str:
    """One digest of all of a record's targets: equal for two versions of a record exactly when
    Moodle would get the same thing from both."""
    joined = ",".join(desired_state(target, record, {}).digest for target in targets)
    return hashlib.sha256(joined.encode()).hexdigest()


class _Unknown:
    """A parameter holding a looked-up Moodle id that is not known yet (listed in `missing`)."""


_EMPTY = object()


def desired_state(target: Target, record: Record, moodle_ids: Mapping[tuple[str, str], int]) -> DesiredState:
    """What `target` makes of `record`, given the Moodle ids known so far."""
    missing: dict[tuple[str, str], None] = {}
    params: dict[str, int | str] = {}
    symbolic: dict[str, Any] = {}
    empty: dict[str, str] = {}
    for name, value in target.params.items():
        resolved = _render(name, value, target, record, moodle_ids, missing, empty)
        shown = _render(name, value, target, record, None, {}, {})
        if resolved is not _EMPTY and not isinstance(resolved, _Unknown):
            params[name] = resolved
        if shown is not _EMPTY:
            symbolic[name] = shown
    reason = _why_not(target, record, empty)
    state = target.kind.state
    if state is not None:
        value = state.left if reason is not None and target.leave == state.action else state.active
        params[state.name] = symbolic[state.name] = value
    leave = target.leave if reason is not None else None
    canonical = [target.name, target.kind.name, sorted(symbolic.items()), reason is None, leave]
    digest = hashlib.sha256(json.dumps(canonical, default=str).encode()).hexdigest()
    return DesiredState(target.name, target.kind.name, params, reason is None, leave, reason, tuple(missing), digest)


def _why_not(target: Target, record: Record, empty: dict[str, str]) -> str | None:
    if record.deleted:
        return "deleted"
    for field_name, allowed in target.when:
        value = record.values.get(field_name)
        if value not in allowed:
            shown = "empty" if value in (None, "") else f"'{value}'"
            return f"{field_name} is {shown}; it belongs while one of: {', '.join(sorted(allowed))}"
    for param in target.kind.required:
        if param in empty:
            return f"'{param}' is empty: {empty[param]} has no value"
    return None


def _render(
    param: str,
    value: int | Template,
    target: Target,
    record: Record,
    moodle_ids: Mapping[tuple[str, str], int] | None,
    missing: dict[tuple[str, str], None],
    empty: dict[str, str],
) -> Any:
    """A parameter's value in Moodle's type; `_EMPTY`, or a `_Unknown` Moodle id. Without
    `moodle_ids`, looked-up Moodle ids stand as their `(entity, zoho_id)` (for the digest)."""
    if isinstance(value, int):
        return value
    parts: list[Any] = []
    unknown = False
    for part in value:
        if isinstance(part, str):
            parts.append(part)
            continue
        raw = record.zoho_id if part.source == "zoho_id" else record.values.get(part.source)
        if raw is None or raw == "" or raw == []:
            empty.setdefault(param, part.source)
            return _EMPTY
        if part.entity is not None:
            key = (part.entity, str(raw))
            if moodle_ids is None:
                raw = f"<moodle id of {key[0]} {key[1]}>"
            elif key in moodle_ids:
                raw = moodle_ids[key]
            else:
                missing[key] = None
                unknown = True
        if part.filters:
            text = _text(raw)
            for name in part.filters:
                text = FILTERS[name](text)
            raw = text
        parts.append(raw)
    if unknown:
        return _Unknown()
    if len(parts) == 1 and not isinstance(value[0], str):
        result = parts[0]
    else:
        result = "".join(_text(part) for part in parts)
    if target.kind.params[param] == "text":
        return _text(result) if result != "" else _EMPTY
    return result if moodle_ids is None and isinstance(result, str) else as_int(result)


def as_int(value: Any) -> int:
    """A value as Moodle's int: a date at 00:00 UTC and a date-time as Unix times, a boolean as 0/1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(aware.timestamp())
    if isinstance(value, date):
        return calendar.timegm(value.timetuple())
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError(f"{value!r} is not an integer")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list):
        return ";".join(map(str, value))
    return str(value)


# Compiling (and checking) a `moodle:` section.

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def compile_targets(
    entity: str,
    raw: TargetSpec | Sequence[TargetSpec | None],
    fields: Mapping[str, FieldSpec],
    mapped: Collection[str],
    unchecked: Collection[str] = (),
) -> tuple[tuple[Target, ...], list[Where]]:
    """The targets of `entity`'s `moodle:` section, and every problem with it (where, below the
    `moodle` key; what; whether the place is a key). `mapped` names the entities that have a
    mapping; a None target and the fields named in `unchecked` are broken, reported elsewhere."""
    specs = [raw] if isinstance(raw, TargetSpec) else raw
    prefixes: list[tuple[str | int, ...]] = [()] if isinstance(raw, TargetSpec) else [(i,) for i in range(len(raw))]
    problems: list[Where] = []
    if not specs:
        problems.append(((), "lists no target: add one, or remove the moodle key", False))
    by_name = {name: name for name in fields} | {(spec.from_ or name): name for name, spec in fields.items()}
    seen: set[str] = set()
    targets = []
    for index, (spec, prefix) in enumerate(zip(specs, prefixes, strict=True)):
        if spec is None:
            continue
        name = spec.name or spec.kind
        if spec.name is not None and not _NAME.match(spec.name):
            problems.append(((*prefix, "name"), f"'{spec.name}' must be lower_snake_case", False))
        if name in seen:
            where = (*prefix, "name") if spec.name else prefix
            problems.append((where, f"two targets are named '{name}': give each a distinct name", False))
        seen.add(name)
        context = _Context(entity, fields, by_name, mapped, set(unchecked), index == 0, prefix, problems)
        targets.append(context.target(name, spec))
    return tuple(targets), problems


@dataclass
class _Context:
    entity: str
    fields: Mapping[str, FieldSpec]
    by_name: dict[str, str]
    mapped: Collection[str]
    unchecked: set[str]
    first: bool
    prefix: tuple[str | int, ...]
    problems: list[Where]

    def report(self, where: tuple[str | int, ...], message: str, key: bool = False) -> None:
        self.problems.append(((*self.prefix, *where), message, key))

    def target(self, name: str, spec: TargetSpec) -> Target:
        kind = KINDS[spec.kind]
        params: dict[str, int | Template] = {}
        for param, raw in spec.params.items():
            if kind.state is not None and param == kind.state.name:
                self.report(
                    ("params", param),
                    f"'{param}' is set by 'when' and 'leave' ({kind.state.active} while the record belongs, "
                    f"{kind.state.left} after '{kind.state.action}'): remove it",
                    key=True,
                )
            elif param not in kind.params:
                valid = ", ".join(sorted(p for p in kind.params if kind.state is None or p != kind.state.name))
                self.report(
                    ("params", param), f"unknown parameter '{param}' of {_a(kind.name)} (valid: {valid})", key=True
                )
            else:
                value = self.value(param, kind.params[param], raw)
                if value is not None:
                    params[param] = value
        absent = [param for param in kind.required if param not in spec.params]
        if absent:
            self.report(
                ("params",) if spec.params else (),
                f"{_a(kind.name)} needs {', '.join(repr(p) for p in absent)} (required: {', '.join(kind.required)})",
            )
        if spec.leave is not None and spec.leave not in kind.leaves:
            self.report(
                ("leave",), f"'{spec.leave}' does not apply to {_a(kind.name)} (its actions: {', '.join(kind.leaves)})"
            )
        return Target(self.entity, name, kind, params, self.conditions(spec.when), spec.leave or kind.default_leave)

    def conditions(self, when: dict[str, list[str]]) -> tuple[tuple[str, frozenset[str]], ...]:
        conditions = []
        for key, values in when.items():
            name = self.by_name.get(key)
            if name is None:
                if key not in self.unchecked:
                    choices = [n for n, s in self.fields.items() if s.type == "choice"]
                    self.report(("when", key), f"unknown field '{key}' (choice fields: {', '.join(choices)})", key=True)
                continue
            spec = self.fields[name]
            if spec.type != "choice":
                self.report(("when", key), f"field '{key}' is of type '{spec.type}'; a condition needs a choice field")
                continue
            if not values:
                self.report(("when", key), "lists no value: list the values under which the record belongs")
            for index, value in enumerate(values):
                if value not in (spec.choices or []):
                    self.report(
                        ("when", key, index),
                        f"'{value}' is not a choice of field '{key}' (its choices: {', '.join(spec.choices or [])})",
                    )
            conditions.append((name, frozenset(values)))
        return tuple(conditions)

    def value(self, param: str, kind: ParamType, raw: str | int | bool) -> int | Template | None:
        where = ("params", param)
        if isinstance(raw, bool):
            raw = int(raw) if kind == "int" else ("1" if raw else "0")
        if isinstance(raw, int):
            return raw if kind == "int" else (str(raw),)
        template = self.template(where, raw)
        if template is None or kind == "text":
            return template
        if len(template) == 1 and isinstance(template[0], str):
            try:
                return as_int(template[0])
            except ValueError:
                self.report(where, f"'{param}' takes an integer, got '{raw}'")
                return None
        if len(template) != 1:
            self.report(where, f"'{param}' takes an integer; text around a placeholder makes text: use one placeholder")
            return None
        ref = template[0]
        assert isinstance(ref, Ref)
        if not ref.gives_int:
            what = (
                "a filter gives text" if ref.filters
                else "zoho_id is text" if ref.source == "zoho_id"
                else f"field '{ref.source}' is of type '{self.fields[ref.source].type}'"
            )  # fmt: skip
            self.report(
                where,
                f"'{param}' takes an integer; {what}: use an integer, boolean, date or date-time field, "
                "or a lookup's moodle_id",
            )
            return None
        return template

    def template(self, where: tuple[str | int, ...], text: str) -> Template | None:
        parts: list[str | Ref] = []
        literal = ""
        position = 0
        ok = True
        for match in _TOKEN.finditer(text):
            literal += text[position : match.start()]
            position = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                literal += token[0]
            elif match.group(1) is None:
                self.report(where, f"unmatched '{token}' in '{text}': write '{token * 2}' for a brace itself")
                return None
            else:
                if literal:
                    parts.append(literal)
                literal = ""
                ref = self.ref(where, match.group(1))
                ok = ok and ref is not None
                if ref is not None:
                    parts.append(ref)
        literal += text[position:]
        if literal:
            parts.append(literal)
        return tuple(parts) if ok else None

    def ref(self, where: tuple[str | int, ...], expression: str) -> Ref | None:
        head, *filters = [piece.strip() for piece in expression.split("|")]
        shown = "{" + expression + "}"
        if not head:
            self.report(where, f"'{shown}' names no field")
            return None
        unknown = [name for name in filters if name not in FILTERS]
        for filter_name in unknown:
            self.report(where, f"unknown filter '{filter_name}' in '{shown}' (valid: {', '.join(FILTERS)})")
        source, dot, attribute = head.partition(".")
        if source == "moodle_id" and not dot:
            if self.first:
                self.report(
                    where,
                    "'{moodle_id}' is this record's own Moodle id, known once its first target is delivered: "
                    "use it in a later target only",
                )
                return None
            return None if unknown else Ref("zoho_id", self.entity, tuple(filters), gives_int=not filters)
        if source == "zoho_id" and not dot:
            return None if unknown else Ref("zoho_id", None, tuple(filters))
        name = self.by_name.get(source)
        if name is None:
            if source not in self.unchecked:
                valid = ", ".join(["zoho_id", "moodle_id", *self.fields])
                self.report(where, f"unknown field '{source}' in '{shown}' (valid: {valid}, or a field's Zoho name)")
            return None
        spec = self.fields[name]
        if not dot:
            gives_int = spec.type in INT_FIELD_TYPES and not filters
            return None if unknown else Ref(name, None, tuple(filters), gives_int)
        if attribute != "moodle_id":
            self.report(where, f"'{shown}': a looked-up record gives only its moodle_id ('{{{source}.moodle_id}}')")
            return None
        if spec.type != "lookup" or spec.entity is None:
            self.report(
                where, f"'{shown}': field '{source}' is of type '{spec.type}'; only a lookup's record has a Moodle id"
            )
            return None
        if spec.entity not in self.mapped:
            self.report(
                where,
                f"'{shown}': entity '{spec.entity}' has no moodle mapping, so its records have no Moodle id: "
                f"map {spec.entity} or remove this",
            )
            return None
        return None if unknown else Ref(name, spec.entity, tuple(filters), gives_int=not filters)


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeio' else 'a'} {noun}"


assert set(typing.get_args(MoodleKind)) == set(KINDS), "MoodleKind and KINDS disagree"
assert {a for k in KINDS.values() for a in k.leaves} == set(typing.get_args(LeaveAction)), "LeaveAction and KINDS"
