"""Every error of the HTTP service: its status, its code, and a message that says what to do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from syncengine.engine import ContendedError, SyncEngine
from syncengine.errors import to_api_error
from tests.conftest import count_rows
from tests.records import program, student
from tests.service import Api, running_api

KNOWN = "programs, teachers, students, units, classes, registrations, enrollments, payments, grades"


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine, max_body_bytes=4096, max_records=3) as api:
        yield api


def json_body(content: bytes | str) -> dict[str, Any]:
    return {"content": content, "headers": {"Content-Type": "application/json"}}


# (request options, status, error code, message)
CASES = [
    pytest.param(
        "/v1/sync/students",
        json_body(b'{"data": [\n  {"id": "1",}\n]}'),
        400,
        "malformed_json",
        "malformed JSON at line 2, column 14: trailing comma in object",
        id="malformed-json",
    ),
    pytest.param(
        "/v1/sync/students",
        json_body(b""),
        400,
        "invalid_body",
        'the body is empty: send {"data": [records]}, [records] or one record object',
        id="empty-body",
    ),
    pytest.param(
        "/v1/sync/students",
        json_body(b'"just a string"'),
        400,
        "invalid_body",
        'expected a JSON object or array of records, got str; send {"data": [records]}, [records] or one record object',
        id="json-string",
    ),
    pytest.param(
        "/v1/sync/students",
        json_body(b'{"data": {"id": "1"}}'),
        400,
        "invalid_body",
        '"data" must be a list of records',
        id="data-not-a-list",
    ),
    pytest.param(
        "/v1/sync/students",
        {"content": b"a=1&b", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        400,
        "invalid_body",
        "malformed form body: field 2 has no '=': send name=value pairs joined by '&'",
        id="malformed-form",
    ),
    pytest.param(
        "/v1/sync/studnets",
        {"json": [student()]},
        404,
        "unknown_entity",
        f"unknown entity 'studnets' (known: {KNOWN})",
        id="unknown-entity",
    ),
    pytest.param(
        "/v1/sync/students",
        {"content": b"x" * 5000, "headers": {"Content-Type": "application/json"}},
        413,
        "body_too_large",
        "the request body is larger than 4096 bytes (SYNCENGINE_MAX_BODY_BYTES): send smaller batches",
        id="body-too-large",
    ),
    pytest.param(
        "/v1/sync/programs",
        {"json": [program(str(i)) for i in range(4)]},
        413,
        "too_many_records",
        "4 records in one request; the limit is 3 (SYNCENGINE_MAX_RECORDS): send them in smaller batches",
        id="too-many-records",
    ),
    pytest.param(
        "/v1/sync/students",
        {"content": b"<xml/>", "headers": {"Content-Type": "application/xml"}},
        415,
        "unsupported_media_type",
        "Content-Type 'application/xml' is not accepted: send application/json (one record, an array, or "
        '{"data": [records]}) or application/x-www-form-urlencoded (one record)',
        id="wrong-content-type",
    ),
    pytest.param(
        "/v1/sync/students?dry_run=perhaps",
        {"json": [student()]},
        400,
        "invalid_query_parameter",
        "query parameter 'dry_run' must be true or false (or 1 or 0), got 'perhaps'; nothing was written",
        id="bad-dry-run",
    ),
    pytest.param(
        "/v1/sync/students",
        {"json": [student()], "headers": {"Idempotency-Key": "has spaces"}},
        400,
        "invalid_idempotency_key",
        "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
        id="bad-idempotency-key",
    ),
]


@pytest.mark.parametrize(("path", "request_options", "status", "error", "message"), CASES)
async def test_bad_requests(
    api: Api, path: str, request_options: dict[str, Any], status: int, error: str, message: str | None
) -> None:
    options = dict(request_options)
    options["headers"] = api.auth() | options.get("headers", {})
    response = await api.http.post(path, **options)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error" and body["status_code"] == status and body["error"] == error
    if message is not None:
        assert body["message"] == message
    assert "Traceback" not in response.text
    assert await count_rows(api.engine.database, "programs") == 0


async def test_no_key_is_401(api: Api) -> None:
    response = await api.http.post("/v1/sync/students", json=[student()])
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["message"] == (
        "no API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
        "(`syncengine tenant add NAME` creates a tenant and its key)"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk_not-a-real-key"},
        {"X-API-Key": "sk_not-a-real-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["bearer", "x-api-key", "basic"],
)
async def test_bad_key_is_401(api: Api, headers: dict[str, str]) -> None:
    response = await api.http.post("/v1/sync/students", json=[student()], headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] in ("invalid_api_key", "malformed_credentials")
    assert "sk_not-a-real-key" not in response.text


async def test_another_tenants_id_header_is_403(api: Api) -> None:
    response = await api.sync("students", [student()], headers={"X-Tenant-ID": "other"})
    assert response.status_code == 403
    assert response.json() == {
        "status": "error",
        "status_code": 403,
        "error": "tenant_mismatch",
        "message": "X-Tenant-ID does not name the tenant of this API key ('school'); send that name or leave the header out",
    }
    assert await count_rows(api.engine.database, "students") == 0


async def test_a_rotated_key_stops_working(api: Api) -> None:
    from syncengine.tenants import rotate_key

    new_key = await rotate_key(api.engine.database, "school")
    assert (await api.sync("programs", [program()])).status_code == 401
    response = await api.http.post("/v1/sync/programs", json=[program()], headers={"X-API-Key": new_key})
    assert response.status_code == 200


async def test_unknown_paths_and_methods_are_json(api: Api) -> None:
    missing = await api.http.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong_method = await api.http.get("/v1/sync/students", headers=api.auth())
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"


async def test_the_same_key_replays_an_error_with_the_same_status(api: Api) -> None:
    headers = {"Idempotency-Key": "too-many"}
    first = await api.sync("programs", [program(str(i)) for i in range(4)], headers=headers)
    again = await api.sync("programs", [program(str(i)) for i in range(4)], headers=headers)
    assert first.status_code == again.status_code == 413
    assert again.headers["idempotent-replayed"] == "true"


def test_a_batch_that_kept_losing_races_is_a_409_that_says_to_send_it_again() -> None:
    """tests/test_locks.py makes the engine raise it for real; this is how the service answers."""
    error = to_api_error(ContendedError("other writers changed ...; nothing of it was written: send it again"))
    assert (error.status_code, error.error, error.headers) == (409, "write_conflict", {"Retry-After": "1"})
    assert error.message.endswith("send it again")


async def test_a_missing_schema_is_503_not_500(databases: Any, dialect: str, catalog: Any) -> None:
    import sqlalchemy as sa

    from syncengine.tables import engine_tables
    from syncengine.tenants import add_tenant

    database = await databases.create(dialect)
    metadata = sa.MetaData()
    engine_tables(metadata)
    async with database.begin() as conn:
        await conn.run_sync(metadata.create_all)  # tenants, but no entity tables
    engine = SyncEngine(catalog, database)
    key = await add_tenant(database, "late")
    async with running_api(engine) as api:
        response = await api.http.post("/v1/sync/programs", json=[program()], headers={"X-API-Key": key})
    assert response.status_code == 503
    assert response.json()["message"] == "the database has no table for 'programs': run `syncengine db upgrade` first"
