"""Field types: how a Zoho value becomes a typed value, a column and a JSON value.

Each type is one `FieldType` in `FIELD_TYPES`. A type knows which descriptor options it accepts,
how to parse what Zoho sends (raising `ValueError` with a message for the user), which SQL column
holds it, and how to render it as JSON (for fingerprints, change reports and the OpenAPI schema).

    >>> FIELD_TYPES["datetime"].parse("2026-02-10T09:15:42+03:00", Options())
    datetime.datetime(2026, 2, 10, 6, 15, 42, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import sqlalchemy as sa

T = TypeVar("T")

#: Values that mean "empty" wherever they appear: Zoho's picklist placeholder and empty form fields.
EMPTY_VALUES = ("", "-None-")

#: Zoho ids are 18-19 digits; ids and lookups longer than this are refused, not cut.
ID_LENGTH = 64
INTEGER_RANGE = (-(2**63), 2**63 - 1)
DECIMAL_PRECISION = 18
DECIMAL_SCALE = 4
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True, slots=True)
class Options:
    """The type-specific options of one field, already checked by the descriptor loader."""

    max_length: int | None = None
    min: Any = None
    max: Any = None
    pattern: re.Pattern[str] | None = None
    choices: tuple[str, ...] = ()
    transforms: tuple[Callable[[str], str], ...] = ()


@dataclass(frozen=True, slots=True)
class FieldType:
    """One descriptor type: parse a raw Zoho value, store it, describe it in JSON Schema.

    Parsed values are plain Python values (str, int, Decimal, bool, date, datetime in UTC, list)
    that msgspec encodes as JSON directly; `from_db` turns what a driver returns back into them.
    """

    name: str
    options: frozenset[str]
    parse: Callable[[Any, Options], Any]
    column: Callable[[Options], sa.types.TypeEngine[Any]]
    json_schema: Callable[[Options], dict[str, Any]]
    from_db: Callable[[Any], Any] = field(default=lambda value: value)
    #: The fast path (see `pipeline._fast_type`): for a field's options, a msgspec type accepting a
    #: subset of what `parse` accepts, and a function finishing what msgspec made of it (or None
    #: when msgspec's value is already `parse`'s). None where the options leave only `parse`.
    fast: Callable[[Options], FastType | None] = field(default=lambda options: None)


#: A msgspec type and the function that finishes its value; the finisher raises ValueError to
#: send the whole record down the slow path, which then reports the error in its own words.
FastType = tuple[Any, Callable[[Any], Any] | None]


def _text(raw: Any, options: Options) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"expected text, got {_kind(raw)}")
    value = raw if isinstance(raw, str) else str(raw)
    if "\x00" in value:
        raise ValueError("contains a NUL character, which cannot be stored")
    for transform in options.transforms:
        value = transform(value)
    if options.max_length is not None and len(value) > options.max_length:
        raise ValueError(f"is {len(value)} characters long; the maximum is {options.max_length}")
    if options.pattern is not None and not options.pattern.fullmatch(value):
        raise ValueError(f"{value!r} does not match the pattern {options.pattern.pattern!r}")
    return value


def _email(raw: Any, options: Options) -> str:
    value = _text(raw, options)
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value


def _bounded(value: T, options: Options) -> T:
    if options.min is not None and value < options.min:
        raise ValueError(f"{_render(value)} is less than the minimum {_render(options.min)}")
    if options.max is not None and value > options.max:
        raise ValueError(f"{_render(value)} is greater than the maximum {_render(options.max)}")
    return value


def _integer(raw: Any, options: Options) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and re.fullmatch(r"\s*[-+]?\d+\s*", raw):
        value = int(raw)
    else:
        raise ValueError(f"expected an integer, got {_kind(raw)}")
    if not INTEGER_RANGE[0] <= value <= INTEGER_RANGE[1]:
        raise ValueError(f"{value} is out of range (a 64-bit integer)")
    return _bounded(value, options)


def _decimal(raw: Any, options: Options) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"expected a number, got {_kind(raw)}")
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(f"expected a number, got {_kind(raw)}") from None
    if not value.is_finite():
        raise ValueError(f"expected a finite number, got {raw!r}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -DECIMAL_SCALE and value != value.quantize(Decimal(1).scaleb(-DECIMAL_SCALE)):
        raise ValueError(f"{raw!r} has more than {DECIMAL_SCALE} decimal places")
    if value.adjusted() >= DECIMAL_PRECISION - DECIMAL_SCALE:
        raise ValueError(f"{raw!r} is too large (at most {DECIMAL_PRECISION - DECIMAL_SCALE} digits before the point)")
    return _bounded(_normal_decimal(value), options)


def _normal_decimal(value: Decimal) -> Decimal:
    """1, 1.0 and 1.00 are one value: drop trailing zeros but keep plain notation."""
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    return normal.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else normal


def _boolean(raw: Any, options: Options) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise ValueError(f"expected true or false, got {_kind(raw)}")


def _date(raw: Any, options: Options) -> dt.date:
    if isinstance(raw, str):
        try:
            return _bounded(dt.date.fromisoformat(raw.strip()), options)
        except ValueError:
            pass
    raise ValueError(f"expected a date as YYYY-MM-DD, got {_kind(raw)}")


def _datetime(raw: Any, options: Options) -> dt.datetime:
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value: dt.datetime | None = _rfc3339(text)
        except msgspec.ValidationError:
            try:  # the other ISO 8601 forms Python reads: no seconds, "+03", 20260210T091542+0300...
                value = dt.datetime.fromisoformat(text)
            except ValueError:
                value = None
        if value is not None:
            if value.tzinfo is None:
                raise ValueError(f"{raw!r} has no UTC offset; send it as 2026-02-10T09:15:42+03:00")
            try:
                utc = to_utc(value)
            except OverflowError:
                raise ValueError(f"{raw!r} is out of range once converted to UTC") from None
            return _bounded(utc, options)
    raise ValueError(f"expected a date-time as ISO 8601 with an offset, got {_kind(raw)}")


#: RFC 3339 date-times with an offset, read by msgspec in C (lower-case "t" and "z" too, and
#: digits past the microsecond rounded): the datetime type's first reader, and its fast path's.
RFC3339 = Annotated[dt.datetime, msgspec.Meta(tz=True)]
_rfc3339: Callable[[str], dt.datetime] = functools.partial(msgspec.convert, type=RFC3339, strict=True)


def _choice(raw: Any, options: Options) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected one of {_listing(options.choices)}, got {_kind(raw)}")
    if raw not in options.choices:
        raise ValueError(f"{raw!r} is not one of {_listing(options.choices)}")
    return raw


def _multichoice(raw: Any, options: Options) -> list[str]:
    items = raw.split(";") if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ValueError(f"expected a list of choices, got {_kind(raw)}")
    values = [item for item in items if item not in EMPTY_VALUES]
    bad = [item for item in values if item not in options.choices]
    if bad:
        raise ValueError(f"{_listing(bad)} not in {_listing(options.choices)}")
    return values


def _lookup(raw: Any, options: Options) -> str:
    """A lookup arrives as {"id": "...", "name": "..."} or as the bare id."""
    value = raw.get("id") if isinstance(raw, dict) else raw
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = value.strip() if isinstance(value, str) else None
    if not value:
        raise ValueError(f'expected a record id or {{"id": ...}}, got {_kind(raw)}')
    return check_id(value)


def check_id(value: str) -> str:
    """A Zoho record id we can store, or a ValueError saying why not."""
    if len(value) > ID_LENGTH:
        raise ValueError(f"a record id is at most {ID_LENGTH} characters; this one has {len(value)}")
    if "\x00" in value:
        raise ValueError("a record id cannot contain a NUL character")
    return value


class _LookupObject(msgspec.Struct):
    """A lookup as an object: only its id counts (Zoho adds "name" and sometimes more)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LENGTH)]


def _fast_text(options: Options) -> FastType | None:
    if options.transforms or options.pattern is not None:
        return None
    limit = msgspec.Meta(max_length=options.max_length) if options.max_length is not None else msgspec.Meta()
    return Annotated[str, limit], _finish_text


def _finish_text(value: str) -> str | None:
    if value in EMPTY_VALUES:
        return None
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def _fast_integer(options: Options) -> FastType:
    low = INTEGER_RANGE[0] if options.min is None else max(options.min, INTEGER_RANGE[0])
    high = INTEGER_RANGE[1] if options.max is None else min(options.max, INTEGER_RANGE[1])
    return Annotated[int, msgspec.Meta(ge=low, le=high)], None


def _fast_date(options: Options) -> FastType:
    if options.min is None and options.max is None:
        return dt.date, None
    return dt.date, lambda value: _bounded(value, options)


def _fast_datetime(options: Options) -> FastType:
    if options.min is None and options.max is None:
        return RFC3339, to_utc
    return RFC3339, lambda value: _bounded(to_utc(value), options)


def to_utc(value: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC; OverflowError where that leaves years 1-9999 (the slow path
    then says so)."""
    return value.astimezone(dt.UTC)


def _fast_choice(options: Options) -> FastType | None:
    if not options.choices or any(choice in EMPTY_VALUES for choice in options.choices):
        return None
    return Literal[options.choices], None


def _fast_lookup(options: Options) -> FastType:
    return _LookupObject | Annotated[str, msgspec.Meta(max_length=ID_LENGTH)], _finish_lookup


def _finish_lookup(value: _LookupObject | str) -> str | None:
    if isinstance(value, _LookupObject):
        value = value.id
    elif value in EMPTY_VALUES:  # only a bare id: {"id": "-None-"} is read as that id, as `_lookup` does
        return None
    if not value or value.strip() != value or "\x00" in value:
        raise ValueError("an id to strip or to refuse")
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _decimal_from_db(value: Any) -> Decimal:
    return _normal_decimal(value if isinstance(value, Decimal) else Decimal(str(value)))


def _kind(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, dict):
        return "an object"
    if isinstance(raw, list):
        return "a list"
    return repr(raw)


def _render(value: Any) -> str:
    return str(value) if isinstance(value, (int, Decimal, float)) else repr(value.isoformat())


def _listing(values: Any) -> str:
    return ", ".join(repr(value) for value in values)


def _string_schema(options: Options, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **extra}
    if options.max_length is not None:
        schema["maxLength"] = options.max_length
    if options.pattern is not None:
        schema["pattern"] = options.pattern.pattern
    return schema


def _number_schema(options: Options, **schema: Any) -> dict[str, Any]:
    if options.min is not None:
        schema["minimum"] = float(options.min) if isinstance(options.min, Decimal) else options.min
    if options.max is not None:
        schema["maximum"] = float(options.max) if isinstance(options.max, Decimal) else options.max
    return schema


_TEXT_OPTIONS = frozenset({"max_length", "pattern", "transform"})
_NUMBER_OPTIONS = frozenset({"min", "max"})

FIELD_TYPES: dict[str, FieldType] = {
    kind.name: kind
    for kind in (
        FieldType(
            "string",
            _TEXT_OPTIONS,
            _text,
            lambda o: sa.String(o.max_length) if o.max_length else sa.String(),
            _string_schema,
            fast=_fast_text,
        ),
        FieldType("text", _TEXT_OPTIONS, _text, lambda o: sa.Text(), _string_schema, fast=_fast_text),
        FieldType(
            "email",
            _TEXT_OPTIONS,
            _email,
            lambda o: sa.String(o.max_length or 320),
            lambda o: _string_schema(o, format="email"),
        ),
        FieldType(
            "integer",
            _NUMBER_OPTIONS,
            _integer,
            lambda o: sa.BigInteger(),
            lambda o: _number_schema(o, type=["integer", "string"]),
            fast=_fast_integer,
        ),
        FieldType(
            "decimal",
            _NUMBER_OPTIONS,
            _decimal,
            lambda o: sa.Numeric(DECIMAL_PRECISION, DECIMAL_SCALE),
            lambda o: _number_schema(o, type=["number", "string"]),
            from_db=_decimal_from_db,
        ),
        FieldType(
            "boolean",
            frozenset(),
            _boolean,
            lambda o: sa.Boolean(),
            lambda o: {"type": ["boolean", "string"]},
            fast=lambda o: (bool, None),
        ),
        FieldType(
            "date",
            _NUMBER_OPTIONS,
            _date,
            lambda o: sa.Date(),
            lambda o: {"type": "string", "format": "date"},
            fast=_fast_date,
        ),
        FieldType(
            "datetime",
            _NUMBER_OPTIONS,
            _datetime,
            lambda o: sa.DateTime(timezone=True),
            lambda o: {"type": "string", "format": "date-time"},
            from_db=_utc,
            fast=_fast_datetime,
        ),
        FieldType(
            "choice",
            frozenset({"choices"}),
            _choice,
            lambda o: sa.String(max(64, *(len(c) for c in o.choices))),
            lambda o: {"enum": [*o.choices, "-None-"]},
            fast=_fast_choice,
        ),
        FieldType(
            "multichoice",
            frozenset({"choices"}),
            _multichoice,
            lambda o: sa.JSON(),
            lambda o: {"oneOf": [{"type": "array", "items": {"enum": list(o.choices)}}, {"type": "string"}]},
            from_db=list,
        ),
        FieldType(
            "lookup",
            frozenset({"entity"}),
            _lookup,
            lambda o: sa.String(ID_LENGTH),
            lambda o: {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
                        "required": ["id"],
                    },
                ]
            },
            fast=_fast_lookup,
        ),
    )
}

#: Options every field accepts, whatever its type.
COMMON_OPTIONS = frozenset({"type", "from", "required", "default", "description"})

TRANSFORMS: dict[str, Callable[[str], str]] = {"trim": str.strip, "lower": str.lower}
