"""Entity descriptors: load `entities.yaml`, report every problem with its place, build the catalog.

    catalog = load_catalog("entities.yaml")
    catalog.entity(name).requires   # the entities its required lookups point to, parents first

Checking never stops at the first problem: it walks the whole file against the Structs of
`spec.py` and reports each problem as `FILE:LINE:COL: path: message`.
"""

from __future__ import annotations

import graphlib
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from syncengine.exceptions import Misconfigured, NotFound
from syncengine.fieldtypes import (
    COMMON_OPTIONS,
    EMAIL_LENGTH,
    FIELD_TYPES,
    TRANSFORMS,
    VARCHAR_LIMIT,
    FieldType,
    Options,
)
from syncengine.mapping import Target, compile_targets
from syncengine.sourcemap import Document, YamlError, load_yaml
from syncengine.spec import DescriptorFile, EntitySpec, FieldSpec, RuleSpec, Spec, TargetSpec

#: Columns every entity table has; no field may take these names.
SYSTEM_COLUMNS = frozenset(
    {"id", "tenant_id", "zoho_id", "fingerprint", "source_version", "moodle_id"}
    | {"created_at", "updated_at", "deleted_at"}
)
ENGINE_TABLE_PREFIX = "syncengine_"
#: The keys of a form webhook that name the record and the event, not a field (in any case).
FORM_WEBHOOK_KEYS = ("id", "zoho_id", "event")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: The field types a rule may compare (`RuleSpec`), and the words of each comparison.
ORDERED_TYPES = ("date", "datetime", "integer", "decimal")
RULE_COMPARISONS = {"not_before": "before", "not_after": "after"}
S = typing.TypeVar("S", bound=Spec)


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a descriptor file, where it is and what it is."""

    filename: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}: {self.message}"


class DescriptorError(Misconfigured):
    """The descriptor file has problems; `problems` lists every one of them."""

    code = "invalid_descriptors"

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


class UnknownEntity(NotFound):
    """No entity of that name; the message lists the known ones."""

    code = "unknown_entity"

    def __init__(self, name: str, known: typing.Iterable[str]) -> None:
        super().__init__(f"unknown entity '{name}' (known: {', '.join(known)})")
        self.name = name


@dataclass(frozen=True, slots=True)
class Field:
    """One mapped field, ready to parse values."""

    name: str
    source: str
    type: FieldType
    options: Options
    required: bool = False
    default: Any = None
    target: str | None = None
    description: str | None = None
    #: Other keys a form webhook may send the field as (`FieldSpec.aliases`).
    aliases: tuple[str, ...] = ()

    @property
    def is_lookup(self) -> bool:
        return self.target is not None

    @property
    def value_column(self) -> str:
        """The column holding the field's value (a lookup's: the referenced Zoho id)."""
        return lookup_columns(self.name)[0] if self.is_lookup else self.name

    def parse(self, raw: Any) -> Any:
        return self.type.parse(raw, self.options)


@dataclass(frozen=True, slots=True)
class Rule:
    """`field` may not be before (`not_before`) or after (`not_after`) `other`, in one record.

    For `{field: end_date, not_before: start_date}`, an end date of 2026-01-01 and a start date
    of 2026-02-01 break it: "is 2026-01-01, before Start_Date (2026-02-01); it may not be before it".
    """

    field: Field
    comparison: str
    other: Field

    def broken(self, values: dict[str, Any]) -> str | None:
        """What is wrong with `values` (every field of a record), or None when the rule holds."""
        value, other = values[self.field.name], values[self.other.name]
        if value is None or other is None:
            return None
        if (value < other) if self.comparison == "not_before" else (value > other):
            word = RULE_COMPARISONS[self.comparison]
            return f"is {_shown(value)}, {word} {self.other.source} ({_shown(other)}); it may not be {word} it"
        return None

    def __str__(self) -> str:
        return f"{self.field.source} may not be {RULE_COMPARISONS[self.comparison]} {self.other.source}"


def _shown(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


@dataclass(frozen=True)
class Entity:
    """One synced Zoho module, as the pipeline, the store and the HTTP layer see it."""

    name: str
    singular: str
    source: str
    fields: tuple[Field, ...]
    version_field: str | None = None
    description: str | None = None
    #: Its Moodle targets (`mapping.desired_states` reads them); None when it does not land in Moodle.
    moodle: tuple[Target, ...] | None = None
    rules: tuple[Rule, ...] = ()
    version_aliases: tuple[str, ...] = ()
    lookups: tuple[Field, ...] = field(init=False)
    #: Each lookup field with the entity it points to (typed: a lookup always has one).
    lookup_targets: tuple[tuple[Field, str], ...] = field(init=False)
    requires: tuple[str, ...] = field(init=False)
    #: A form webhook's keys, lower-cased, to the Zoho names they stand for: each field's API
    #: name and aliases, and the version field's (`{"modified_time": "Modified_Time"}`).
    form_keys: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        lookups = tuple(f for f in self.fields if f.is_lookup)
        object.__setattr__(self, "lookups", lookups)
        object.__setattr__(self, "lookup_targets", tuple((f, f.target) for f in lookups if f.target is not None))
        required = dict.fromkeys(f.target for f in lookups if f.required)
        object.__setattr__(self, "requires", tuple(t for t in required if t))
        names = [(f.source, (f.source, *f.aliases)) for f in self.fields]
        if self.version_field is not None:
            names.append((self.version_field, (self.version_field, *self.version_aliases)))
        form_keys: dict[str, str] = {}
        for source, keys in names:
            for key in keys:
                form_keys.setdefault(key.lower(), source)
        object.__setattr__(self, "form_keys", form_keys)

    @property
    def id_key(self) -> str:
        """The key of a record's id in reports: `zoho_student_id`."""
        return f"zoho_{self.singular}_id"


@dataclass(frozen=True)
class Catalog:
    """Every entity of a descriptor file, in dependency order (parents first)."""

    entities: dict[str, Entity]
    filename: str = "entities.yaml"

    def entity(self, name: str) -> Entity:
        try:
            return self.entities[name]
        except KeyError:
            raise UnknownEntity(name, self.entities) from None

    def __iter__(self) -> Iterator[Entity]:
        return iter(self.entities.values())


def load_catalog(path: str | Path) -> Catalog:
    """Load and check a descriptor file; raise `DescriptorError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        message = f"cannot read the descriptor file: {error.strerror}; set SYNCENGINE_ENTITIES or pass --entities"
        raise DescriptorError([Problem(str(path), 1, 1, message)]) from None
    except UnicodeDecodeError as error:
        raise DescriptorError([Problem(str(path), 1, 1, f"not UTF-8 text: {error.reason}")]) from None
    return parse_catalog(text, str(path))


def parse_catalog(text: str, filename: str = "entities.yaml") -> Catalog:
    """Check descriptor text and build its catalog; raise `DescriptorError` on any problem."""
    try:
        document = load_yaml(text, filename)
    except YamlError as error:
        raise DescriptorError([Problem(filename, error.line, error.column, error.message)]) from None
    problems = _Checker(document).run()
    if problems:
        raise DescriptorError(problems)
    return _build_catalog(msgspec.convert(document.data, DescriptorFile), filename)


class _Checker:
    """Collects every problem of one document: structure first, then meaning."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.problems: set[Problem] = set()

    def report(self, path: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        line, column = self.document.position(path, key=key)
        dotted = ".".join(str(part) for part in path)
        text = f"{dotted}: {message}" if dotted else message
        self.problems.add(Problem(self.document.filename, line, column, text))

    def run(self) -> list[Problem]:
        for path, _ in self.document.duplicates:
            self.report(path, f"duplicate key '{path[-1]}'", key=True)
        if self.document.data is None:
            self.report((), "the file is empty; it needs 'version: 1' and 'entities:'")
        else:
            self._structure(self.document.data, DescriptorFile, ())
            if isinstance(self.document.data, dict) and isinstance(self.document.data.get("entities"), dict):
                self._meaning(self.document.data["entities"])
        return sorted(self.problems, key=lambda p: (p.line, p.column, p.message))

    # Structure: keys and value types, against the Structs of spec.py.

    def _structure(self, value: Any, annotation: Any, path: tuple[str | int, ...]) -> bool:
        struct = _struct_of(annotation)
        listed = _list_of(annotation)
        if listed is not None and isinstance(value, list):
            annotation = listed
        elif struct is not None and not (value is None and _is_optional(annotation)):
            return self._object(value, struct, path)
        if typing.get_origin(annotation) is dict:
            if not isinstance(value, dict):
                self.report(path, f"expected a mapping, got {_kind(value)}")
                return False
            item_type = typing.get_args(annotation)[1]
            return all([self._structure(v, item_type, (*path, k)) for k, v in value.items()])
        if typing.get_origin(annotation) is list and isinstance(value, list):
            item_type = typing.get_args(annotation)[0]
            return all([self._structure(v, item_type, (*path, i)) for i, v in enumerate(value)])
        literal = _literal_of(annotation)
        if literal is not None and value is not None and not isinstance(value, (list, dict)):
            if value not in literal:
                noun = next((p for p in reversed(path) if isinstance(p, str)), "value")
                self.report(path, f"unknown {noun} {value!r} (valid: {', '.join(map(str, literal))})")
                return False
            return True
        try:
            msgspec.convert(value, annotation)
        except msgspec.ValidationError as error:
            self.report(path, str(error).split(" - at ")[0].replace("`", "").lower())
            return False
        return True

    def _object(self, value: Any, struct: type[Spec], path: tuple[str | int, ...]) -> bool:
        if not isinstance(value, dict):
            self.report(path, f"expected a mapping, got {_kind(value)}")
            return False
        known = {f.encode_name: f for f in msgspec.structs.fields(struct)}
        ok = True
        for key in value:
            if key not in known:
                self.report((*path, key), f"unknown key '{key}' (valid: {', '.join(sorted(known))})", key=True)
                ok = False
        for name, info in known.items():
            if info.required and name not in value:
                self.report(path, f"missing required key '{name}'")
                ok = False
        hints = typing.get_type_hints(struct)
        for name, info in known.items():
            if name in value:
                ok = self._structure(value[name], hints[info.name], (*path, name)) and ok
        return ok

    # Meaning: options per type, names, lookups, dependencies. Checked on every part that is
    # well-formed, so that one broken field hides nothing else.

    def _meaning(self, entities: dict[str, Any]) -> None:
        owners: dict[str, dict[str, str]] = {"singular": {}, "source": {}}
        graph: dict[str, set[str]] = {}
        mapped = {name for name, raw in entities.items() if isinstance(raw, dict) and raw.get("moodle")}
        for name, raw in entities.items():
            if not isinstance(raw, dict):
                continue
            for attribute, seen in owners.items():
                value = raw.get(attribute)
                if isinstance(value, str) and value in seen:
                    self.report(
                        ("entities", name, attribute), f"duplicate {attribute} '{value}' (also used by {seen[value]})"
                    )
                if isinstance(value, str):
                    seen.setdefault(value, name)
            fields = _valid_parts(raw.get("fields"), FieldSpec)
            self._entity(name, raw, fields, set(entities), mapped)
            graph[name] = {f.entity for f in fields.values() if f.entity in entities and f.required}
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as error:
            cycle = error.args[1]
            self.report(
                ("entities", cycle[0]),
                f"dependency cycle through required lookups: {' -> '.join(reversed(cycle))}",
                key=True,
            )

    def _entity(
        self, name: str, raw: dict[str, Any], fields: dict[str, FieldSpec], known: set[str], mapped: set[str]
    ) -> None:
        path: tuple[str, ...] = ("entities", name)
        if not _NAME.match(name) or name.startswith(ENGINE_TABLE_PREFIX):
            self.report(
                path,
                f"entity name '{name}' must be lower_snake_case and not start with '{ENGINE_TABLE_PREFIX}'",
                key=True,
            )
        singular = raw.get("singular")
        if isinstance(singular, str) and not _NAME.match(singular):
            self.report((*path, "singular"), f"'{singular}' must be lower_snake_case")
        if raw.get("fields") == {}:
            self.report((*path, "fields"), "an entity needs at least one field")
        columns: dict[str, str] = {}
        sources: dict[str, str] = {}
        for field_name, spec in fields.items():
            field_path = (*path, "fields", field_name)
            self._field(field_path, spec, known)
            source = spec.from_ or field_name
            if source in sources:
                self.report((*field_path, "from"), f"Zoho field '{source}' is already mapped by '{sources[source]}'")
            sources.setdefault(source, field_name)
            if not _NAME.match(field_name):
                self.report(field_path, f"field name '{field_name}' must be lower_snake_case", key=True)
            for column in _columns_of(field_name, spec):
                if column in SYSTEM_COLUMNS or column in columns:
                    owner = "a system column" if column in SYSTEM_COLUMNS else f"field '{columns[column]}'"
                    self.report(field_path, f"column '{column}' clashes with {owner}; rename the field", key=True)
                columns.setdefault(column, field_name)
        self._form_keys(path, raw, fields)
        self._rules(path, raw.get("rules"), fields)
        self._moodle(path, raw, fields, mapped)

    def _moodle(
        self, path: tuple[str, ...], raw: dict[str, Any], fields: dict[str, FieldSpec], mapped: set[str]
    ) -> None:
        """The `moodle:` section, once it is well-formed: see `mapping.compile_targets`."""
        moodle: TargetSpec | list[TargetSpec | None] | None = None
        if isinstance(raw.get("moodle"), list):  # the well-formed targets; a broken one keeps its place
            moodle = [_valid_parts({"target": item}, TargetSpec).get("target") for item in raw["moodle"]]
        else:
            moodle = _valid_parts({"moodle": raw.get("moodle")}, TargetSpec).get("moodle")
        if moodle is None or not isinstance(raw.get("fields"), dict):
            return
        broken = set(raw["fields"]) - set(fields)
        broken |= {str(v["from"]) for v in raw["fields"].values() if isinstance(v, dict) and "from" in v}
        for where, message, key in compile_targets(path[-1], moodle, fields, mapped, broken)[1]:
            self.report((*path, "moodle", *where), message, key=key)

    def _form_keys(self, path: tuple[str, ...], raw: dict[str, Any], fields: dict[str, FieldSpec]) -> None:
        """A form webhook's keys match in any case, so each key (an API name or an alias) may
        stand for one Zoho name only; an alias is none of the webhook's own keys."""
        taken: dict[str, tuple[str, str]] = {}  # lower-cased key: (the Zoho name, who claims it)
        for field_name, spec in fields.items():
            source = spec.from_ or field_name
            where = (*path, "fields", field_name, *(("from",) if spec.from_ else ()))
            owner = taken.setdefault(source.lower(), (source, f"Zoho field '{source}' of field '{field_name}'"))
            if owner[0] != source:
                self.report(
                    where,
                    f"Zoho field '{source}' clashes with {owner[1]}: form keys match in any case, "
                    "so one key would name both; map only one of them",
                    key=not spec.from_,
                )
        version = raw.get("version_field")
        if isinstance(version, str):
            owner = taken.setdefault(version.lower(), (version, f"version_field '{version}'"))
            if owner[0] != version:
                self.report(
                    (*path, "version_field"),
                    f"'{version}' differs from {owner[1]} only in case: spell it '{owner[0]}'",
                )
        claims = [
            ((*path, "fields", name, "aliases"), spec.from_ or name, f"field '{name}'", spec.aliases or [])
            for name, spec in fields.items()
        ]
        aliases = raw.get("version_aliases")
        if isinstance(aliases, list) and all(isinstance(alias, str) for alias in aliases):
            if not isinstance(version, str):
                self.report((*path, "version_aliases"), "needs version_field: name the Zoho field of the version first")
            else:
                claims.append(((*path, "version_aliases"), version, "version_field", aliases))
        for where, source, whose, keys in claims:
            for index, alias in enumerate(keys):
                lower = alias.lower()
                if not alias.strip():
                    problem = "is empty: remove it"
                elif lower == source.lower():
                    problem = f"is the Zoho name '{source}' in another case; form keys match in any case: remove it"
                elif lower in FORM_WEBHOOK_KEYS:
                    problem = f"is a key of the form webhook itself ({', '.join(FORM_WEBHOOK_KEYS)}): choose another"
                elif lower in taken and taken[lower][0] == source:
                    problem = "is repeated: remove it"
                elif lower in taken:
                    problem = (
                        f"clashes with {taken[lower][1]} (form keys match in any case): remove it or choose another"
                    )
                else:
                    taken[lower] = (source, f"alias '{alias}' of {whose}")
                    continue
                self.report((*where, index), f"alias '{alias}' {problem}")

    def _rules(self, path: tuple[str, ...], raw: Any, fields: dict[str, FieldSpec]) -> None:
        for index, rule in _valid_items(raw, RuleSpec):
            rule_path: tuple[str | int, ...] = (*path, "rules", index)
            given = [key for key in RULE_COMPARISONS if getattr(rule, key) is not None]
            if len(given) != 1:
                self.report(rule_path, f"a rule needs exactly one of {', '.join(RULE_COMPARISONS)}")
            for key in ("field", *given):
                name = getattr(rule, key)
                if name not in fields:
                    self.report((*rule_path, key), f"unknown field '{name}' (valid: {', '.join(fields)})")
                elif fields[name].type not in ORDERED_TYPES:
                    self.report(
                        (*rule_path, key),
                        f"field '{name}' is of type '{fields[name].type}'; rules compare {', '.join(ORDERED_TYPES)}",
                    )
            if len(given) == 1 and rule.field in fields and getattr(rule, given[0]) in fields:
                first, second = fields[rule.field], fields[getattr(rule, given[0])]
                if first.type in ORDERED_TYPES and second.type != first.type:
                    self.report(
                        (*rule_path, given[0]),
                        f"compares a {first.type} with a {second.type}; both fields must be of one type",
                    )
                elif rule.field == getattr(rule, given[0]):
                    self.report((*rule_path, given[0]), "compares a field with itself")

    def _field(self, path: tuple[str, ...], spec: FieldSpec, known: set[str]) -> None:
        kind = FIELD_TYPES[spec.type]
        given = {f.encode_name for f in msgspec.structs.fields(FieldSpec) if getattr(spec, f.name) is not None}
        for option in sorted(given - COMMON_OPTIONS - kind.options - {"required", "aliases"}):
            valid = ", ".join(sorted(kind.options)) or "none"
            self.report(
                (*path, option),
                f"option '{option}' does not apply to type '{spec.type}' (its options: {valid})",
                key=True,
            )
        if "choices" in kind.options:
            if not spec.choices:
                self.report(path, f"type '{spec.type}' needs 'choices'")
            elif len(set(spec.choices)) != len(spec.choices):
                self.report((*path, "choices"), "choices are repeated")
        if spec.type == "lookup":
            if spec.entity is None:
                self.report(path, "type 'lookup' needs 'entity'")
            elif spec.entity not in known:
                self.report((*path, "entity"), f"unknown entity '{spec.entity}' (known: {', '.join(sorted(known))})")
        if spec.max_length is not None and spec.max_length < 1:
            self.report((*path, "max_length"), "must be at least 1")
        limit = EMAIL_LENGTH if spec.type == "email" else VARCHAR_LIMIT
        if spec.max_length is not None and spec.max_length > limit:
            self.report((*path, "max_length"), f"must be at most {limit:,} (what the column can hold)")
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as error:
                self.report((*path, "pattern"), f"not a valid regular expression: {error}")
        bounds = {}
        for bound in ("min", "max"):
            raw = getattr(spec, bound)
            if raw is not None and bound in kind.options:
                try:
                    bounds[bound] = kind.parse(raw, Options())
                except ValueError as error:
                    self.report((*path, bound), f"not a valid {spec.type}: {error}")
                    return
        if len(bounds) == 2 and bounds["min"] > bounds["max"]:
            self.report((*path, "min"), "is greater than max")
        options = _options(spec, compile_pattern=False)
        if spec.default is not None:
            try:
                kind.parse(spec.default, options)
            except ValueError as error:
                self.report((*path, "default"), f"not a valid {spec.type}: {error}")


def _build_catalog(spec: DescriptorFile, filename: str) -> Catalog:
    mapped = {name for name, entity in spec.entities.items() if entity.moodle}
    entities = {name: _build_entity(name, entity, mapped) for name, entity in spec.entities.items()}
    return Catalog({name: entities[name] for name in _dependency_order(spec)}, filename)


def _build_entity(name: str, spec: EntitySpec, mapped: set[str]) -> Entity:
    fields = []
    for field_name, field_spec in spec.fields.items():
        kind = FIELD_TYPES[field_spec.type]
        options = _options(field_spec, compile_pattern=True)
        default = None if field_spec.default is None else kind.parse(field_spec.default, options)
        fields.append(
            Field(
                name=field_name,
                source=field_spec.from_ or field_name,
                type=kind,
                options=options,
                required=field_spec.required,
                default=default,
                target=field_spec.entity,
                description=field_spec.description,
                aliases=tuple(field_spec.aliases or ()),
            )
        )
    by_name = {f.name: f for f in fields}
    rules = tuple(
        Rule(by_name[rule.field], comparison, by_name[other])
        for rule in spec.rules
        for comparison, other in ((key, getattr(rule, key)) for key in RULE_COMPARISONS)
        if other is not None
    )
    return Entity(
        name=name,
        singular=spec.singular,
        source=spec.source,
        fields=tuple(fields),
        version_field=spec.version_field,
        version_aliases=tuple(spec.version_aliases),
        description=spec.description,
        moodle=compile_targets(name, spec.moodle, spec.fields, mapped)[0] if spec.moodle else None,
        rules=rules,
    )


def _dependency_order(spec: DescriptorFile) -> list[str]:
    """Parents first; optional lookups count too where they make no cycle."""
    order = list(spec.entities)
    for graph in (
        {name: {f.entity for f in e.fields.values() if f.entity} for name, e in spec.entities.items()},
        {name: _requires(e) for name, e in spec.entities.items()},
    ):
        try:
            sorter = graphlib.TopologicalSorter(graph)
            sorter.prepare()
        except graphlib.CycleError:
            continue
        result: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=order.index)
            result.extend(ready)
            sorter.done(*ready)
        return result
    return order


def _requires(entity: EntitySpec) -> set[str]:
    return {f.entity for f in entity.fields.values() if f.entity and f.required}


def _options(spec: FieldSpec, *, compile_pattern: bool) -> Options:
    kind = FIELD_TYPES[spec.type]

    def bound(raw: Any) -> Any:
        return None if raw is None or "min" not in kind.options else kind.parse(raw, Options())

    return Options(
        max_length=spec.max_length,
        min=bound(spec.min),
        max=bound(spec.max),
        pattern=re.compile(spec.pattern) if compile_pattern and spec.pattern else None,
        choices=tuple(spec.choices or ()),
        transforms=tuple(TRANSFORMS[name] for name in spec.transform or ()),
        required=spec.required,
    )


def _columns_of(name: str, spec: FieldSpec) -> tuple[str, ...]:
    return lookup_columns(name) if spec.type == "lookup" else (name,)


def lookup_columns(name: str) -> tuple[str, str]:
    """The two columns of lookup field `name`: the referenced Zoho id and the local row id."""
    return f"{name}_zoho_id", f"{name}_id"


def _valid_parts(raw: Any, struct: type[S]) -> dict[str, S]:
    """The items of a mapping that convert cleanly to `struct`; the checker reports the others."""
    parts: dict[str, S] = {}
    for name, value in raw.items() if isinstance(raw, dict) else ():
        try:
            parts[name] = msgspec.convert(value, struct)
        except msgspec.ValidationError:
            continue
    return parts


def _valid_items(raw: Any, struct: type[S]) -> list[tuple[int, S]]:
    """The items of a list that convert cleanly to `struct`, with their positions."""
    items: list[tuple[int, S]] = []
    for index, value in enumerate(raw) if isinstance(raw, list) else ():
        try:
            items.append((index, msgspec.convert(value, struct)))
        except msgspec.ValidationError:
            continue
    return items


def _struct_of(annotation: Any) -> type[Spec] | None:
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, Spec)), None)


def _list_of(annotation: Any) -> Any:
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return next((c for c in candidates if typing.get_origin(c) is list), None)


def _literal_of(annotation: Any) -> tuple[Any, ...] | None:
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_optional(annotation: Any) -> bool:
    return _is_union(annotation) and type(None) in typing.get_args(annotation)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), repr(value))
