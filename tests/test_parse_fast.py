"""The parser's fast path (msgspec, in C) against its slow path (the field types' own parsers).

A record the fast path accepts must come out exactly as the slow path makes it: same id, same
version, same values with the same types and offsets, no errors. A record it refuses goes the
slow way, so refusing is always safe; accepting something the slow path reads otherwise is the
bug this test hunts, with records built from every field type's hard cases.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.descriptors import Entity, Field, load_catalog, parse_catalog
from syncengine.parsing import Incoming, Parser, _parse_fast, _parse_slow, decode_json, parse_record, parse_records
from tests.records import EVERY_TYPE_YAML

ROOT = Path(__file__).resolve().parent.parent

#: Every field type, with and without the options that change what it accepts.
EVERY_TYPE = parse_catalog(EVERY_TYPE_YAML)
ENTITIES = [*load_catalog(ROOT / "entities.yaml"), *EVERY_TYPE]

ID = "6284103000000123001"
EMPTY = st.sampled_from([None, "", "-None-", " ", "\t"])
JUNK = st.one_of(
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True),
    st.just([]),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
TEXT = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=" \t\n\x00-Naoe", max_size=8),
    st.sampled_from(["ABC", " ABC", "abc", "a@b.co", " a@b.co ", "x" * 64, "x" * 65, "ÄBÇ", "\x00"]),
)
DIGITS = st.sampled_from(["0", "1", "-3", "3", "4", "+2", " 2 ", "9223372036854775807", "9223372036854775808"])
NUMBERS = st.one_of(st.integers(-(2**63) - 2, 2**63 + 1), st.integers(-5, 5), DIGITS, st.floats(-5, 5))
DATES = st.one_of(
    st.dates().map(dt.date.isoformat),
    st.sampled_from(["2026-02-16", " 2026-02-16", "2026-02-16 ", "20260216", "2026-W07-1", "2026-02-30", "2019-12-31"]),
    st.sampled_from(["2031-01-01", "0001-01-01", "9999-12-31", "2026-02-16T00:00", "16/02/2026", "２０２６-02-16"]),
)
OFFSETS = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+03:00", "+0300", "+03", "-23:59", "+24:00", "+03:00:30", ""])
FRACTIONS = st.sampled_from(["", ".1", ".123", ".123456", ".1234567", ".9999999", ",5", "."])
SEPARATORS = st.sampled_from(["T", "t", " "])
DATETIMES = st.one_of(
    st.builds(
        lambda day, sep, time, fraction, offset, pad: f"{pad}{day.isoformat()}{sep}{time}{fraction}{offset}{pad}",
        st.one_of(st.dates(), st.sampled_from([dt.date(1, 1, 1), dt.date(9999, 12, 31)])),
        SEPARATORS,
        st.sampled_from(["09:15:42", "23:59:59", "00:00:00", "09:15", "24:00:00", "23:59:60", "9:15:42"]),
        FRACTIONS,
        OFFSETS,
        st.sampled_from(["", "", " "]),
    ),
    st.sampled_from(["2026-02-10T09:15:42+03:00", "20260210T091542+0300", "2026-W07-1T09:15:42+03:00"]),
)
IDS = st.one_of(
    st.just(ID),
    st.integers(0, 2**64).map(str),
    st.sampled_from([f" {ID}", f"{ID} ", "12 34", "x" * 64, "x" * 65, "a\x00b", "", " ", "-None-"]),
    st.integers(-5, 2**64),
)


def lookups() -> st.SearchStrategy[Any]:
    ids = st.one_of(IDS, TEXT)
    objects = st.fixed_dictionaries({"id": ids}, optional={"name": st.text(max_size=4), "email": TEXT})
    return st.one_of(ids, objects, st.fixed_dictionaries({"name": st.text(max_size=4)}))


BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "string": TEXT,
    "text": TEXT,
    "email": TEXT,
    "integer": NUMBERS,
    "decimal": NUMBERS,
    "boolean": st.one_of(st.booleans(), st.sampled_from([0, 1, 2, "true", "False", " true "])),
    "date": DATES,
    "datetime": DATETIMES,
    "choice": st.sampled_from(["Onsite", "Online", "onsite", " Online", "Blended", "Normal", "Recording", "Draft"]),
    "multichoice": st.one_of(st.sampled_from(["a", "a;b", "a;c", "-None-;a"]), st.lists(st.sampled_from("abc"))),
    "lookup": lookups(),
}


def values_of(field: Field) -> st.SearchStrategy[Any]:
    return st.one_of(BY_TYPE[field.type.name], BY_TYPE[field.type.name], EMPTY, JUNK)


def hard_values(entity: Entity, key: str) -> st.SearchStrategy[Any]:
    """The hard cases for one key of a record of `entity`."""
    fields = {f.source: f for f in entity.fields}
    if key in fields:
        return values_of(fields[key])
    if key in ("id", "zoho_id"):
        return IDS
    if key == "$deleted":
        return st.sampled_from([True, False, "true", None])
    return st.one_of(DATETIMES, EMPTY, JUNK)  # the version


def keys_of(entity: Entity) -> list[str]:
    return [
        "id",
        "zoho_id",
        "$deleted",
        *([entity.version_field] if entity.version_field else []),
        *(f.source for f in entity.fields),
    ]


def dump(incoming: Incoming) -> tuple[Any, ...]:
    """Everything about a parsed record, types and UTC offsets included (True is not 1)."""
    values = sorted((name, type(value).__name__, msgspec.json.encode(value)) for name, value in incoming.values.items())
    version = None if incoming.version is None else (incoming.version, incoming.version.utcoffset())
    return incoming.zoho_id, values, version, incoming.delete, incoming.errors


def fast(entity: Entity, raw: dict[str, Any], *, as_json: bool = False) -> Incoming:
    """The fast path alone, from a dict or (`as_json`) from the record's JSON text."""
    plan = Parser(entity)
    if as_json:
        return _parse_fast(plan, plan.fast_decode(msgspec.Raw(msgspec.json.encode(raw))))
    return _parse_fast(plan, msgspec.convert(raw, plan.fast, strict=True))


def agree(entity: Entity, raw: dict[str, Any]) -> None:
    """The pipeline reads `raw`, as a dict and as JSON text, as the slow path alone does."""
    plan = Parser(entity)
    slow = _parse_slow(entity, plan, raw)
    assert dump(parse_record(entity, raw)) == dump(slow), raw
    text = msgspec.json.encode(raw)  # NaN becomes null: compare with what the text says (numbers as Decimal)
    (from_text,) = parse_records(entity, [msgspec.Raw(text)])
    assert dump(from_text) == dump(_parse_slow(entity, plan, decode_json(text))), text


@pytest.mark.parametrize("entity", ENTITIES, ids=[e.name for e in ENTITIES])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_fast_path_accepts_only_what_it_reads_as_the_slow_path_does(entity: Entity, data: st.DataObject) -> None:
    """A clean record with a few keys dropped or given hard values: most stay fast-path material."""
    raw = clean_record(entity)
    for key in data.draw(st.lists(st.sampled_from(keys_of(entity)), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            raw[key] = data.draw(hard_values(entity, key))
        else:
            raw.pop(key, None)
    agree(entity, raw)


KINDS = EVERY_TYPE.entity("kinds")
HARD_CASES = [
    ("Moment", "2026-02-10T09:15:42z"),
    ("Moment", "2026-02-10T09:15:42.1234567+03:00"),
    ("Moment", "2026-02-10T09:15:42.9999999Z"),
    ("Moment", " 2026-02-10T09:15:42Z"),
    ("Moment", "2026-02-10T09:15:42"),
    ("Moment", "0001-01-01T00:00:00+03:00"),
    ("Modified_Time", "2026-02-10T09:15:42z"),
    ("Modified_Time", "9999-12-31T23:59:59-03:00"),
    ("Late_Moment", "2019-12-31T23:59:59Z"),
    ("Late_Day", "2019-12-31"),
    ("Day", "20260216"),
    ("Parent", "-None-"),
    ("Parent", ""),
    ("Parent", {"id": "-None-"}),
    ("Parent", {"id": " 123 "}),
    ("Parent", {"id": 123}),
    ("Parent", 123),
    ("Parent", "x" * 65),
    ("Parent", {"id": "a\x00b"}),
    ("Other", None),
    ("Plain", "-None-"),
    ("Plain", ""),
    ("Plain", "a\x00b"),
    ("Plain", 12),
    ("Short", "abcdef"),
    ("Count", True),
    ("Count", 2**63),
    ("Count", "12"),
    ("Count", 3.0),
    ("Small", 4),
    ("Flag", 1),
    ("Flag", "true"),
    ("Mode", "-None-"),
    ("Mode", "onsite"),
    ("id", f" {ID}"),
    ("id", int(ID)),
    ("id", "a\x00b"),
    ("$deleted", True),
]


@pytest.mark.parametrize(("key", "value"), HARD_CASES, ids=[f"{k}={v!r}" for k, v in HARD_CASES])
def test_hard_cases_agree(key: str, value: Any) -> None:
    agree(KINDS, {**clean_record(KINDS), key: value})


def clean_record(entity: Entity) -> dict[str, Any]:
    examples = {
        "string": "ADA",
        "text": "A note",
        "email": "ada@school.example",
        "integer": 2,
        "decimal": "12.50",
        "boolean": True,
        "date": "2026-02-16",
        "datetime": "2026-02-10T09:15:42+03:00",
        "multichoice": ["a"],
        "lookup": {"name": "Parent", "id": "6284103000000000777"},
    }
    raw: dict[str, Any] = {"id": ID, "Owner": {"name": "Ops", "id": "1"}, "$state": "save"}
    for f in entity.fields:
        raw[f.source] = f.options.choices[0] if f.type.name == "choice" else examples[f.type.name]
    if entity.version_field:
        raw[entity.version_field] = "2026-02-10T09:15:42+03:00"
    return raw


@pytest.mark.parametrize("entity", ENTITIES, ids=[e.name for e in ENTITIES])
def test_clean_records_take_the_fast_path(entity: Entity) -> None:
    """Zoho's usual shapes (lookup objects, offsets, nulls, absent fields) do not fall back."""
    plan = Parser(entity)
    raw = clean_record(entity)
    nulls = {key: None if key in {f.source for f in entity.fields} else value for key, value in raw.items()}
    partial = {"id": ID, entity.fields[0].source: raw[entity.fields[0].source]}
    for as_json in (False, True):
        whole = fast(entity, raw, as_json=as_json)
        assert not whole.errors and len(whole.values) == len(entity.fields)
        assert dump(whole) == dump(_parse_slow(entity, plan, raw))
        assert fast(entity, nulls, as_json=as_json).values == dict.fromkeys(f.name for f in entity.fields)
        assert list(fast(entity, partial, as_json=as_json).values) == [entity.fields[0].name]


def test_an_offset_that_leaves_the_calendar_is_a_field_error() -> None:
    """Year 1 at +03:00 is before 0001-01-01 in UTC: an error for the field, not a crash."""
    entity = EVERY_TYPE.entity("kinds")
    raw = {"id": ID, "Moment": "0001-01-01T00:00:00+03:00", "Modified_Time": "9999-12-31T23:59:59-03:00"}
    incoming = parse_record(entity, raw)
    assert incoming.errors == {
        "Moment": "'0001-01-01T00:00:00+03:00' is out of range once converted to UTC",
        "Modified_Time": "'9999-12-31T23:59:59-03:00' is out of range once converted to UTC",
    }
