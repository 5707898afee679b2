"""The OpenAPI document lists every answer each route can give, with its schema and headers.

Three views of the same promise:

- the code: every `ApiError(status, "code", ..., headers)` written in syncengine/ (read from its
  syntax tree, so a new error cannot be added without its entry), and every class of the engine's
  exception tree that `errors.HTTP` answers (each subclass found by import), is in
  `openapi.ANSWERS` with that status and those headers, and the functions (and exception
  classes) on a route's way raise only codes that route declares;
- the document: each served operation declares exactly the statuses of its codes, each with the
  Error schema narrowed to them, and the headers they carry;
- the wire: a table of real requests, one per answer we can provoke, gets answers that the
  document declares for that operation and that follow its schema.

tests/test_openapi_fuzz.py covers the same from the other side, with generated requests.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest

import syncengine
from syncengine import errors, openapi
from syncengine.engine import SyncEngine
from syncengine.exceptions import SyncEngineError
from tests.conftest import ROOT
from tests.records import program
from tests.service import Api, running_api

#: Codes the code can produce that no documented operation answers with, and why.
UNDOCUMENTED = {
    "internal_error": "a 500 is a bug of ours, never an answer we mean to give",
    "invalid_request": "litestar's own parameter validation: the documented parameters are strings, or checked first",
    **dict.fromkeys(("bad_input", "not_found", "conflict", "unavailable"), "a branch: only its leaves are raised"),
    "lost_race": "the engine runs the transaction again; after the last attempt it is write_conflict",
    "invalid_tenant_name": "a request's tenant is its key's, whose name is checked: tenant_name_refused",
    "tenant_exists": "the tenant commands' only",
    "unknown_tenant": "the tenant commands' only",
    **dict.fromkeys(("moodle_error", "zoho_error"), "a family of a client's failures: only its leaves are raised"),
    **dict.fromkeys(
        ("moodle_unavailable", "moodle_misconfigured", "moodle_rejected", "invalid_moodle_site"),
        "Moodle's failures reach the delivery worker and the commands, no route (errors.HTTP answers them all the same)",
    ),
    **dict.fromkeys(
        ("zoho_retries_exhausted", "zoho_refused", "zoho_credentials_refused", "invalid_zoho_request"),
        "a route's Zoho calls answer zoho_unavailable or per-record results; these reach the commands (and errors.HTTP)",
    ),
    "backfill_mismatch": "the backfill command's only: a resumed backfill given another --since",
}


@dataclass(frozen=True)
class Raised:
    status: int
    code: str
    headers: frozenset[str]
    where: str  # module.function


def raised_errors() -> list[Raised]:
    """Every ApiError the source constructs with a literal status and code, with its header names."""
    found = []
    for path in sorted((ROOT / "syncengine").glob("*.py")):
        tree = ast.parse(path.read_text())
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assigned = [
                (node.lineno, target.id, node.value)
                for node in ast.walk(function)
                if isinstance(node, ast.Assign)
                for target in node.targets
                if isinstance(target, ast.Name)
            ]
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "ApiError"):
                    continue
                local = {
                    name: value for line, name, value in sorted(assigned, key=lambda a: a[0]) if line <= call.lineno
                }
                status = _literal(call.args[0], constants)
                if not isinstance(status, int):  # litestar's own HTTPException, passed through
                    continue
                headers = (
                    call.args[3]
                    if len(call.args) > 3
                    else next((k.value for k in call.keywords if k.arg == "headers"), None)
                )
                headers = local.get(headers.id, headers) if isinstance(headers, ast.Name) else headers
                names = (
                    frozenset(_literal(key, constants) for key in headers.keys)
                    if isinstance(headers, ast.Dict)
                    else frozenset()
                )
                code = local.get(call.args[1].id, call.args[1]) if isinstance(call.args[1], ast.Name) else call.args[1]
                for option in (code.body, code.orelse) if isinstance(code, ast.IfExp) else (code,):
                    found.append(Raised(status, _literal(option, constants), names, f"{path.stem}.{function.name}"))
    return found


def tree_errors() -> list[Raised]:
    """Every class of the engine's exception tree (all of syncengine imported), as errors.HTTP
    answers it; those it does not answer (a 500: the setup's failures) are left out."""
    for module in pkgutil.iter_modules(syncengine.__path__):
        if module.name != "__main__":
            importlib.import_module(f"syncengine.{module.name}")
    found, kinds = [], [SyncEngineError]
    while kinds:
        kind = kinds.pop()
        kinds.extend(kind.__subclasses__())
        answer = errors.http_of(kind)
        if answer is not None:
            where = f"{kind.__module__.rsplit('.', 1)[-1]}.{kind.__name__}"
            found.append(Raised(answer.status, kind.code, frozenset(answer.headers), where))
    return found


def raised_everywhere() -> list[Raised]:
    return raised_errors() + tree_errors()


def _literal(node: ast.expr | None, constants: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def test_the_source_is_read() -> None:
    where = {(r.code, r.where) for r in raised_everywhere()}
    assert ("missing_api_key", "app.authenticated_tenant") in where
    assert ("tenant_over_share", "admission._refusal") in where
    assert ("client_disconnected", "edge.read") in where  # a named status (CLIENT_CLOSED)
    assert {("malformed_json", "payloads.MalformedJson"), ("invalid_body", "payloads.PayloadError")} <= where
    assert ("database_busy", "exceptions.DatabaseBusy") in where


def test_every_error_the_code_raises_is_in_the_table() -> None:
    raised = {r.code: (r.status, r.headers) for r in raised_everywhere() if r.code not in UNDOCUMENTED}
    assert len(raised) == len(
        {(r.code, r.status, r.headers) for r in raised_everywhere() if r.code not in UNDOCUMENTED}
    )
    table = {code: (answer.status, frozenset(answer.headers)) for code, answer in openapi.ANSWERS.items()}
    assert raised == table


#: The engine's failures of the database, which any statement can raise.
DATABASE = ("exceptions.DatabaseUnavailable", "exceptions.DatabaseNotOpened", "exceptions.DatabaseBusy")
#: The functions on each route's way that raise errors themselves, by the route's answers.
ON_THE_WAY = {
    openapi.TENANT_ANSWERS: ["app.authenticated_tenant", "admission._refusal", *DATABASE, "tenants.CredentialError"],
    openapi.SYNC_ANSWERS: [
        *("edge.check_write_query", "edge.check_encoding", "edge.read", "app._media_type", "app.sync_body"),
        *("app.authenticated_tenant", "admission._refusal", *DATABASE, "tenants.CredentialError"),
        *("payloads.PayloadError", "payloads.MalformedJson", "payloads.TooDeep", "engine.ContendedError"),
        *("idempotency.InvalidIdempotencyKey", "idempotency.IdempotencyKeyReused", "idempotency.IdempotencyKeyInUse"),
        *("idempotency.ClaimLost", "exceptions.UnstorableValue", "exceptions.SchemaMissing"),
        *("fetching.UnsubstitutedMergeField", "fetching.WrongModule", "fetching.ZohoUnreachable"),
    ],
    openapi.READ_ANSWERS: [
        *("app.read_record", "app._path_id", "app.authenticated_tenant", "admission._refusal"),
        *("descriptors.UnknownEntity", "tenants.CredentialError"),
    ],
    openapi.READY_ANSWERS: ["app._readiness"],
    openapi.DELIVERIES_ANSWERS: [
        *("app.deliveries", "app._delivery_query", "app.authenticated_tenant", "admission._refusal"),
    ],
    openapi.RETRY_ANSWERS: ["app.retry", "edge.read", "app.authenticated_tenant", "admission._refusal"],
}


@pytest.mark.parametrize("answers", list(ON_THE_WAY), ids=["tenant", "sync", "read", "ready", "deliveries", "retry"])
def test_each_route_declares_what_the_functions_on_its_way_raise(answers: tuple[str, ...]) -> None:
    raised = {r.code for r in raised_everywhere() if r.where in ON_THE_WAY[answers]}
    assert raised and raised <= set(answers), raised - set(answers)


def test_every_code_of_the_table_is_some_route_s() -> None:
    routes = set(openapi.SYNC_ANSWERS) | set(openapi.READ_ANSWERS) | set(openapi.READY_ANSWERS)
    routes |= set(openapi.DELIVERIES_ANSWERS) | set(openapi.RETRY_ANSWERS)
    routes |= set(openapi.INTAKE_ANSWERS) | set(openapi.NOTIFICATION_ANSWERS)
    assert set(openapi.ANSWERS) == routes | set(openapi.UNDOCUMENTED_ANSWERS)
    assert set(openapi.TENANT_ANSWERS) <= set(openapi.SYNC_ANSWERS) & set(openapi.READ_ANSWERS)


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine, max_body_bytes=4096, max_records=3) as api:
        yield api


def route_answers(path: str) -> tuple[str, ...]:
    if path.startswith("/v1/sync/"):
        return openapi.SYNC_ANSWERS
    return {
        "/v1/{entity}/{zoho_id}": openapi.READ_ANSWERS,
        "/v1/ready": openapi.READY_ANSWERS,
        "/v1/deliveries": openapi.DELIVERIES_ANSWERS,
        "/v1/deliveries/retry": openapi.RETRY_ANSWERS,
        "/v1/intake": openapi.INTAKE_ANSWERS,
        "/v1/zoho/notifications": openapi.NOTIFICATION_ANSWERS,
    }.get(path, ())


async def test_the_document_declares_each_route_s_answers(api: Api) -> None:
    document = (await api.http.get("/schema/openapi.json")).json()
    operations = [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]
    assert len(operations) == 10 + len(list(api.engine.catalog))
    for path, method, operation in operations:
        codes = route_answers(path)
        by_status: dict[str, list[str]] = {}
        for code in codes:
            by_status.setdefault(str(openapi.ANSWERS[code].status), []).append(code)
        responses = operation["responses"]
        assert sorted(responses) == sorted(["200", *by_status]), f"{method} {path}"
        for status, listed in by_status.items():
            declared = responses[status]
            for code in listed:
                assert f"`{code}`" in declared["description"]
            if method == "head":
                assert "content" not in declared
            else:
                narrowed = declared["content"]["application/json"]["schema"]["allOf"]
                assert narrowed[0] == {"$ref": "#/components/schemas/Error"}
                assert narrowed[1]["properties"]["error"]["enum"] == listed
            carried = [set(openapi.ANSWERS[code].headers) for code in listed]
            for name in set().union(*carried):
                assert declared["headers"][name]["required"] == all(name in c for c in carried), (path, status, name)
        if method != "head":
            body = responses["200"]["content"]["application/json"]["schema"]
            assert resolve(body, document).get("type") == "object" or "oneOf" in resolve(body, document)
    assert document["components"]["schemas"]["Error"]["required"] == ["status", "status_code", "error", "message"]


def resolve(schema: Any, document: dict[str, Any]) -> Any:
    """`schema` with every `$ref` into the document's components replaced by what it names."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return resolve(document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], document)
        return {key: resolve(value, document) for key, value in schema.items()}
    if isinstance(schema, list):
        return [resolve(item, document) for item in schema]
    return schema


NO_KEY: dict[str, str | None] = {"Authorization": None}  # None: the header is not sent
EMPTY_KEY = {"Authorization": ""}
JSON = {"Content-Type": "application/json"}
# (method, path, headers (beside the key), body, status, code): one real request per answer we can provoke
PROVOKED: list[tuple[str, str, dict[str, Any], bytes | None, int, str | None]] = [
    ("GET", "/v1/health", {}, None, 200, None),
    ("HEAD", "/v1/health", {}, None, 200, None),
    ("GET", "/v1/entities", {}, None, 200, None),
    ("GET", "/v1/ready", {}, None, 503, "schema_behind"),
    ("HEAD", "/v1/ready", {}, None, 503, None),
    ("GET", "/v1/programs/1001", {}, None, 200, None),
    ("GET", "/v1/programs/a%2Fb%25", {}, None, 404, "record_not_found"),
    ("GET", "/v1/programs/%FF", {}, None, 404, "record_not_found"),
    ("GET", "/v1/programmes/1", {}, None, 404, "unknown_entity"),
    ("GET", "/v1/programs/1001", NO_KEY, None, 401, "missing_api_key"),
    ("GET", "/v1/programs/1001", EMPTY_KEY, None, 401, "malformed_credentials"),
    ("GET", "/v1/programs/1001", {"Authorization": "Bearer sk_wrong"}, None, 401, "invalid_api_key"),
    ("GET", "/v1/programs/1001", {"X-Tenant-ID": "other"}, None, 403, "tenant_mismatch"),
    ("POST", "/v1/sync/programs", JSON, b'[{"id": "1002", "Product_Name": "P"}]', 200, None),
    ("GET", "/v1/deliveries", {}, None, 200, None),
    ("GET", "/v1/deliveries?state=pending&limit=1&after_id=0", {}, None, 200, None),
    ("GET", "/v1/deliveries?state=lost", {}, None, 400, "invalid_delivery_query"),
    ("GET", "/v1/deliveries?limit=0", {}, None, 400, "invalid_delivery_query"),
    ("GET", "/v1/deliveries?limit=1&limit=2", {}, None, 400, "invalid_delivery_query"),
    ("GET", "/v1/deliveries?page=2", {}, None, 400, "invalid_delivery_query"),
    ("GET", "/v1/deliveries", NO_KEY, None, 401, "missing_api_key"),
    ("POST", "/v1/deliveries/retry", JSON, b'{"ids": [1, 999]}', 200, None),
    ("POST", "/v1/deliveries/retry", JSON, b'{"all_dead": true}', 200, None),
    ("POST", "/v1/deliveries/retry", JSON, b"{}", 400, "invalid_retry_request"),
    ("POST", "/v1/deliveries/retry", JSON, b'{"ids": ["1"]}', 400, "invalid_retry_request"),
    ("POST", "/v1/deliveries/retry", JSON, b'{"ids": [1], "all_dead": true}', 400, "invalid_retry_request"),
    ("POST", "/v1/deliveries/retry", JSON, b"[1,", 400, "invalid_retry_request"),
    ("POST", "/v1/deliveries/retry", JSON, b'{"ids": [' + b"1," * 3000 + b"1]}", 413, "body_too_large"),
    ("POST", "/v1/deliveries/retry", {"X-Tenant-ID": "other"}, b"{}", 403, "tenant_mismatch"),
    ("GET", "/v1/intake?state=failed&limit=5&after_id=0", {}, None, 200, None),
    ("GET", "/v1/intake?state=dead", {}, None, 400, "invalid_intake_query"),
    ("GET", "/v1/intake?status=done", {}, None, 400, "invalid_intake_query"),
    ("GET", "/v1/intake", NO_KEY, None, 401, "missing_api_key"),
    ("POST", "/v1/zoho/notifications", NO_KEY, b"{", 400, "invalid_notification"),
    ("POST", "/v1/zoho/notifications", NO_KEY, b'{"ids": []}', 400, "invalid_notification"),
    (
        "POST",
        "/v1/zoho/notifications",
        NO_KEY,
        b'{"channel_id": 1, "token": "t", "module": "Products", "operation": "insert", "ids": ["1"]}',
        401,
        "channel_refused",
    ),
    (
        "POST",
        "/v1/zoho/notifications",
        NO_KEY | {"Content-Encoding": "gzip"},
        b"{}",
        415,
        "unsupported_content_encoding",
    ),
    ("POST", "/v1/zoho/notifications", NO_KEY, b'{"ids": "' + b"1" * 5000 + b'"}', 413, "body_too_large"),
    ("POST", "/v1/sync/programs", NO_KEY, b"[]", 401, "missing_api_key"),
    ("POST", "/v1/sync/programs", {"Authorization": "sk_no_scheme"}, b"[]", 401, "malformed_credentials"),
    ("POST", "/v1/sync/programs", {"X-Tenant-ID": "other"}, b"[]", 403, "tenant_mismatch"),
    ("POST", "/v1/sync/programs", JSON, b'[{"id": 1,}]', 400, "malformed_json"),
    ("POST", "/v1/sync/programs", JSON, b'"text"', 400, "invalid_body"),
    ("POST", "/v1/sync/programs", JSON, b"[" * 70 + b"]" * 70, 400, "json_too_deep"),
    ("POST", "/v1/sync/programs?dry_runn=true", JSON, b"[]", 400, "unknown_query_parameter"),
    ("POST", "/v1/sync/programs?dry_run=1&dry_run=1", JSON, b"[]", 400, "repeated_query_parameter"),
    ("POST", "/v1/sync/programs?dry_run=yes", JSON, b"[]", 400, "invalid_query_parameter"),
    ("POST", "/v1/sync/programs", JSON | {"Idempotency-Key": " "}, b"[]", 400, "invalid_idempotency_key"),
    ("POST", "/v1/sync/programs", JSON | {"Idempotency-Key": "k1"}, b'[{"id": "1"}]', 422, "idempotency_key_reused"),
    (
        "POST",
        "/v1/sync/programs",
        JSON,
        b'{"data": [' + b'{"id": "1"},' * 3 + b'{"id": "2"}]}',
        413,
        "too_many_records",
    ),
    ("POST", "/v1/sync/programs", JSON, b'["' + b"x" * 5000 + b'"]', 413, "body_too_large"),
    ("POST", "/v1/sync/programs", {"Content-Type": "text/csv"}, b"id\n1", 415, "unsupported_media_type"),
    ("POST", "/v1/sync/programs", JSON | {"Content-Encoding": "gzip"}, b"[]", 415, "unsupported_content_encoding"),
    (
        "POST",
        "/v1/sync/programs",
        {"Content-Type": "application/json; charset=latin-1"},
        b"[]",
        415,
        "unsupported_charset",
    ),
    (
        "POST",
        "/v1/sync/programs",
        JSON,
        b'[{"id": "1", "Product_Name": "x", "MoodleID": 9223372036854775808}]',
        200,
        None,
    ),
]


async def test_provoked_answers_are_declared(api: Api) -> None:
    assert (await api.sync("programs", program())).status_code == 200
    first = await api.http.post("/v1/sync/programs", content=b"[]", headers=api.auth() | {"Idempotency-Key": "k1"})
    assert first.status_code == 200
    document = (await api.http.get("/schema/openapi.json")).json()
    for method, path, headers, body, status, code in PROVOKED:
        sent = {name: value for name, value in (api.auth() | headers).items() if value is not None}
        response = await api.http.request(method, path, content=body, headers=sent)
        where = f"{method} {path} {headers} -> {response.status_code} {response.text[:300]}"
        assert response.status_code == status, where
        template = next(p for p in document["paths"] if _matches(p, path.split("?")[0]))
        declared = document["paths"][template][method.lower()]["responses"].get(str(status))
        assert declared is not None, f"{method} {template} does not declare {status}"
        for name, header in declared.get("headers", {}).items():
            assert not header.get("required") or name.lower() in response.headers, f"{where}: no {name}"
        if method == "HEAD":
            continue
        assert response.headers["content-type"].startswith("application/json"), where
        jsonschema.validate(response.json(), resolve(declared["content"]["application/json"]["schema"], document))
        assert code is None or response.json()["error"] == code, where


def _matches(template: str, path: str) -> bool:
    if template == "/v1/{entity}/{zoho_id}":
        fixed = path.startswith(("/v1/sync/", "/v1/deliveries", "/v1/zoho/"))
        return path.startswith("/v1/") and not fixed and path.count("/") >= 3
    return template == path
