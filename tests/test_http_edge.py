"""The HTTP edge answers a careless or hostile caller with a clear 4xx: never a 500, never a silent write.

Query parameters of a write, nesting depth, notification callbacks, encodings, ids with `/`,
HEAD, lone surrogates, tenant names, and a client that goes away mid-body (in-process; the
socket-level behaviour is in test_http_edge_serve.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import msgspec
import pytest

from syncengine.engine import SyncEngine
from syncengine.payloads import MAX_JSON_DEPTH, TooDeep, check_depth, parse_body
from syncengine.tenants import TenantError, check_name
from tests.conftest import count_rows
from tests.records import student
from tests.service import Api, running_api

SQLITE_ONLY = pytest.mark.parametrize("dialect", ["sqlite"])  # what the edge decides touches no database


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine) as api:
        yield api


async def post(api: Api, path: str, body: bytes, **headers: str) -> Any:
    return await api.http.post(path, content=body, headers=api.auth() | {"Content-Type": "application/json"} | headers)


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["message"]


# 6. Query parameters of a write


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [
        ("dryrun=true", "unknown_query_parameter", "unknown query parameter 'dryrun' (known: dry_run)"),
        ("dry-run=true", "unknown_query_parameter", "unknown query parameter 'dry-run' (known: dry_run)"),
        ("DRY_RUN=true", "unknown_query_parameter", "unknown query parameter 'DRY_RUN' (known: dry_run)"),
        ("dry_run=true&commit=1", "unknown_query_parameter", "unknown query parameter 'commit' (known: dry_run)"),
        (
            "dry_run=true&dry_run=false",
            "repeated_query_parameter",
            "query parameter 'dry_run' is given more than once; give it once",
        ),
        (
            "dry_run=yes",
            "invalid_query_parameter",
            "query parameter 'dry_run' must be true or false (or 1 or 0), got 'yes'",
        ),
        ("dry_run=", "invalid_query_parameter", "query parameter 'dry_run' must be true or false (or 1 or 0), got ''"),
    ],
)
async def test_a_misspelled_or_repeated_dry_run_writes_nothing(api: Api, query: str, error: str, message: str) -> None:
    response = await api.http.post(f"/v1/sync/students?{query}", json=[student()], headers=api.auth())
    assert error_of(response) == (400, error, f"{message}; nothing was written")
    assert await count_rows(api.engine.database, "students") == 0


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("query", "written"),
    [("", 1), ("dry_run=true", 0), ("dry_run=TRUE", 0), ("dry_run=1", 0), ("dry_run=false", 1), ("dry_run=0", 1)],
)
async def test_the_spellings_of_dry_run_that_are_accepted(api: Api, query: str, written: int) -> None:
    response = await api.http.post(f"/v1/sync/students?{query}", json=[student()], headers=api.auth())
    assert response.status_code == 200, response.text
    assert response.json()["dry_run"] is (written == 0)
    assert await count_rows(api.engine.database, "students") == written


# 8. Nesting depth


def nested(depth: int) -> bytes:
    """An array nested `depth` deep, as the value of an unmapped field."""
    return b"[" * depth + b"]" * depth


RECORD = b'{"id": "3001", "First_Name": "A", "Last_Name": "B", "Academic_Email": "a@school.edu", "Status": "Active"'
DEEP = nested(1000)


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("body", "where"),
    [
        (RECORD + b', "Unmapped": ' + DEEP + b"}", "line 1, column 182"),  # one record
        (b"[\n" + RECORD + b',\n "Unmapped": ' + DEEP + b"}]", "line 3, column 76"),  # a record of an array (Raw)
        (b'{"data": [' + RECORD + b', "x": ' + DEEP + b"}], " + b'"info": {}}', "line 1, column 183"),  # envelope (Raw)
        (b'{"info": ' + DEEP + b', "data": [' + RECORD + b"}]}", "line 1, column 73"),  # outside the records
        (
            b'{"ids": ["3001"], "operation": "update", "affected_values": [{"record_id": "3001", "values": {"x": '
            + DEEP
            + b"}}]}",
            "line 1, column 160",
        ),
        (DEEP, "line 1, column 65"),
        (b'{"a": ' * 1000 + b"1" + b"}" * 1000, "line 1, column 385"),
    ],
    ids=["object", "array-record", "envelope-record", "envelope-info", "notification", "bare-array", "objects"],
)
async def test_json_nested_too_deep_is_400_saying_where(api: Api, body: bytes, where: str) -> None:
    response = await post(api, "/v1/sync/students", body)
    assert error_of(response) == (
        400,
        "json_too_deep",
        f"JSON nested deeper than 64 levels at {where}: send records nested at most 64 arrays and objects deep",
    )
    assert await count_rows(api.engine.database, "students") == 0


@SQLITE_ONLY
async def test_json_as_deep_as_the_limit_is_accepted(api: Api) -> None:
    # The array of records is level 1, the record 2: the unmapped value may take the other 62.
    body = b"[" + RECORD + b', "Unmapped": ' + nested(MAX_JSON_DEPTH - 2) + b"}]"
    response = await post(api, "/v1/sync/students", body)
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["NEW"] == 1


@pytest.mark.parametrize(
    "body",
    [
        b'[{"id": "1", "Note": "' + b"[" * 1000 + b'"}]',  # brackets in a string do not nest
        b'[{"id": "1", "Note": "\\"' + b"{" * 1000 + b'"}]',  # nor after an escaped quote
        b'[{"id": "1", "Note": "\\\\", "n": "' + b"]" * 1000 + b'", "x": ' + nested(60) + b"}]",
        b'[{"id": "1", "Note": "' + b"]" * 1000 + b'"}, ' + b"[" * 60 + b"]" * 60 + b"]",
    ],
    ids=["brackets-in-string", "after-escaped-quote", "after-escaped-backslash", "closing-brackets-in-string"],
)
def test_brackets_inside_strings_do_not_count(body: bytes) -> None:
    check_depth(body)
    assert len(parse_body(body)) in (1, 2)


@pytest.mark.parametrize(
    "body",
    [
        b'[{"id": "1", "Note": "' + b"]" * 100 + b'", "x": ' + nested(64) + b"}]",  # closers in a string hide nothing
        b'[{"a": "\\\\"}, ' + nested(65) + b"]",  # an escaped backslash ends its string
        (b"[[]," * 70) + b"1" + b"]" * 70,  # deep, in short runs of brackets
    ],
    ids=["closers-in-a-string-before", "escaped-backslash-then-deep", "short-runs"],
)
def test_depth_is_not_hidden_by_strings_or_short_runs(body: bytes) -> None:
    with pytest.raises(TooDeep):
        check_depth(body)


# 10. Notification callbacks


def callback(**fields: Any) -> bytes:
    return msgspec.json.encode({"ids": ["3001"], "operation": "update", "module": "BTEC_Students"} | fields)


SHAPE = '[{"record_id": "...", "values": {"Field": value}}]'


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            callback(affected_values=[{"record_id": "3001", "values": [1]}]),
            '"affected_values"[0].values must be an object of field values, got [1]',
        ),
        (
            callback(affected_values=[{"record_id": "3001", "values": "abc"}]),
            '"affected_values"[0].values must be an object of field values, got "abc"',
        ),
        (
            callback(affected_values=[{"record_id": ["x"], "values": {}}]),
            '"affected_values"[0].record_id must be a record id (text or a whole number), got ["x"]',
        ),
        (
            callback(affected_values=[{"values": {}}]),
            '"affected_values"[0].record_id must be a record id (text or a whole number), got null',
        ),
        (callback(affected_values=5), f'"affected_values" must be a list like {SHAPE}, got 5'),
        (
            callback(affected_values=[{"record_id": "3001", "values": {}}, 7]),
            f'"affected_values"[1] must be an object like {SHAPE[1:-1]}, got 7',
        ),
        (callback(operation="upsert"), '"operation" must be one of insert, update, delete, got "upsert"'),
        (callback(operation=5), '"operation" must be one of insert, update, delete, got 5'),
        (callback(ids=["3001", True]), '"ids" must be a list of record ids, got the item true'),
    ],
)
async def test_odd_callbacks_are_400_naming_what_is_wrong(api: Api, body: bytes, message: str) -> None:
    response = await post(api, "/v1/sync/students", body)
    assert error_of(response) == (400, "invalid_body", message)
    assert await count_rows(api.engine.database, "students") == 0


async def test_meta_keys_and_ids_in_affected_values_are_not_commands(api: Api) -> None:
    await api.sync("students", [student("3001"), student("3002")])
    values = {"First_Name": "Deniz", "$deleted": True, "$approval_state": "approved", "id": "3002", "zoho_id": "3002"}
    response = await post(api, "/v1/sync/students", callback(affected_values=[{"record_id": "3001", "values": values}]))
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert (result["zoho_student_id"], result["status"]) == ("3001", "UPDATED")
    assert result["changes"] == {"First_Name": ["Ayşe", "Deniz"]}
    for zoho_id, first_name in (("3001", "Deniz"), ("3002", "Ayşe")):
        stored = (await api.http.get(f"/v1/students/{zoho_id}", headers=api.auth())).json()
        assert (stored["values"]["First_Name"], stored["deleted_at"]) == (first_name, None)
    # An empty id stays empty: a `zoho_id` among the values does not fill it in.
    retarget = callback(ids=[""], affected_values=[{"record_id": "", "values": {"zoho_id": "3002", "First_Name": "X"}}])
    assert (await post(api, "/v1/sync/students", retarget)).json()["results"][0]["status"] == "INVALID"
    stored = (await api.http.get("/v1/students/3002", headers=api.auth())).json()
    assert stored["values"]["First_Name"] == "Ayşe"
    # A numeric record id names the same record as its text.
    numeric = callback(ids=[3001], affected_values=[{"record_id": 3001, "values": {"First_Name": "Ece"}}])
    assert (await post(api, "/v1/sync/students", numeric)).json()["results"][0]["status"] == "UPDATED"


# 17. Ids with `/` or `%`, HEAD, encodings, lone surrogates, tenant names


@SQLITE_ONLY
@pytest.mark.parametrize("zoho_id", ["x/y", "a%b", "a%2Fb", "/lead", "tail/", "a//b", "ü/ş"])
async def test_a_stored_id_can_be_read_back(api: Api, zoho_id: str) -> None:
    assert (await api.sync("students", [student(zoho_id)])).json()["results"][0]["status"] == "NEW"
    response = await api.http.get(f"/v1/students/{quote(zoho_id, safe='')}", headers=api.auth())
    assert response.status_code == 200, response.text
    assert response.json()["zoho_student_id"] == zoho_id


@SQLITE_ONLY
async def test_head_on_health_and_ready(api: Api) -> None:
    """HEAD answers as GET does, without a body (the test database has no Alembic revision: 503)."""
    for path, status in (("/v1/health", 200), ("/v1/ready", 503)):
        response = await api.http.head(path)
        assert (response.status_code, response.content) == (status, b""), path
        assert response.status_code == (await api.http.get(path)).status_code


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        (
            {"Content-Encoding": "gzip"},
            "unsupported_content_encoding",
            "Content-Encoding 'gzip' is not accepted: send the body uncompressed (no Content-Encoding, or identity)",
        ),
        (
            {"Content-Type": "application/json; charset=utf-16"},
            "unsupported_charset",
            "charset 'utf-16' is not accepted: send the body as UTF-8 (charset=utf-8, or no charset)",
        ),
        (
            {"Content-Type": 'application/x-www-form-urlencoded; charset="ISO-8859-1"'},
            "unsupported_charset",
            "charset 'iso-8859-1' is not accepted: send the body as UTF-8 (charset=utf-8, or no charset)",
        ),
    ],
)
async def test_other_encodings_are_415_naming_what_is_accepted(
    api: Api, headers: dict[str, str], error: str, message: str
) -> None:
    response = await post(api, "/v1/sync/students", msgspec.json.encode([student()]), **headers)
    assert error_of(response) == (415, error, message)


@SQLITE_ONLY
@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "application/json; charset=UTF-8"}, {"Content-Encoding": "identity"}],
)
async def test_utf8_and_identity_are_accepted(api: Api, headers: dict[str, str]) -> None:
    response = await post(api, "/v1/sync/students", msgspec.json.encode([student()]), **headers)
    assert response.status_code == 200, response.text


LONE = "a lone UTF-16 surrogate '{}' (a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one): "


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"id": "\\ud800"}', "line 1, column 9: " + LONE.format("\\ud800")),
        (b'[{"id": "1",\n "Name": "x\\ud800y"}]', "line 2, column 12: " + LONE.format("\\ud800")),
        (b'{"id": "\\ud800\\u0041"}', "line 1, column 9: " + LONE.format("\\ud800")),
        (b'{"id": "\\udc00"}', "line 1, column 9: " + LONE.format("\\udc00")),
        (b'{"id": "\\\\\\udbff"}', "line 1, column 11: " + LONE.format("\\udbff")),
    ],
)
def test_a_lone_surrogate_is_named(body: bytes, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_body(body)
    assert str(caught.value) == f"malformed JSON at {message}text must be valid Unicode"


def test_a_surrogate_pair_and_an_escaped_backslash_are_fine() -> None:
    assert parse_body(b'{"id": "\\ud83d\\ude00", "n": "\\\\ud800"}') == [{"id": "\U0001f600", "n": "\\ud800"}]


def test_bytes_that_are_not_utf8_are_named() -> None:
    with pytest.raises(ValueError) as caught:
        parse_body(b'{"id": "1",\n "n": "\xff"}')
    assert str(caught.value) == "malformed JSON at line 2, column 8: not UTF-8 (byte 0xff): send UTF-8"


PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@pytest.mark.parametrize("name", ["school\n", "school\r\n", "", "-school", "sch ool", "x" * 65, "okul\u0131"])
def test_tenant_names_follow_the_pattern(name: str) -> None:
    with pytest.raises(TenantError) as caught:
        check_name(name)
    assert str(caught.value) == (
        f"tenant name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-', "
        f"starting with a letter or digit ({PATTERN})"
    )


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_the_engine_refuses_a_tenant_name_off_the_pattern(engine: SyncEngine) -> None:
    with pytest.raises(TenantError, match="must be 1 to 64 letters"):
        await engine.sync("school\n", "students", [student()])
    assert await count_rows(engine.database, "students") == 0


# 11. A client that goes away mid-body


@SQLITE_ONLY
async def test_a_client_gone_mid_body_is_logged_as_499_without_a_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'[{"id": "3001", ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not incoming:
            await asyncio.Event().wait()  # never set: the app waits here as on a silent client
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"5000")]
    headers += [(k.lower().encode(), v.encode()) for k, v in api.auth().items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/sync/students", "raw_path": b"/v1/sync/students", "query_string": b"", "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    await asyncio.wait_for(api.app(scope, receive, send), 10)
    assert sent[0]["status"] == 499
    (line,) = [r for r in caplog.records if r.getMessage() == "request"]
    assert (line.fields["status"], line.fields["error"]) == (499, "client_disconnected")  # type: ignore[attr-defined]
    assert all(record.exc_info is None for record in caplog.records)
    assert all(record.levelno < logging.WARNING for record in caplog.records)
    assert await count_rows(api.engine.database, "students") == 0
