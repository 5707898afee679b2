"""Every parameter of every route, and the credential headers, sent wrong: the answer says what is
accepted, in our words (never a framework's "Expected `bool`, got `str`"), and never echoes a key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from syncengine.engine import SyncEngine
from tests.records import student
from tests.service import Api, running_api

SQLITE_ONLY = pytest.mark.parametrize("dialect", ["sqlite"])  # what the edge decides needs one database only
SEND_KEY = "send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
#: What a framework says of a parameter it could not read; none of it may reach a caller.
FRAMEWORK_WORDS = ("Expected `", "Validation failed", "got `", "Missing required")


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine) as api:
        yield api


def operations(api: Api) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(method, path, parameters) of every operation the OpenAPI document lists."""
    document = api.app.openapi_schema.to_schema()
    return [
        (method.upper(), path, operation.get("parameters", []))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "responses" in operation
    ]


def concrete(path: str) -> str:
    return path.replace("{entity}", "students").replace("{zoho_id}", "3001")


def assert_ours(response: Any) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    assert not any(words in response.text for words in FRAMEWORK_WORDS), response.text
    return dict(response.json())


@SQLITE_ONLY
async def test_every_query_parameter_says_which_values_it_accepts(api: Api) -> None:
    checked = 0
    for method, path, parameters in operations(api):
        for parameter in (p for p in parameters if p["in"] == "query"):
            if path in ("/v1/deliveries", "/v1/intake"):  # state, limit, after_id: exact cases in
                url = f"{path}?{parameter['name']}=n%C3%A4"  # tests/test_deliveries_http.py, test_notifications.py
                body = assert_ours(await api.http.request(method, url, headers=api.auth()))
                assert body["error"] == (
                    "invalid_delivery_query" if path == "/v1/deliveries" else "invalid_intake_query"
                )
                assert body["message"].startswith(parameter["name"]) and "'nä'" in body["message"]
                continue
            assert parameter["schema"]["type"] == "boolean", f"add cases for {parameter} of {method} {path}"
            for value in ("yes", "", "on", "2", "n%C3%A4"):
                url = f"{concrete(path)}?{parameter['name']}={value}"
                body = assert_ours(await api.http.request(method, url, headers=api.auth(), content=b"[]"))
                shown = "nä" if value == "n%C3%A4" else value
                assert body["error"] == "invalid_query_parameter"
                assert body["message"] == (
                    f"query parameter '{parameter['name']}' must be true or false (or 1 or 0), "
                    f"got '{shown}'; nothing was written"
                )
                checked += 1
    assert checked >= 5 * 9  # dry_run of each entity's sync route


@SQLITE_ONLY
async def test_every_header_parameter_sent_twice_or_wrong_is_a_4xx_that_says_what_to_send(api: Api) -> None:
    bad = {"Idempotency-Key": "has spaces", "X-Tenant-ID": "nobody"}
    messages = {
        "Idempotency-Key": "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
        "X-Tenant-ID": "X-Tenant-ID does not name the tenant of this API key ('school'); "
        "send that name or leave the header out",
    }
    checked = set()
    for method, path, parameters in operations(api):
        for parameter in (p for p in parameters if p["in"] == "header"):
            name = parameter["name"]
            twice = [*api.auth().items(), (name, "school"), (name, "other")]
            body = assert_ours(await api.http.request(method, concrete(path), headers=twice, content=b"[]"))
            assert (body["status_code"], body["error"]) == (400, "repeated_header")
            assert body["message"] == f"the {name} header is sent 2 times: send it once"
            wrong = api.auth() | {name: bad[name]}
            body = assert_ours(await api.http.request(method, concrete(path), headers=wrong, content=b"[]"))
            assert body["message"] == messages[name]
            checked.add(name)
    assert checked == {"Idempotency-Key", "X-Tenant-ID"}


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/nosuch/1", 404, "unknown entity 'nosuch' (known: programs, teachers, students, units, classes, "
         "registrations, enrollments, payments, grades)"),
        ("/v1/students/%FF", 404, "the record id in the path is not UTF-8 once percent-decoded"),
        ("/v1/students/a%2Fb", 404, "no student with Zoho id 'a/b' is stored for this tenant"),
    ],
)  # fmt: skip
async def test_path_parameters_say_what_is_wrong(api: Api, path: str, status: int, message: str) -> None:
    body = assert_ours(await api.http.get(path, headers=api.auth()))
    assert (body["status_code"], body["message"]) == (status, message)


# (headers, error code, message): what is wrong with the credentials, and how to send them.
CREDENTIALS = [
    pytest.param({"Authorization": "{key}"}, "malformed_credentials",
                 "the Authorization header has no scheme (the word Bearer and a space before the key): " + SEND_KEY,
                 id="key-without-bearer"),
    pytest.param({"Authorization": "Bearer"}, "malformed_credentials",
                 "the Authorization header says Bearer but holds no key: " + SEND_KEY, id="bearer-alone"),
    pytest.param({"Authorization": "Bearer   "}, "malformed_credentials",
                 "the Authorization header says Bearer but holds no key: " + SEND_KEY, id="bearer-and-spaces"),
    pytest.param({"Authorization": "Bearer: {key}"}, "malformed_credentials",
                 "the Authorization header has a ':' after Bearer: " + SEND_KEY, id="bearer-colon"),
    pytest.param({"Authorization": "Basic {key}"}, "malformed_credentials",
                 "the Authorization scheme 'Basic' is not accepted, only Bearer: " + SEND_KEY, id="basic"),
    pytest.param({"Authorization": "Zoho-oauthtoken {key}"}, "malformed_credentials",
                 "the Authorization scheme 'Zoho-oauthtoken' is not accepted, only Bearer: " + SEND_KEY,
                 id="zoho-token"),
    pytest.param({"Authorization": "{key}x {key}"}, "malformed_credentials",
                 "the Authorization header has no scheme (the word Bearer and a space before the key): " + SEND_KEY,
                 id="key-as-scheme"),
    pytest.param({"Authorization": "<{key}> x"}, "malformed_credentials",
                 "the Authorization scheme is not accepted, only Bearer: " + SEND_KEY, id="odd-scheme-not-shown"),
    pytest.param({"Authorization": ""}, "malformed_credentials",
                 "the Authorization header is empty: " + SEND_KEY, id="empty-authorization"),
    pytest.param({"X-API-Key": " "}, "malformed_credentials",
                 "the X-API-Key header is empty: " + SEND_KEY, id="empty-x-api-key"),
    pytest.param([("Authorization", "Bearer {key}"), ("Authorization", "Bearer {key}")], "malformed_credentials",
                 "the Authorization header is sent 2 times: send one key, in one header", id="authorization-twice"),
    pytest.param([("X-API-Key", "{key}"), ("X-API-Key", "{key}")], "malformed_credentials",
                 "the X-API-Key header is sent 2 times: send one key, in one header", id="x-api-key-twice"),
    pytest.param({"Authorization": "Bearer {key}", "X-API-Key": "{key}2"}, "malformed_credentials",
                 "the Authorization and X-API-Key headers hold different keys: send one of them", id="two-keys"),
    pytest.param({}, "missing_api_key", None, id="nothing"),
    pytest.param({"Authorization": "Bearer {key}2"}, "invalid_api_key",
                 "the API key is not valid: it is unknown or was replaced by `syncengine tenant key NAME`",
                 id="unknown-key"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "error", "message"), CREDENTIALS)
async def test_credentials_that_hold_no_usable_key_say_what_is_wrong(
    api: Api, headers: Any, error: str, message: str | None
) -> None:
    key = api.keys["school"]
    sent = [
        (name, value.format(key=key)) for name, value in (headers.items() if isinstance(headers, dict) else headers)
    ]
    for method, path in [("POST", "/v1/sync/students"), ("GET", "/v1/students/3001")]:
        response = await api.http.request(method, path, headers=sent, content=b"[]")
        body = assert_ours(response)
        assert (response.status_code, body["error"]) == (401, error)
        if message is not None:
            assert body["message"] == message
        assert key not in response.text
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "bearer {key}"},
        {"Authorization": "Bearer   {key}  "},
        {"X-API-Key": "{key}"},
        {"Authorization": "Bearer {key}", "X-API-Key": "{key}"},
        {"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": "{key}"},  # a proxy's own credentials
    ],
    ids=["lower-case-scheme", "spaces", "x-api-key", "both-the-same", "x-api-key-beside-basic"],
)
async def test_the_ways_to_send_a_key(api: Api, headers: dict[str, str]) -> None:
    sent = {name: value.format(key=api.keys["school"]) for name, value in headers.items()}
    response = await api.http.post("/v1/sync/students", json=[student()], headers=sent)
    assert response.status_code == 200, response.text
