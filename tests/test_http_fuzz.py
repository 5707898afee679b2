"""Fuzzing: bodies generated from the served OpenAPI document, sent to every sync endpoint.

Whatever arrives (records that follow the schema, records that do not, any JSON, any bytes, forms),
no answer is a 5xx. Hypothesis runs in a worker thread and sends each request on the test's
event loop, where the app and its database connections live.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import string
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.engine import SyncEngine
from tests.service import Api, running_api

EXAMPLES = 200
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

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
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
