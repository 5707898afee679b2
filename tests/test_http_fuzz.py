"""Fuzzing: bodies generated from the served OpenAPI document, sent to every sync endpoint.

Whatever arrives (records that follow the schema, records that do not, any JSON, any bytes, forms,
Zoho-shaped hostile bodies), no answer is a 5xx, and every answer's status is one the document
declares. A valid generated record reads back through `GET /v1/{entity}/{zoho_id}` as what was
sent, as its field type parses it ("15" and 15 are the same integer). Hypothesis runs in a worker
thread and sends each request on the test's event loop, where the app and its database
connections live; examples are bounded and derandomized.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import string
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.descriptors import Entity, Field
from syncengine.engine import SyncEngine
from syncengine.fieldtypes import EMPTY_VALUES
from tests.service import Api, running_api

EXAMPLES = 150
HOSTILE_EXAMPLES = 150
ROUND_TRIP_EXAMPLES = 60
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that follow a (small) JSON Schema, as the OpenAPI document writes them."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if "oneOf" in schema:
        return st.one_of([from_schema(option, components) for option in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kinds = schema.get("type", "string")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return st.one_of([_typed(kind, schema, components) for kind in kinds])


def _typed(kind: str, schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    if kind == "object":
        properties = {name: from_schema(sub, components) for name, sub in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in properties.items() if k in required},
            optional={k: v | JSON_VALUES for k, v in properties.items() if k not in required},
        )
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), components), max_size=min(schema.get("maxItems", 5), 5))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.decimals(schema.get("minimum"), schema.get("maximum"), allow_nan=False, places=2).map(float)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if schema.get("format") == "date":
        return st.dates().map(dt.date.isoformat)
    if schema.get("format") == "date-time":
        return st.datetimes(timezones=st.just(dt.UTC)).map(dt.datetime.isoformat)
    if schema.get("format") == "email":
        return st.from_regex(r"\A[a-z]{1,8}@[a-z]{1,8}\.(com|edu)\Z")
    return st.text(max_size=schema.get("maxLength", 40) + 2)


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value, enc_hook=lambda v: str(v) if isinstance(v, Decimal) else v)


@st.composite
def requests(draw: st.DrawFn, document: dict[str, Any], paths: list[str]) -> tuple[str, bytes, str]:
    """(path, body, content type) in every shape the endpoints accept, and in shapes they do not."""
    path = draw(st.sampled_from(paths))
    components = document["components"]["schemas"]
    body_schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    record = from_schema(body_schema["oneOf"][2], components)
    shape = draw(st.sampled_from(["conforming", "mixed", "any-json", "form", "bytes"]))
    if shape == "conforming":
        return path, _json(draw(from_schema(body_schema, components))), "application/json"
    if shape == "mixed":
        records = draw(st.lists(record | JSON_VALUES, max_size=4))
        return (
            path,
            _json(draw(st.sampled_from([records, {"data": records}, {"ids": records, "operation": "update"}]))),
            "application/json",
        )
    if shape == "any-json":
        return path, _json(draw(JSON_VALUES)), "application/json"
    if shape == "form":
        fields = draw(
            st.dictionaries(
                st.sampled_from(["zoho_id", "id", "event", *string.ascii_letters[:5]]), st.text(max_size=10)
            )
        )
        return path, urlencode(fields).encode(), "application/x-www-form-urlencoded"
    content_type = draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]))
    return path, draw(st.binary(max_size=200)), content_type


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine) as api:
        yield api


async def test_no_generated_body_gets_a_5xx(api: Api) -> None:
    document = (await api.http.get("/schema/openapi.json")).json()
    paths = [path for path in document["paths"] if path.startswith("/v1/sync/")]
    loop = asyncio.get_running_loop()
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(request=requests(document, paths))
    def check(request: tuple[str, bytes, str]) -> None:
        path, body, content_type = request
        headers = api.auth() | ({"Content-Type": content_type} if content_type else {})
        send = api.http.post(path, content=body, headers=headers, params={"dry_run": "true"} if len(body) % 2 else {})
        response = asyncio.run_coroutine_threadsafe(send, loop).result(timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{path} {content_type} {body[:300]!r} -> {response.text}"
        assert response.headers["content-type"].startswith("application/json")

    await asyncio.wait_for(asyncio.to_thread(check), timeout=300)
    assert seen.get(200, 0) > 0 and any(400 <= code < 500 for code in seen)  # both kinds were exercised


def declared_statuses(document: dict[str, Any], path: str) -> set[int]:
    return {int(status) for status in document["paths"][path]["post"]["responses"]}


# Zoho-shaped hostile bodies

_ids = itertools.count(1)
ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "-None-", "\x00", " ", "a/b", "%2F", "%"]
)
ODD_IDS = st.one_of(
    st.integers(-(2**70), 2**70),
    ODD_TEXT,
    st.none(),
    st.booleans(),
    st.floats(),
    st.builds(lambda a, b: f"{a}/{b}%{a}", st.integers(0, 99), ODD_TEXT),
    st.just({"id": "1"}),
)
HUGE_NUMBERS = st.sampled_from([b"1e400", b"-1e400", b"1e-400", b"-0", b"18446744073709551616", b"9" * 40, b"0.00001"])
#: JSON text that msgspec would not write: numbers beyond any type, lone surrogates, deep nesting.
RAW_VALUES = st.one_of(
    HUGE_NUMBERS,
    st.sampled_from([b'"\\ud800"', b'"a\\udfffb"', b'"\\ud83d"', b'"\\u0000"', b'"\\ud83d\\ude00"']),
    st.integers(60, 70).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(60, 70).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
)


@st.composite
def hostile_bodies(draw: st.DrawFn, document: dict[str, Any], paths: list[str]) -> tuple[str, bytes, str]:
    """(path, body, content type): Zoho's shapes (envelopes, arrays, notification callbacks,
    forms) with odd ids, operations and values, raw numbers and escapes no encoder would write."""
    path = draw(st.sampled_from(paths))
    record_schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][2]
    fields = list(document["components"]["schemas"][record_schema["$ref"].rsplit("/", 1)[1]]["properties"])
    raw = b"null"
    record = b'{"id": %s, "%s": %s}' % (
        _json(draw(ODD_IDS)),
        draw(st.sampled_from(fields)).encode(),
        draw(RAW_VALUES | JSON_VALUES.map(_json)),
    )
    raw = draw(
        st.sampled_from([record, b"[" + record + b"]", b'{"data": [' + record + b'], "info": {"more_records": 1}}'])
    )
    shape = draw(st.sampled_from(["record", "callback", "envelope", "form", "raw-callback"]))
    if shape == "record":
        return path, raw, "application/json"
    if shape == "envelope":
        data = draw(st.sampled_from([b"null", b"{}", b'"x"', b"[1, [2]]", b"[[]]", raw]))
        info = draw(st.sampled_from([b"", b', "info": null', b', "info": {"count": 1e400}']))
        return path, b'{"data": ' + data + info + b"}", "application/json"
    if shape == "callback":
        callback = {
            "ids": draw(st.one_of(st.lists(ODD_IDS, max_size=4), ODD_IDS)),
            "operation": draw(st.sampled_from(["insert", "update", "delete", "", "DELETE", "upsert", None, 1])),
            "module": draw(st.sampled_from(["Products", {"api_name": "Contacts"}, None])),
            "channel_id": draw(ODD_IDS),
        }
        if draw(st.booleans()):
            affected = st.dictionaries(
                st.sampled_from([*fields, "$se_module", "zoho_id", "id"]), JSON_VALUES, max_size=4
            )
            callback["affected_values"] = draw(st.one_of(st.lists(affected, max_size=3), JSON_VALUES))
        return path, _json(callback), "application/json"
    if shape == "raw-callback":
        return path, b'{"ids": [%s], "operation": "update", "affected_values": [%s]}' % (raw, raw), "application/json"
    pairs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["zoho_id", "id", "event", *fields]), ODD_TEXT | st.sampled_from(["%FF%FE", "delete"])
            ),
            max_size=5,
        )
    )
    body = "&".join(f"{name}={value}" for name, value in pairs).encode("utf-8", "surrogatepass")
    return (
        path,
        body,
        draw(
            st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8"])
        ),
    )


async def test_no_hostile_zoho_body_gets_a_5xx(api: Api) -> None:
    document = (await api.http.get("/schema/openapi.json")).json()
    paths = [path for path in document["paths"] if path.startswith("/v1/sync/")]
    loop = asyncio.get_running_loop()
    seen: dict[int, int] = {}

    @settings(
        max_examples=HOSTILE_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=hostile_bodies(document, paths))
    def check(request: tuple[str, bytes, str]) -> None:
        path, body, content_type = request
        send = api.http.post(path, content=body, headers=api.auth() | {"Content-Type": content_type})
        response = asyncio.run_coroutine_threadsafe(send, loop).result(timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        where = f"{path} {content_type} {body[:300]!r} -> {response.status_code} {response.text[:300]}"
        assert response.status_code < 500, where
        assert response.status_code in declared_statuses(document, path), where
        assert response.headers["content-type"].startswith("application/json"), where

    await asyncio.wait_for(asyncio.to_thread(check), timeout=300)
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen


# What is stored is what was sent


def valid_values(fld: Field) -> st.SearchStrategy[Any]:
    """Values of `fld` its type accepts, in the spellings Zoho sends; the empty ones unless required."""
    options, kind = fld.options, fld.type.name
    if kind in ("string", "text"):
        letters = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x00")
        values = (
            st.from_regex(options.pattern, fullmatch=True)
            if options.pattern is not None
            else st.text(letters, min_size=1, max_size=min(options.max_length or 40, 40)).filter(
                lambda t: t.strip() not in EMPTY_VALUES
            )
        )
    elif kind == "email":
        values = st.from_regex(r"\A[a-z0-9.]{1,12}@[a-z]{1,8}\.(com|edu|co\.uk)\Z").filter(
            lambda e: ".." not in e and not e.startswith(".") and ".@" not in e
        )
    elif kind == "integer":
        numbers = st.integers(
            -(2**63) if options.min is None else options.min, 2**63 - 1 if options.max is None else options.max
        )
        values = numbers | numbers.map(str) | numbers.map(float).filter(lambda f: abs(f) < 2**53)
    elif kind == "decimal":
        low = Decimal("-99999999999999.9999") if options.min is None else Decimal(options.min)
        high = Decimal("99999999999999.9999") if options.max is None else Decimal(options.max)
        numbers = st.decimals(low, high, places=4, allow_nan=False, allow_infinity=False)
        values = numbers | numbers.map(lambda d: f"{d:f}")
    elif kind == "boolean":
        values = st.sampled_from([True, False, "true", "false", 0, 1])
    elif kind == "date":
        values = st.dates(dt.date(1900, 1, 1), dt.date(2200, 12, 31)).map(dt.date.isoformat)
    elif kind == "datetime":
        offsets = st.sampled_from(
            [dt.UTC, dt.timezone(dt.timedelta(hours=3)), dt.timezone(dt.timedelta(hours=-5, minutes=-30))]
        )
        values = st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1), timezones=offsets).map(
            dt.datetime.isoformat
        )
    elif kind == "choice":
        values = st.sampled_from(options.choices)
    elif kind == "multichoice":
        chosen = st.lists(st.sampled_from(options.choices), min_size=1, unique=True)
        values = chosen | chosen.map(";".join)
    else:  # lookup: a bare id or Zoho's object, of any printable characters, / and % too
        ids = st.text(st.characters(whitelist_categories=("L", "N", "P", "S")), min_size=1, max_size=20).filter(
            lambda i: i != "-None-"
        )
        values = ids | st.builds(lambda i, n: {"id": i, "name": n}, ids, st.text(max_size=10))
    return values if fld.required else values | st.sampled_from([None, "", "-None-"])


_exact = msgspec.json.Decoder(float_hook=Decimal).decode  # numbers as sent, not as floats


def expected(fld: Field, sent: Any) -> Any:
    """What the field stores for `sent`: its type's parse; an empty value is the field's default."""
    value = (
        None if sent is None or (isinstance(sent, str) and sent in EMPTY_VALUES) else fld.type.parse(sent, fld.options)
    )
    return fld.default if value in ("", []) or value is None else value


@st.composite
def valid_records(draw: st.DrawFn, entities: list[Entity]) -> tuple[Entity, dict[str, Any]]:
    """A record of an entity with no required lookup, its id holding / and % now and then."""
    entity = draw(st.sampled_from(entities))
    prefix = draw(st.sampled_from(["", "a/b", "100%", "x%2Fy", "ü/%25"]))
    record: dict[str, Any] = {"id": f"{prefix}{next(_ids)}"}
    for fld in entity.fields:
        if fld.required or draw(st.booleans()):
            record[fld.source] = draw(valid_values(fld))
    return entity, record


async def test_what_is_stored_is_what_was_sent(api: Api) -> None:
    entities = [entity for entity in api.engine.catalog if not entity.requires]
    loop = asyncio.get_running_loop()
    statuses: dict[str, int] = {}

    async def send_and_read(entity: Entity, record: dict[str, Any]) -> tuple[Any, Any]:
        sent = await api.http.post(f"/v1/sync/{entity.name}", content=_json(record), headers=api.auth())
        read = await api.http.get(f"/v1/{entity.name}/{quote(record['id'], safe='')}", headers=api.auth())
        return msgspec.json.decode(sent.content), (
            read.status_code,
            _exact(read.content),
        )

    @settings(
        max_examples=ROUND_TRIP_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(generated=valid_records(entities))
    def check(generated: tuple[Entity, dict[str, Any]]) -> None:
        entity, record = generated
        report, (status, stored) = asyncio.run_coroutine_threadsafe(send_and_read(entity, record), loop).result(
            timeout=60
        )
        result = report["results"][0]
        statuses[result["status"]] = statuses.get(result["status"], 0) + 1
        assert result["status"] == "NEW", f"{record} -> {result}"
        assert status == 200, stored
        assert stored[entity.id_key] == record["id"]
        for fld in entity.fields:
            want = expected(fld, record.get(fld.source))
            got = stored["values"][fld.source]
            got = None if got is None else fld.type.parse(got, fld.options)
            assert got == want, f"{entity.name}.{fld.source}: sent {record.get(fld.source)!r}, stored {got!r}"

    await asyncio.wait_for(asyncio.to_thread(check), timeout=300)
    assert statuses == {"NEW": ROUND_TRIP_EXAMPLES}
