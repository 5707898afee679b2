"""Field types: how a Zoho value becomes a typed value, a column and a JSON value.

Each type is one `FieldType` in `FIELD_TYPES`. A type knows which descriptor options it accepts,
how to parse what Zoho sends (raising `ValueError` with a message for the user), which SQL column
holds it, and how to render it as JSON (for fingerprints, change reports and the OpenAPI schema).

The limits below are the one source of what a type can hold: the parsers refuse what the
columns could not store exactly (longer text, wider numbers, NUL and lone surrogates), so a
value that parses is stored, and read back, as it parsed, on SQLite and PostgreSQL alike. Parsed
values are normal: one value has one spelling (`"1.50"` and `1.5`, `"-0"` and `0`, offsets of one
instant), so the fingerprint changes only when a value does.

    >>> FIELD_TYPES["datetime"].parse("2026-02-10T09:15:42+03:00", Options())
    datetime.datetime(2026, 2, 10, 6, 15, 42, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
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
#: The longest email address, and its column: 64 characters before the @, 255 after (RFC 5321).
EMAIL_LENGTH = 320
EMAIL_LOCAL_LENGTH = 64
#: The largest `max_length` a text field may declare: PostgreSQL's limit for VARCHAR(n).
VARCHAR_LIMIT = 10_485_760
#: What no text column can hold: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: Numbers and dates as text: ASCII digits only ("١٢٣" is not 123), no "_" separators.
_INTEGER = re.compile(r"[-+]?[0-9]+")
_DECIMAL = re.compile(r"[-+]?[0-9]+(?:\.[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: A workflow webhook's `yyyy-MM-dd'T'HH:mm:ssZ` renders the offset without its colon (+0300).
_COMPACT_OFFSET = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?[+-][0-9]{2})([0-9]{2})"
)
#: An email address: a dot-atom before the @ (no quoted forms), then labels of letters, digits and
#: inner hyphens, and a top-level domain of two letters or more (or an IDN's xn--).
_EMAIL = re.compile(
    r"(?P<local>[^\s@\"(),.:;<>\[\\\]]+(?:\.[^\s@\"(),.:;<>\[\\\]]+)*)"
    r"@(?P<domain>(?:[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[a-zA-Z0-9-]{1,59}))"
)


@dataclass(frozen=True, slots=True)
class Options:
    """The type-specific options of one field, already checked by the descriptor loader."""

    max_length: int | None = None
    min: Any = None
    max: Any = None
    pattern: re.Pattern[str] | None = None
    choices: tuple[str, ...] = ()
    transforms: tuple[Callable[[str], str], ...] = ()
    #: A required text field refuses a value of only spaces: it would hold nothing.
    required: bool = False


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
    #: The fast path (see `parsing._fast_type`): for a field's options, a msgspec type accepting a
    #: subset of what `parse` accepts, and a function finishing what msgspec made of it (or None
    #: when msgspec's value is already `parse`'s). None where the options leave only `parse`.
    fast: Callable[[Options], FastType | None] = field(default=lambda options: None)


#: A msgspec type and the function that finishes its value; the finisher raises ValueError to
#: send the whole record down the slow path, which then reports the error in its own words.
FastType = tuple[Any, Callable[[Any], Any] | None]


def _text(raw: Any, options: Options) -> str:
    if not isinstance(raw, str):  # Zoho sends text as JSON strings: 1.5 is not "1.5"
        raise ValueError(f"expected text (a JSON string), got {_kind(raw)}")
    value = check_storable(raw)
    for transform in options.transforms:
        value = transform(value)
    if options.required and value.isspace():
        raise ValueError("is required: expected text, got only spaces")
    if options.max_length is not None and len(value) > options.max_length:
        raise ValueError(f"is {len(value)} characters long; the maximum is {options.max_length}")
    if options.pattern is not None and not options.pattern.fullmatch(value):
        raise ValueError(f"{_short(value)} does not match the pattern {options.pattern.pattern!r}")
    return value


def check_storable(value: str) -> str:
    """Text a column can hold, or a ValueError naming the character it cannot."""
    bad = _UNSTORABLE.search(value)
    if bad is None:
        return value
    if bad.group() == "\x00":
        raise ValueError("contains a NUL character, which cannot be stored")
    raise ValueError(f"contains a lone surrogate (U+{ord(bad.group()):04X}), which is not text and cannot be stored")


def _email(raw: Any, options: Options) -> str:
    value = _text(raw, options)
    if not value:
        return value
    if len(value) > EMAIL_LENGTH:
        raise ValueError(f"is {len(value)} characters long; an email address has at most {EMAIL_LENGTH}")
    hidden = _first_hidden(value)
    if hidden is not None:
        raise ValueError(
            f"{_short(value)} contains a control or invisible character (U+{ord(hidden):04X}): "
            "expected an email address (name@domain.tld) without one"
        )
    match = _EMAIL.fullmatch(value)
    if match is None:
        raise ValueError(f"{_short(value)} is not an email address: expected name@domain.tld")
    if len(match["local"]) > EMAIL_LOCAL_LENGTH:
        raise ValueError(f"{_short(value)} has more than {EMAIL_LOCAL_LENGTH} characters before the @")
    return value


def _first_hidden(value: str) -> str | None:
    """The first character of `value` that is not printable (controls, direction overrides,
    zero-width characters, line separators), or None."""
    if value.isprintable():
        return None
    return next(char for char in value if not char.isprintable())


def _bounded(value: T, options: Options) -> T:
    if options.min is not None and value < options.min:
        raise ValueError(f"{_render(value)} is less than the minimum {_render(options.min)}")
    if options.max is not None and value > options.max:
        raise ValueError(f"{_render(value)} is greater than the maximum {_render(options.max)}")
    return value


def _integer(raw: Any, options: Options) -> int:
    if raw.__class__ is int:
        value = raw
    elif isinstance(raw, bool):
        raise ValueError("expected an integer, got a boolean")
    elif isinstance(raw, int):
        value = int(raw)
    elif isinstance(raw, (Decimal, float)) and _is_whole(raw):  # 15.0; JSON numbers arrive as Decimal
        if isinstance(raw, Decimal) and raw and raw.adjusted() > 19:  # int(Decimal("1e999999999")) would not end
            raise ValueError(f"{_clip(str(raw))} is out of range (a 64-bit integer)")
        value = int(raw)
    elif isinstance(raw, str) and _INTEGER.fullmatch(raw):
        if len(raw) > 25:  # and int() refuses more than 4,300 digits, with a message of its own
            raise ValueError(f"{_clip(raw)} is out of range (a 64-bit integer)")
        value = int(raw)
    elif isinstance(raw, TooLarge):
        raise ValueError("is out of range (a 64-bit integer)")
    else:
        raise ValueError(f"expected an integer (ASCII digits), got {_kind(raw)}")
    if not INTEGER_RANGE[0] <= value <= INTEGER_RANGE[1]:
        raise ValueError(f"{_clip(str(value))} is out of range (a 64-bit integer)")
    return _bounded(value, options)


def _is_whole(value: Decimal | float) -> bool:
    return value.is_integer() if isinstance(value, float) else value.is_finite() and value == value.to_integral_value()


def _decimal(raw: Any, options: Options) -> Decimal:
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, bool):
        raise ValueError("expected a number, got a boolean")
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, float):
        value = Decimal(repr(raw))  # the shortest text that reads back as this float, as JSON wrote it
    elif isinstance(raw, str) and _DECIMAL.fullmatch(raw):
        value = Decimal(raw)
    elif isinstance(raw, TooLarge):  # a JSON integer beyond 64 bits: a number, only too long
        raise ValueError(
            f"{_kind(raw)} is too large (at most {DECIMAL_PRECISION - DECIMAL_SCALE} digits before the point)"
        )
    else:
        raise ValueError(f"expected a number such as 4500.50 (ASCII digits, a point), got {_kind(raw)}")
    if not value.is_finite():
        raise ValueError(f"expected a finite number, got {_kind(raw)}")
    whole_digits = DECIMAL_PRECISION - DECIMAL_SCALE
    if value and value.adjusted() >= whole_digits:  # first: quantize() below needs a bounded value
        raise ValueError(f"{_kind(raw)} is too large (at most {whole_digits} digits before the point)")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -DECIMAL_SCALE and value != value.quantize(Decimal(1).scaleb(-DECIMAL_SCALE)):
        raise ValueError(f"{_kind(raw)} has more than {DECIMAL_SCALE} decimal places")
    return _bounded(_normal_decimal(value), options)


def _normal_decimal(value: Decimal) -> Decimal:
    """1, 1.0 and 1.00 are one value, and so are 0 and -0: drop trailing zeros and the sign of
    zero, keep plain notation."""
    if not value:
        return Decimal(0)
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
    if isinstance(raw, str) and _DATE.fullmatch(raw):  # fromisoformat alone reads 20260210 and 2026-W07-1 too
        try:
            return _bounded(dt.date.fromisoformat(raw), options)
        except ValueError:
            pass
    raise ValueError(f"expected a date as YYYY-MM-DD, got {_kind(raw)}")


def _datetime(raw: Any, options: Options) -> dt.datetime:
    if isinstance(raw, str):
        value = _read_datetime(raw)
        if value is not None:
            if value.tzinfo is None:
                raise ValueError(f"{_short(raw)} has no UTC offset; send it as 2026-02-10T09:15:42+03:00")
            try:
                utc = to_utc(value)
            except OverflowError:
                raise ValueError(f"{_short(raw)} is out of range once converted to UTC") from None
            return _bounded(utc, options)
    raise ValueError(f"expected a date-time with an offset, as 2026-02-10T09:15:42+03:00, got {_kind(raw)}")


def _read_datetime(text: str) -> dt.datetime | None:
    """RFC 3339, or Zoho's webhook form of it (+0300); naive when it has no offset; None when
    it is neither."""
    try:
        return _rfc3339(text)
    except msgspec.ValidationError:
        pass
    compact = _COMPACT_OFFSET.fullmatch(text)
    try:
        if compact is not None:
            return _rfc3339(f"{compact[1]}:{compact[2]}")
        return _naive_rfc3339(text)  # to say that the offset is missing
    except msgspec.ValidationError:
        return None


#: RFC 3339 date-times with an offset, read by msgspec in C (lower-case "t" and "z" too, and
#: digits past the microsecond rounded): the datetime type's first reader, and its fast path's.
RFC3339 = Annotated[dt.datetime, msgspec.Meta(tz=True)]
_rfc3339: Callable[[str], dt.datetime] = functools.partial(msgspec.convert, type=RFC3339, strict=True)
_naive_rfc3339: Callable[[str], dt.datetime] = functools.partial(
    msgspec.convert, type=Annotated[dt.datetime, msgspec.Meta(tz=False)], strict=True
)


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


def _lookup(raw: Any, options: Options) -> str | None:
    """A lookup arrives as {"id": "...", "name": "..."} or as the bare id; an id of "" or "-None-"
    is the empty lookup, in an object as bare."""
    value = raw.get("id") if isinstance(raw, dict) else raw
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value in EMPTY_VALUES:
        return None
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
    hidden = _first_hidden(value)
    if hidden is not None:
        raise ValueError(f"a record id cannot contain a control or invisible character (U+{ord(hidden):04X})")
    return value


class TooLarge:
    """An integer too large for the JSON reader (beyond 64 bits), kept in its record's place
    so that the field holding it is the one refused (see `parsing.decode_json`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "an integer beyond 64 bits"


TOO_LARGE = TooLarge()


class _LookupObject(msgspec.Struct):
    """A lookup as an object: only its id counts (Zoho adds "name" and sometimes more)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LENGTH)]


def _fast_text(options: Options) -> FastType | None:
    if options.transforms or options.pattern is not None:
        return None
    limit = msgspec.Meta(max_length=options.max_length) if options.max_length is not None else msgspec.Meta()
    return Annotated[str, limit], _finish_required_text if options.required else _finish_text


def _finish_text(value: str) -> str | None:
    if value in EMPTY_VALUES:
        return None
    if "\x00" in value or (not value.isascii() and _UNSTORABLE.search(value) is not None):
        raise ValueError("contains a NUL character or a lone surrogate")
    return value


def _finish_required_text(value: str) -> str | None:
    if value.isspace():
        raise ValueError("a required value of only spaces")
    return _finish_text(value)


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
    if value in EMPTY_VALUES:  # bare or as {"id": "-None-"}: the empty lookup, as `_lookup` reads it
        return None
    if not value.isprintable() or value.strip() != value:
        raise ValueError("an id to strip or to refuse")
    return value


class DecimalText(sa.types.TypeDecorator[Decimal]):
    """A decimal stored as its text, on SQLite: SQLite's NUMERIC is a binary float, which read
    12345678901234.5678 back as 12345678901234.5684."""

    impl = sa.String(DECIMAL_PRECISION + 2)  # the digits, a sign and a point
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else format(value, "f")

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        # a float or an int only in a row written before the column held text
        return None if value is None else Decimal(value if isinstance(value, str) else str(value))


#: Exact on both databases: NUMERIC on PostgreSQL, text on SQLite (`DecimalText`).
DECIMAL_COLUMN = sa.Numeric(DECIMAL_PRECISION, DECIMAL_SCALE).with_variant(DecimalText(), "sqlite")


class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A point in time, stored in UTC and read back aware, in UTC, on both databases: PostgreSQL's
    TIMESTAMPTZ; on SQLite, which has no time zones, the UTC time as text (an aware value in
    another offset is converted first). What Alembic sees is `impl`, as before this type.

    >>> UtcDateTime().process_result_value(dt.datetime(2026, 2, 10, 6, 15), None)
    datetime.datetime(2026, 2, 10, 6, 15, tzinfo=datetime.timezone.utc)
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None or value.tzinfo is None or value.tzinfo is dt.UTC:  # naive: UTC already
            return value
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect | None) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def utc_now() -> dt.datetime:
    """Now, aware, in UTC: what every timestamp the engine writes is."""
    return dt.datetime.now(dt.UTC)


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
    if isinstance(raw, (int, float, Decimal)):
        return f"the number {_clip(str(raw))}"
    return _short(raw) if isinstance(raw, str) else repr(raw)


def _short(value: str) -> str:
    """`value` quoted for a message, cut when it is long (`_clip`)."""
    return repr(_clip(value))


def _clip(text: str, limit: int = 60) -> str:
    """`text` with its middle cut out when it is long: a message is no copy of the body."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-10:]} ({len(text)} characters)"


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
            lambda o: sa.String(o.max_length or EMAIL_LENGTH),
            lambda o: _string_schema(o, format="email") | {"maxLength": o.max_length or EMAIL_LENGTH},
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
            lambda o: DECIMAL_COLUMN,
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
            lambda o: UtcDateTime(),
            lambda o: {"type": "string", "format": "date-time"},
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
