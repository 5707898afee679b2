"""Property tests per field type: a value the validator accepts is stored exactly; one it cannot
store is that record's INVALID, never its batch's error.

For each field type, on SQLite and PostgreSQL: a generated valid value, sent in one of its
spellings (as a Python value or as JSON text, the way a body's records arrive), is NEW and reads
back through `fetch_record` (the GET's source) as exactly the value it stands for; the same value
in another spelling is UNCHANGED; a generated invalid value is INVALID, naming its field, while
the good record beside it in the same batch is NEW. The catalog is inline, one field per type,
so these tests do not depend on entities.yaml. Hypothesis runs in a worker thread and runs each
sync on the test's event loop, where the database connections live.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from typing import Any, cast

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.descriptors import parse_catalog
from syncengine.engine import SyncEngine
from syncengine.fieldtypes import EMAIL_LENGTH, INTEGER_RANGE
from syncengine.report import FieldError
from tests.conftest import Databases

CATALOG = parse_catalog(
    """
version: 1
entities:
  parents:
    source: Parents
    singular: parent
    fields:
      name: {from: Name, type: string}
  values:
    source: Values
    singular: value
    fields:
      plain: {from: Plain, type: string}
      short: {from: Short, type: string, max_length: 20}
      note: {from: Note, type: text}
      email: {from: Email, type: email}
      count: {from: Count, type: integer}
      price: {from: Price, type: decimal}
      flag: {from: Flag, type: boolean}
      day: {from: Day, type: date}
      moment: {from: Moment, type: datetime}
      mode: {from: Mode, type: choice, choices: [Onsite, Online, Çevrim içi]}
      tags: {from: Tags, type: multichoice, choices: [a, b, Ünïcode]}
      parent: {from: Parent, type: lookup, entity: parents}
"""
)
EXAMPLES = 50
TENANT = "school"
_ids = itertools.count(1)
_encode = msgspec.json.Encoder(decimal_format="number").encode  # a Decimal as a JSON number, as Zoho sends

#: Text a column can hold: any character but NUL and lone surrogates (hypothesis' default).
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), min_size=1, max_size=300)
WHOLE_TEXT = TEXT.filter(lambda text: text != "-None-")
UNSTORABLE = st.one_of(
    st.builds(lambda a, b: f"{a}\x00{b}", st.text(max_size=5), st.text(max_size=5)),
    st.builds(lambda a, b: f"{a}\ud800{b}", st.text(max_size=5), st.text(max_size=5)),
)
NUMBERS = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.decimals(allow_nan=False, allow_infinity=False)
)
#: (expected stored value, its spellings): each spelling reads as the expected value.
Spelled = tuple[Any, list[Any]]


def same(value: Any) -> Spelled:
    return value, [value]


# Valid values, per field, with their spellings.

LETTERS = "abcdefghijklmnopqrstuvwxyz"
ATEXT = st.text(LETTERS + "ABCXYZ0123456789!#$%&'*+-/=?^_`{|}~çşğ", min_size=1, max_size=20)
LABEL = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")
EMAILS = st.builds(
    lambda local, labels, tld: f"{'.'.join(local)[:64].strip('.')}@{'.'.join(labels)}.{tld}",
    st.lists(ATEXT, min_size=1, max_size=3),
    st.lists(LABEL, min_size=1, max_size=3),
    st.text(LETTERS, min_size=2, max_size=6),
).filter(lambda email: ".." not in email.split("@")[0] and not email.startswith("."))


def integers() -> st.SearchStrategy[Spelled]:
    def spell(value: int) -> Spelled:
        spellings: list[Any] = [value, str(value), Decimal(f"{value}.0")]  # Decimal: a JSON 15.0
        if value >= 0:
            spellings += [f"+{value}", f"00{value}"]
        return value, spellings

    return st.integers(*INTEGER_RANGE).map(spell)


def decimals() -> st.SearchStrategy[Spelled]:
    def spell(value: Decimal) -> Spelled:
        text = format(value, "f")
        short = text.rstrip("0").rstrip(".") if "." in text else text  # the one spelling: no trailing zeros
        expected = Decimal(short) if Decimal(short) else Decimal(0)  # nor a sign on zero
        spellings: list[Any] = [value, text, text + "0" if "." in text else text + ".00"]
        if value >= 0:
            spellings += [f"+{text}"]
        if not value:
            spellings += ["-0", "-0.000", Decimal("-0")]
        return expected, spellings

    limit = Decimal("99999999999999.9999")
    hard = ["12345678901234.5678", "-99999999999999.9999", "0.1", "0", "4500.5", "0.0001", "10000000000000"]
    return st.one_of(
        st.sampled_from(hard).map(Decimal), st.decimals(-limit, limit, places=4), st.decimals(-limit, limit, places=0)
    ).map(spell)


OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))


def datetimes() -> st.SearchStrategy[Spelled]:
    def spell(utc: dt.datetime, zones: list[dt.timezone]) -> Spelled:
        spellings: list[Any] = [utc.isoformat().replace("+00:00", "Z")]
        for zone in zones:
            try:
                local = utc.astimezone(zone)
            except OverflowError:  # the instant is not a date-time of years 1-9999 at this offset
                continue
            text = local.isoformat()
            spellings.append(text)
            spellings.append(text[:-3] + text[-2:])  # +0300, as a workflow webhook renders it
            if not local.microsecond:
                spellings.append(text[:19] + ".000" + text[19:])
        return utc, spellings

    return st.builds(spell, st.datetimes(timezones=st.just(dt.UTC)), st.lists(OFFSETS, max_size=3))


def lookups() -> st.SearchStrategy[Spelled]:
    def spell(zoho_id: str, name: str) -> Spelled:
        spellings: list[Any] = [zoho_id, {"id": zoho_id}, {"name": name, "id": zoho_id}]
        if zoho_id.isascii() and zoho_id.isdigit() and str(int(zoho_id)) == zoho_id:
            spellings.append(int(zoho_id))
        return zoho_id, spellings

    ids = st.one_of(
        st.integers(0, 10**19).map(str),
        st.text(st.characters(whitelist_categories=("L", "N", "P", "S")), min_size=1, max_size=64),
    ).filter(lambda zoho_id: zoho_id != "-None-")
    return st.builds(spell, ids, st.text(max_size=10))


def multichoices() -> st.SearchStrategy[Spelled]:
    def spell(items: list[str]) -> Spelled:
        return (items or None), [items, ";".join(items)]

    return st.lists(st.sampled_from(["a", "b", "Ünïcode"]), max_size=4).map(spell)


#: 320 characters: 64 before the @, four labels and a TLD after it.
LONGEST_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 59 + ".com"
assert len(LONGEST_EMAIL) == EMAIL_LENGTH

VALID: dict[str, st.SearchStrategy[Spelled]] = {
    "Plain": WHOLE_TEXT.map(same),
    "Short": WHOLE_TEXT.filter(lambda text: len(text) <= 20).map(same),
    "Note": st.one_of(WHOLE_TEXT, st.text(min_size=1000, max_size=3000).filter(lambda t: "\x00" not in t)).map(same),
    "Email": st.one_of(st.just(LONGEST_EMAIL), EMAILS).map(same),
    "Count": integers(),
    "Price": decimals(),
    "Flag": st.booleans().map(lambda flag: (flag, [flag, str(flag).lower(), str(flag).upper(), int(flag)])),
    "Day": st.dates().map(lambda day: (day, [day.isoformat()])),
    "Moment": datetimes(),
    "Mode": st.sampled_from(["Onsite", "Online", "Çevrim içi"]).map(same),
    "Tags": multichoices(),
    "Parent": lookups(),
}

# Invalid values, per field: what the column could not hold exactly, and what Zoho does not send.

INVALID: dict[str, st.SearchStrategy[Any]] = {
    "Plain": st.one_of(UNSTORABLE, NUMBERS, st.booleans()),
    "Short": st.one_of(TEXT.filter(lambda text: len(text) > 20), UNSTORABLE),
    "Note": st.one_of(UNSTORABLE, NUMBERS),
    "Email": st.one_of(
        st.sampled_from(["a@b.c", "a@b", "ab.com", "a@@b.com", "a b@c.com", "a@-b.com", "a@b..com", "a@1.23"]),
        st.just(LONGEST_EMAIL + "x"),  # 321 characters, 64 of them before the @: what VARCHAR(320) cannot hold
        EMAILS.map(lambda email: "x" * 65 + email),  # more than 64 before the @
        st.builds(lambda email, char: char + email, EMAILS, st.sampled_from(["\x07", "\u202e", "\u200b", "\n"])),
        NUMBERS,
    ),
    "Count": st.one_of(
        st.integers(INTEGER_RANGE[1] + 1),
        st.integers(max_value=INTEGER_RANGE[0] - 1),
        st.integers(INTEGER_RANGE[1] + 1).map(str),
        st.sampled_from(["1_000", "١٢٣", "１２", "1.5", "1e3", " 1", "0x10", "abc"]),
        st.floats(0.1, 0.9),
        st.booleans(),
    ),
    "Price": st.one_of(
        st.sampled_from(["1_000", "١٢٣", "1.00001", "NaN", "Infinity", "1e3", "1,5", "abc", " 1"]),
        st.decimals(Decimal("1e14"), Decimal("1e40"), places=0),
        st.sampled_from([Decimal("0.00001"), Decimal("1E+400"), Decimal("-1E+400"), 10**400]),
        st.booleans(),
    ),
    "Flag": st.one_of(
        st.sampled_from(["yes", "1", "t"]), st.integers(2), st.floats(allow_nan=False, allow_infinity=False)
    ),
    "Day": st.one_of(
        st.sampled_from(["2026-W01-1", "20260210", "2026-02-30", "２０２６-02-16", "2026-2-1", "16/02/2026"]),
        st.dates().map(lambda day: f"{day.isoformat()}T00:00:00Z"),
        st.dates().map(lambda day: f" {day.isoformat()}"),
    ),
    "Moment": st.one_of(
        st.datetimes().map(lambda moment: moment.isoformat()),  # no offset
        st.sampled_from(
            ["2026-02-10T09:15+03:00", "20260210T091542+0300", "2026-02-10T09:15:42+03", "0001-01-01T00:00:00+03:00"]
        ),
    ),
    "Mode": st.one_of(st.sampled_from(["onsite", " Online", "Blended"]), NUMBERS),
    "Tags": st.lists(st.sampled_from(["a", "d", "A"]), min_size=1).filter(lambda tags: any(t != "a" for t in tags)),
    "Parent": st.one_of(
        st.text(min_size=1).map(lambda text: "x" * 65 + text),
        st.builds(lambda a, char: f"1{char}{a}", st.text(max_size=5), st.sampled_from(["\x00", "\x1b", "\u202e"])),
        st.just({"name": "no id"}),
        st.just({"id": None}),
    ),
}

FIELDS = [f.source for f in CATALOG.entity("values").fields]
assert sorted(VALID) == sorted(INVALID) == sorted(FIELDS), "a strategy for each field of the catalog"


@pytest.fixture
async def engine(databases: Databases, dialect: str) -> SyncEngine:
    return SyncEngine(CATALOG, await databases.create(dialect, CATALOG))


def record(field: str, value: Any, as_json: bool) -> Any:
    """A record holding `value` in `field`: a dict, or its JSON text as a body's records arrive."""
    raw = {"id": str(next(_ids)), field: value}
    return msgspec.Raw(_encode(raw)) if as_json else raw


def run_property(
    strategy: st.SearchStrategy[Any], check: Callable[[Any], Coroutine[Any, Any, None]]
) -> Awaitable[None]:
    """Run `check` (a coroutine function) on hypothesis' examples of `strategy`, on this loop."""
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(example=strategy)
    def each(example: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(example), loop).result(timeout=60)

    return asyncio.to_thread(each)


@pytest.mark.parametrize("field", FIELDS)
async def test_valid_values_are_stored_exactly_in_every_spelling(engine: SyncEngine, field: str) -> None:
    async def check(example: tuple[Spelled, int, bool]) -> None:
        (expected, spellings), first, as_json = example
        sent = record(field, spellings[first % len(spellings)], as_json)
        report = await engine.sync(TENANT, "values", [sent])
        zoho_id = cast(str, report.results[0].zoho_id)
        assert report.results[0].status == "NEW", report.results[0]
        stored = await engine.fetch_record(TENANT, "values", zoho_id)
        assert stored is not None
        value = stored["values"][field]
        assert (type(value), value) == (type(expected), expected), sent
        if isinstance(value, Decimal):
            assert str(value) == str(expected), "one value, one spelling"
        if isinstance(value, dt.datetime):
            assert value.utcoffset() == dt.timedelta(0)
        for spelling in spellings:
            again = {"id": zoho_id, field: spelling}
            (result,) = (
                await engine.sync(TENANT, "values", [msgspec.Raw(_encode(again)) if as_json else again])
            ).results
            assert result.status == "UNCHANGED", (spelling, result)
        stored = await engine.fetch_record(TENANT, "values", zoho_id)  # and it still reads as it did
        assert stored is not None and str(stored["values"][field]) == str(value), spellings

    examples = st.tuples(VALID[field], st.integers(0, 10), st.booleans())
    await run_property(examples, check)


@pytest.mark.parametrize("field", FIELDS)
async def test_invalid_values_are_their_record_s_invalid_and_the_batch_goes_on(engine: SyncEngine, field: str) -> None:
    async def check(example: tuple[Any, bool]) -> None:
        value, as_json = example
        bad, good = record(field, value, as_json), record("Plain", "fine", as_json)
        report = await engine.sync(TENANT, "values", [bad, good])
        assert [r.status for r in report.results] == ["INVALID", "NEW"], (value, report.results[0])
        assert [error.field for error in cast("list[FieldError]", report.results[0].errors)] == [field]
        assert await engine.fetch_record(TENANT, "values", cast(str, report.results[0].zoho_id)) is None

    examples = st.tuples(INVALID[field], st.booleans()).filter(_json_can_carry)
    await run_property(examples, check)


def _json_can_carry(example: tuple[Any, bool]) -> bool:
    """JSON text has no lone surrogates (msgspec will not write them); the Python value does."""
    value, as_json = example
    return not (as_json and isinstance(value, str) and any("\ud800" <= char <= "\udfff" for char in value))
