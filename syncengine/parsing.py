"""Parsing: a raw Zoho record (a dict, or its JSON text) read and validated against its entity.

Records take one of two paths. A clean record is decoded in C by msgspec straight into the
entity's Struct (`Parser.fast`) and finished field by field; anything that fails there (a
deletion, a bad value, a key twice) goes the slow way, field by field, which says what is wrong
with each field. Both read a clean record the same way (a differential test holds them to it).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import asdict

from syncengine.descriptors import Entity, Field
from syncengine.fieldtypes import (
    EMPTY_VALUES,
    FIELD_TYPES,
    ID_LENGTH,
    RFC3339,
    TOO_LARGE,
    FastType,
    Options,
    TooLarge,
    check_id,
    to_utc,
)

#: A record carrying `"$deleted": true` is a deletion in the source (see payloads.py).
DELETED_KEY = "$deleted"
ID_KEYS = ("id", "zoho_id")
_DATETIME = FIELD_TYPES["datetime"]
_NO_OPTIONS = Options()
_ABSENT = object()
#: JSON numbers with a fraction or an exponent become Decimal, never float: 4500.1 stays exact.
_decode = msgspec.json.Decoder(float_hook=Decimal).decode
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_items = msgspec.json.Decoder(list[msgspec.Raw]).decode


class Incoming(msgspec.Struct):
    """A record after parsing and validation: what it says, and what is wrong with it.

    A Struct rather than a dataclass: it is made once per record, and msgspec makes it in C.
    """

    zoho_id: str | None
    values: dict[str, Any]
    version: dt.datetime | None = None
    delete: bool = False
    errors: dict[str, str] = msgspec.field(default_factory=dict)


class Parser:
    """What parsing needs of an entity, built once (the engine compiles one per entity)."""

    __slots__ = ("entity", "fast", "fast_decode", "fast_finishers", "parsers")

    def __init__(self, entity: Entity) -> None:
        fast = tuple((f, _fast_type(f)) for f in entity.fields)
        struct = _fast_struct(entity, tuple((f, kind) for f, (kind, _) in fast))
        self.entity = entity
        #: (field name, Zoho name, parser, options) of each field, for the slow path.
        self.parsers: tuple[tuple[str, str, Any, Options], ...] = tuple(
            (f.name, f.source, f.type.parse, f.options) for f in entity.fields
        )
        #: The fast path (`_parse_fast`): the entity's Struct (None: there is none), its JSON
        #: decoder, and the function finishing each field that has one.
        self.fast: type[msgspec.Struct] | None = struct
        self.fast_decode: Callable[[msgspec.Raw], Any] = (
            msgspec.json.Decoder(struct, float_hook=Decimal).decode if struct is not None else _decode
        )
        self.fast_finishers: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (f.name, finish) for f, (_, finish) in fast if finish is not None
        )

    def parse(self, raw: Any) -> Incoming:
        """One raw record, validated, every field error collected. A `msgspec.Raw` (the JSON
        text of one, see `payloads.parse_body`) is decoded straight into the entity's Struct,
        and decoded as plain JSON only if that fails."""
        if self.fast is not None:
            try:
                if raw.__class__ is dict:
                    return _parse_fast(self, msgspec.convert(raw, self.fast, strict=True))
                if raw.__class__ is msgspec.Raw:
                    return _parse_fast(self, self.fast_decode(raw))
            except (ValueError, OverflowError):  # msgspec's ValidationError is a ValueError
                pass
        if raw.__class__ is msgspec.Raw:
            raw = decode_json(raw)
        return _parse_slow(self.entity, self, raw)

    def parse_all(self, records: Iterable[Any]) -> list[Incoming]:
        parse = self.parse
        return [parse(raw) for raw in records]


def parse_record(entity: Entity, raw: Any) -> Incoming:
    """Validate one raw Zoho record against its descriptor, collecting every field error.
    (Builds the entity's `Parser` each call: the engine keeps one per entity.)"""
    return Parser(entity).parse(raw)


def parse_records(entity: Entity, records: Iterable[Any]) -> list[Incoming]:
    """`parse_record` for each record: the pipeline's first step, which needs no database."""
    return Parser(entity).parse_all(records)


def decode_json(data: bytes | msgspec.Raw) -> Any:
    """JSON as the field types read it: a number with a fraction or an exponent as a Decimal,
    and an integer msgspec cannot read (beyond 64 bits) as `TOO_LARGE` in its place, so that the
    field holding it is refused and the rest of its record is read. Malformed JSON raises
    `msgspec.DecodeError`.

        >>> decode_json(b'{"Price": 4500.1, "Count": 100000000000000000000}')
        {'Price': Decimal('4500.1'), 'Count': an integer beyond 64 bits}
    """
    try:
        return _decode(data)
    except msgspec.ValidationError:  # only numbers fail so: the rest is read member by member
        pass
    try:
        return {key: decode_json(value) for key, value in _decode_members(data).items()}
    except msgspec.ValidationError:
        pass
    try:
        return [decode_json(item) for item in _decode_items(data)]
    except msgspec.ValidationError:
        return TOO_LARGE


def _parse_fast(parser: Parser, struct: msgspec.Struct) -> Incoming:
    """A clean record, validated by msgspec in C as the entity's Struct (`_fast_struct`).

    Whatever gets through here, `_parse_slow` reads the same way (a differential test holds them
    to it); anything else raises ValueError (or OverflowError) and goes the slow way, which says
    what is wrong. Deletions go the slow way too.
    """
    values = asdict(struct)
    if values.pop("DELETED") is True:
        raise ValueError("a deletion")
    zoho_id = values.pop("ID")
    if not zoho_id.isprintable() or zoho_id.strip() != zoho_id:
        raise ValueError("an id to strip or to refuse")
    version = values.pop("VERSION", None)
    if version is not None:
        version = None if version is UNSET else to_utc(version)
    if UNSET in values.values():
        values = {name: value for name, value in values.items() if value is not UNSET}
    for name, finish in parser.fast_finishers:
        value = values.get(name)
        if value is not None:
            values[name] = finish(value)
    return Incoming(zoho_id, values, version, False, {})


def _parse_slow(entity: Entity, parser: Parser, raw: Any) -> Incoming:
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, list) else "null" if raw is None else type(raw).__name__
        kind = repr(raw) if isinstance(raw, TooLarge) else kind
        return Incoming(None, {}, errors={"(record)": f"expected a JSON object, got {kind}"})
    incoming = Incoming(zoho_id_of(raw), {}, delete=raw.get(DELETED_KEY) is True)
    if incoming.zoho_id is None:
        incoming.errors["id"] = "missing: every record needs its Zoho record id in 'id'"
    else:
        try:
            check_id(incoming.zoho_id)
        except ValueError as error:
            incoming.zoho_id, incoming.errors["id"] = None, str(error)
    if entity.version_field is not None:
        raw_version = raw.get(entity.version_field)
        if not _is_empty(raw_version):
            try:
                incoming.version = _DATETIME.parse(raw_version, _NO_OPTIONS)
            except ValueError as error:
                incoming.errors[entity.version_field] = str(error)
    if incoming.delete:
        return incoming
    values = incoming.values
    for name, source, parse, options in parser.parsers:
        value = raw.get(source, _ABSENT)
        if value is _ABSENT:
            continue
        try:
            values[name] = None if value is None else _parsed(parse, options, value)
        except ValueError as error:
            incoming.errors[source] = str(error)
    return incoming


def _parsed(parse: Callable[[Any, Options], Any], options: Options, value: Any) -> Any:
    """A present, non-null value as its field's parser reads it; an empty one is None."""
    if value.__class__ is str and value in EMPTY_VALUES:
        return None
    parsed = parse(value, options)
    return None if parsed == "" or parsed == [] else parsed


def zoho_id_of(raw: dict[str, Any]) -> str | None:
    """The record's id as sent (checked by `parse_record`), or None when it has none."""
    for key in ID_KEYS:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value in EMPTY_VALUES)


def _fast_type(field: Field) -> FastType:
    """The field type's fast type; for a type without one, any JSON value, which its parser finishes."""
    return field.type.fast(field.options) or (Any, functools.partial(_parsed, field.type.parse, field.options))


def _fast_struct(entity: Entity, fields: tuple[tuple[Field, Any], ...]) -> type[msgspec.Struct] | None:
    """The Struct `_parse_fast` takes a record as: its id (as `ID`), `$deleted` (as `DELETED`),
    its version (as `VERSION`, where the entity has one), then each field (with its msgspec type)
    under its own name, which is lower case; each but the id is absent (UNSET) or null as the
    record says."""
    keys = [
        "id",
        DELETED_KEY,
        *([entity.version_field] if entity.version_field else []),
        *(f.source for f, _ in fields),
    ]
    if len(set(keys)) != len(keys):
        return None  # a descriptor naming the same key twice: parse the slow way only
    optional = [
        ("DELETED", DELETED_KEY, bool),
        *([("VERSION", entity.version_field, RFC3339)] if entity.version_field else []),
        *((f.name, f.source, kind) for f, kind in fields),
    ]
    return msgspec.defstruct(
        f"{entity.name}_fast",
        [
            ("ID", Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LENGTH)]),
            *((name, kind | None | UnsetType, UNSET) for name, _, kind in optional),
        ],
        rename={"ID": "id", **{name: source for name, source, _ in optional}},
    )
