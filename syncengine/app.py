"""The HTTP service: a litestar app built from the loaded descriptors.

    app = create_app(Settings.from_env())      # or `syncengine serve`

Routes, all JSON:

- `POST /v1/sync/{entity}`: one route per entity of entities.yaml, each with its own OpenAPI
  request schema; `?dry_run=true` runs the pipeline and rolls back. A record that is only an id
  (`{"zoho_id": "..."}`) is fetched from the tenant's Zoho CRM first (fetching.py).
- `GET /v1/{entity}/{zoho_id}`: a stored record of the caller's tenant (the id may hold `/`,
  sent as `%2F`).
- `GET /v1/deliveries?state=&limit=&after_id=`: the caller's outbox, counts per state and a page of
  rows; `POST /v1/deliveries/retry` with `{"ids": [...]}` or `{"all_dead": true}` sends them again.
- `POST /v1/zoho/notifications`: Zoho's Notifications API callbacks (no API key: the channel's
  token is checked, channels.py); the ids are queued and fetched after the answer (intake.py).
  `GET /v1/intake?state=&limit=&after_id=`: the caller's queue, counts per state and a page of rows.
- `GET /v1/entities`, `GET|HEAD /v1/health`, `GET|HEAD /v1/ready`; the API's page at `/schema`
  (Swagger UI, its files served from `/schema/assets/`: `docs.py`), OpenAPI at `/schema/openapi.json`.

The tenant comes from the API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`). Errors are
mapped to HTTP in `errors.py` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import httpx
import msgspec
import sqlalchemy as sa
from litestar import Litestar, Request, Response, get, head, post
from litestar.datastructures import Headers
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.types import Message

from syncengine import migrate
from syncengine.admission import admitted
from syncengine.channels import accept_notification, parse_notification, renew_channels
from syncengine.config import Settings
from syncengine.deliveries import STATES, list_deliveries, retry_deliveries
from syncengine.descriptors import Entity, UnknownEntity
from syncengine.docs import SCHEMA_PATH, documentation_plugins
from syncengine.edge import RequestBody, check_encoding, check_write_query
from syncengine.engine import SyncEngine
from syncengine.errors import ApiError, error_response, render, to_api_error
from syncengine.exceptions import DatabaseBusy, DatabaseUnavailable
from syncengine.fetching import sync_received, webhook_http
from syncengine.fieldtypes import check_id
from syncengine.idempotency import Answer, IdempotencyKeys, StoredResponse, check_key, request_hash
from syncengine.intake import STATES as INTAKE_STATES
from syncengine.intake import list_intake
from syncengine.logs import configure_logging
from syncengine.openapi import SECURITY, components, fixed_operation, sync_operation
from syncengine.payloads import FORM_CONTENT_TYPE, parse_body
from syncengine.report import SyncReport
from syncengine.startup import command_name
from syncengine.store import translate
from syncengine.tenants import KeyCache, Tenant, TenantError, check_name, presented_key

logger = logging.getLogger("syncengine.http")
JSON = "application/json"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_encode = msgspec.json.Encoder(decimal_format="number").encode


@dataclass
class Service:
    """What the handlers share: settings, the engine, idempotency keys, the expected schema."""

    settings: Settings
    engine: SyncEngine
    keys: IdempotencyKeys
    head: str | None
    api_keys: KeyCache
    wake_intake: Callable[[], None] | None = None  # this process's intake worker, if it runs one
    #: The Zoho calls of id-only records share its connections (fetching.py); open while serving.
    zoho_http: httpx.AsyncClient | None = None


class SyncService(Litestar):
    """Litestar, plus a request id and one JSON log line for every HTTP request, even a 404; an
    answer sent before its request's body has arrived waits for the rest of it (`RequestBody`)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers.from_scope(scope)
        request_id = headers.get("x-request-id", "")
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        log: dict[str, Any] = {}
        settings = self.state.service.settings
        body = RequestBody(scope, receive, settings.max_body_bytes, settings.body_timeout)
        scope.setdefault("state", {}).update(request_id=request_id, log=log, body=body)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                if await body.linger():
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            await super().__call__(scope, body.receive, send_with_id)
        finally:
            duration = round((time.perf_counter() - started) * 1000, 1)
            fields = {"request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status}
            logger.info("request", extra={"fields": fields | log | {"duration_ms": duration}})


def _start_delivery(settings: Settings, engine: SyncEngine, stop: asyncio.Event) -> asyncio.Task[None] | None:
    """A delivery worker in this process (unless SYNCENGINE_DELIVERY_WORKER=0 / `serve --no-worker`),
    woken by the engine after each commit that wrote outbox rows."""
    if not settings.delivery_worker:
        return None
    from syncengine.delivery import Worker

    worker = Worker(engine.catalog, engine.database, settings.delivery_policy)
    engine.on_commit = worker.wake
    return asyncio.create_task(worker.run(stop))


def _start_intake(service: Service, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """An intake worker in this process, and the hourly renewal of Zoho channels (unless
    SYNCENGINE_INTAKE_WORKER=0 / `serve --no-worker`); the notification endpoint wakes the worker."""
    settings = service.settings
    if not settings.intake_worker:
        return []
    from syncengine.intake import IntakeWorker

    worker = IntakeWorker(service.engine, settings.intake_policy)
    service.wake_intake = worker.wake
    return [asyncio.create_task(worker.run(stop)), asyncio.create_task(_renew_forever(service, stop))]


async def _renew_forever(service: Service, stop: asyncio.Event) -> None:
    """Renew the Zoho channels that expire within a day, now and every SYNCENGINE_CHANNEL_RENEWAL
    seconds; a failure is logged and tried again next time (a channel has a day left)."""
    engine = service.engine
    while not stop.is_set():
        try:
            for watched in await renew_channels(engine.catalog, engine.database):
                fields = {"tenant": watched.tenant, "entity": watched.entity, "action": watched.action}
                logger.info("zoho channel", extra={"fields": fields | {"error": watched.error}})
        except Exception as error:
            logger.warning("could not renew zoho channels (%s); trying again later", translate(error) or error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), service.settings.channel_renewal)


def create_app(settings: Settings, engine: SyncEngine | None = None) -> Litestar:
    """The service for `settings`; pass `engine` to share one (it is then not closed here)."""
    configure_logging(settings.log_level)
    owned = engine is None
    engine = engine or SyncEngine.open(settings)
    try:
        head = migrate.head(settings)
    except migrate.MigrationsNotFound:
        head = None
    service = Service(
        settings,
        engine,
        IdempotencyKeys(engine.database, settings.idempotency_ttl, settings.idempotency_wait),
        head,
        KeyCache(engine.database),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # What is loaded by now (modules, the app, the catalog) lives as long as the process:
        # out of the garbage collector's view, full collections walk only what requests make.
        gc.collect()
        gc.freeze()
        purger = asyncio.create_task(service.keys.purge_forever(min(settings.idempotency_ttl, 300.0)))
        service.zoho_http = webhook_http()
        stop_delivery = asyncio.Event()
        delivery = _start_delivery(settings, service.engine, stop_delivery)
        intake = _start_intake(service, stop_delivery)
        try:
            yield
        finally:
            stop_delivery.set()
            if delivery is not None:
                await delivery
            await asyncio.gather(*intake)
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await service.keys.close()
            await service.zoho_http.aclose()
            if owned:
                await service.engine.close()

    handlers: list[HTTPRouteHandler] = [health, health_head, ready, ready_head, list_entities, read_record]
    handlers += [deliveries, retry, zoho_notification, intake]
    handlers.append(sync_unknown_entity)
    handlers += [sync_route(entity, settings) for entity in engine.catalog]
    return SyncService(
        route_handlers=handlers,
        lifespan=[lifespan],
        state=_state(service),
        exception_handlers={Exception: error_response},
        request_max_body_size=None,  # read_body enforces the limit, with our message
        openapi_config=OpenAPIConfig(
            title="syncengine",
            version="1",
            description="Zoho CRM records in, validated and fingerprinted, out to Moodle.",
            components=components(engine.catalog),
            use_handler_docstrings=True,
            path=SCHEMA_PATH,
            render_plugins=documentation_plugins(),  # Swagger UI, its files served by us: no CDN
        ),
        logging_config=None,
    )


def app_from_env() -> Litestar:
    """The app factory for `uvicorn --factory` and for `serve --workers N`."""
    return create_app(Settings.from_env())


def _state(service: Service) -> Any:
    from litestar.datastructures import State

    return State({"service": service})


def _service(request: Request[Any, Any, Any]) -> Service:
    service: Service = request.app.state.service
    return service


# Authentication


async def authenticated_tenant(request: Request[Any, Any, Any]) -> Tenant:
    """The tenant of the request's API key; `X-Tenant-ID`, if sent, must name that tenant."""
    key = _presented_key(request)
    if key is None:
        raise ApiError(
            401,
            "missing_api_key",
            "no API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
            f"(`{command_name()} tenant add NAME` creates a tenant and its key)",
            {"WWW-Authenticate": "Bearer"},
        )
    tenant = await _service(request).api_keys.authenticate(key)
    if tenant is None:
        raise ApiError(
            401,
            "invalid_api_key",
            f"the API key is not valid: it is unknown or was replaced by `{command_name()} tenant key NAME`",
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    try:
        check_name(tenant.name)
    except TenantError as error:  # stored by an older version, whose names were freer
        raise ApiError(
            403,
            "tenant_name_refused",
            f"the API key belongs to a tenant stored under a name this version refuses: {error}; "
            "ask the operator to add the tenant again under a valid name (`syncengine tenant add NAME`) "
            "and send the new tenant's key",
        ) from None
    claimed = _single_header(request, "X-Tenant-ID")
    if claimed is not None and claimed != tenant.name:
        raise ApiError(
            403,
            "tenant_mismatch",
            f"X-Tenant-ID does not name the tenant of this API key ('{tenant.name}'); "
            "send that name or leave the header out",
        )
    request.scope["state"]["log"]["tenant"] = tenant.name
    return tenant


def _key_known(request: Request[Any, Any, Any]) -> bool:
    """Whether the request's key is checked without the database: none (401), or one the
    process has checked within the last second."""
    key = _presented_key(request)
    return key is None or _service(request).api_keys.knows(key)


def _presented_key(request: Request[Any, Any, Any]) -> str | None:
    headers = request.headers  # a CredentialError is a 401 (errors.HTTP)
    return presented_key(headers.getall("authorization", []), headers.getall("x-api-key", []))


def _single_header(request: Request[Any, Any, Any], name: str) -> str | None:
    """The value of a header that may be sent once: which of two would count is no guess to make."""
    values = request.headers.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, "repeated_header", f"the {name} header is sent {len(values)} times: send it once")
    return values[0] if values else None


# A request that touches a tenant's data waits for its turn once its key is checked (admission.py).
AUTHENTICATED = {"tenant": Provide(admitted(authenticated_tenant, _key_known))}
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description="Replays the stored response of an earlier request with the same key and body.",
    ),
]
TenantHeader = Annotated[
    str | None,
    HeaderParameter(name="X-Tenant-ID", required=False, description="If sent, must name the API key's tenant."),
]
DryRun = Annotated[
    bool,
    QueryParameter(
        name="dry_run",
        description="Run the whole pipeline, then roll it back: true or false (or 1 or 0). "
        "Any other query parameter, or this one twice, is 400.",
    ),
]


# Sync endpoints


def sync_route(entity: Entity, settings: Settings) -> HTTPRouteHandler:
    """`POST /v1/sync/{entity.name}`, with the entity's request schema in OpenAPI."""

    async def sync_records(
        request: Request[Any, Any, Any],
        tenant: NamedDependency[Tenant],
        dry_run: DryRun = False,
        idempotency_key: IdempotencyKey = None,
        x_tenant_id: TenantHeader = None,
    ) -> Response[bytes]:
        return await sync_request(request, entity, tenant, dry_run, idempotency_key)

    return post(
        f"/v1/sync/{entity.name}",
        name=f"sync_{entity.name}",
        operation_id=f"sync_{entity.name}",
        summary=f"Sync {entity.name}",
        description=(
            f"Validate, fingerprint and store {entity.name} records (Zoho module {entity.source}) "
            "for the caller's tenant; the response has one result per record, in input order. A record "
            'that holds only its id (`{"zoho_id": "..."}`, or a form `zoho_id=...`) is fetched from the '
            "tenant's Zoho CRM first."
        ),
        tags=["sync"],
        operation_class=sync_operation(entity, settings.max_records),
        before_request=check_write_query,
        dependencies=AUTHENTICATED,
        security=SECURITY,
        status_code=200,
        media_type=JSON,
    )(sync_records)


@post("/v1/sync/{entity:str}", dependencies=AUTHENTICATED, include_in_schema=False, status_code=200)
async def sync_unknown_entity(
    request: Request[Any, Any, Any], entity: FromPath[str], tenant: NamedDependency[Tenant]
) -> None:
    """Every entity has its own route; this one only says which entities there are."""
    _service(request).engine.catalog.entity(entity)  # raises UnknownEntity


async def sync_request(
    request: Request[Any, Any, Any],
    entity: Entity,
    tenant: NamedDependency[Tenant],
    dry_run: bool,
    idempotency_key: str | None,
) -> Response[bytes]:
    service = _service(request)
    log = request.scope["state"]["log"]
    log.update(entity=entity.name, dry_run=dry_run)
    _single_header(request, "Idempotency-Key")
    media_type = _media_type(request)
    check_encoding(request)
    body = await read_body(request)
    if idempotency_key is None:
        return _json(await sync_body(service, entity, tenant, body, media_type, dry_run, log))
    key = check_key(idempotency_key)
    digest = request_hash(media_type, "dry_run" if dry_run else "", body)
    claim = await service.keys.claim(tenant.name, request.url.path, key, digest)
    if isinstance(claim, StoredResponse):
        log["idempotent_replay"] = True
        return _json(claim.body, claim.status_code, {"Idempotent-Replayed": "true"})
    try:
        # The answer commits with the batch; a dry run's is stored after it (it wrote nothing).
        answer = None if dry_run else service.keys.answer(claim, _report_json)
        try:
            content = await sync_body(service, entity, tenant, body, media_type, dry_run, log, answer)
        except Exception as exc:
            error = to_api_error(exc)
            if error.status_code == 409 or error.status_code >= 500:  # "try again": not the key's answer
                await service.keys.release(claim)
                raise
            log["error"] = error.error
            content = render(error)
            await service.keys.complete(claim, error.status_code, content)
            return _json(content, error.status_code, error.headers)
        if answer is None:
            await service.keys.complete(claim, 200, content)
        return _json(content)
    finally:
        await service.keys.let_go(claim)


async def sync_body(
    service: Service,
    entity: Entity,
    tenant: NamedDependency[Tenant],
    body: bytes,
    media_type: str,
    dry_run: bool,
    log: dict[str, Any],
    answer: Answer | None = None,
) -> bytes:
    """Parse, check the batch size, run the pipeline (storing `answer` with the batch); the
    report as JSON bytes."""
    records = parse_body(body, media_type, entity)
    log["records"] = len(records)
    limit = service.settings.max_records
    if len(records) > limit:
        raise ApiError(
            413,
            "too_many_records",
            f"{len(records)} records in one request; the limit is {limit} (SYNCENGINE_MAX_RECORDS): "
            "send them in smaller batches",
        )
    # An id-only record (a workflow webhook's `{"zoho_id": ...}`) is fetched from Zoho first (fetching.py).
    report = await sync_received(
        service.engine, tenant.name, entity.name, records, dry_run=dry_run, answer=answer, http=service.zoho_http
    )
    log["counts"] = {status: count for status, count in report.summary.items() if count}
    return answer.body(report) if answer is not None else _report_json(report)


def _report_json(report: SyncReport) -> bytes:
    return msgspec.json.encode(report.to_builtins())


def _media_type(request: Request[Any, Any, Any]) -> str:
    """JSON (also when no Content-Type is sent) or a form; anything else is 415."""
    content_type = request.headers.get("content-type", JSON)
    media_type = content_type.split(";")[0].strip().lower() or JSON
    if (
        media_type == JSON
        or media_type == FORM_CONTENT_TYPE
        or (media_type.startswith("application/") and media_type.endswith("+json"))
    ):
        return FORM_CONTENT_TYPE if media_type == FORM_CONTENT_TYPE else JSON
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type '{media_type}' is not accepted: send application/json "
        f'(one record, an array, or {{"data": [records]}}) or {FORM_CONTENT_TYPE} (one record)',
    )


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The request body: 413 as soon as it is known to exceed SYNCENGINE_MAX_BODY_BYTES, 408 if it
    has not all arrived within SYNCENGINE_BODY_TIMEOUT (`edge.RequestBody.read`)."""
    body: RequestBody = request.scope["state"]["body"]
    return await body.read()


def _json(content: bytes, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(content, status_code=status_code, media_type=JSON, headers=headers)


# Reading


@get("/v1/health", tags=["service"], operation_id="health", operation_class=fixed_operation("health"))
async def health() -> dict[str, str]:
    """Liveness: the process answers. Touches no database."""
    return {"status": "ok"}


@head("/v1/health", tags=["service"], operation_id="health_head", operation_class=fixed_operation("health_head"))
async def health_head() -> None:
    """Liveness, without a body."""


@get("/v1/ready", tags=["service"], operation_id="ready", operation_class=fixed_operation("ready"))
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Readiness: the database answers and its schema is at the latest migration."""
    return await _readiness(request)


@head("/v1/ready", tags=["service"], operation_id="ready_head", operation_class=fixed_operation("ready_head"))
async def ready_head(request: Request[Any, Any, Any]) -> None:
    """Readiness, without a body: 200, or the 503 of `GET /v1/ready`."""
    await _readiness(request)


async def _readiness(request: Request[Any, Any, Any]) -> Response[bytes]:
    service = _service(request)
    database = service.engine.database
    try:  # a probe wants its answer soon: a stalled database is "not ready" within the connect timeout
        async with asyncio.timeout(service.settings.db_connect_timeout):
            async with database.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            current = await migrate.current(database)
    except Exception as error:  # any failure to reach the database means "not ready"
        failure = translate(error)
        reason = failure.reason if isinstance(failure, DatabaseUnavailable | DatabaseBusy) else type(error).__name__
        raise ApiError(
            503, "database_unavailable", f"the database does not answer: {reason}", {"Retry-After": "5"}
        ) from None
    if service.head is not None and current != service.head:
        raise ApiError(
            503,
            "schema_behind",
            f"the database schema is at {current or 'no revision'}, the code expects {service.head}: "
            "run `syncengine db upgrade`",
        )
    body = {"status": "ready", "database": database.dialect.name, "schema_revision": current}
    return _json(_encode(body))


@get("/v1/entities", tags=["service"], operation_id="entities", operation_class=fixed_operation("entities"))
async def list_entities(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The loaded descriptors: each entity's endpoint, fields and dependencies, parents first."""
    entities = [_describe(entity) for entity in _service(request).engine.catalog]
    return _json(_encode({"entities": entities}))


def _describe(entity: Entity) -> dict[str, Any]:
    fields = []
    for fld in entity.fields:
        described: dict[str, Any] = {
            "name": fld.name,
            "from": fld.source,
            "type": fld.type.name,
            "required": fld.required,
        }
        if fld.target:
            described["entity"] = fld.target
        if fld.options.choices:
            described["choices"] = list(fld.options.choices)
        if fld.options.max_length is not None:
            described["max_length"] = fld.options.max_length
        if fld.default is not None:
            described["default"] = fld.default
        if fld.description:
            described["description"] = fld.description
        fields.append(described)
    return {
        "name": entity.name,
        "singular": entity.singular,
        "source": entity.source,
        "description": entity.description,
        "endpoint": f"/v1/sync/{entity.name}",
        "id_key": entity.id_key,
        "version_field": entity.version_field,
        "requires": list(entity.requires),
        "lookups": list(dict.fromkeys(f.target for f in entity.lookups if f.target)),
        "fields": fields,
    }


@get(
    "/v1/{entity:str}/{zoho_id:path}",
    dependencies=AUTHENTICATED,
    security=SECURITY,
    tags=["records"],
    operation_id="read_record",
    operation_class=fixed_operation("read_record"),
)
async def read_record(
    request: Request[Any, Any, Any], entity: FromPath[str], tenant: NamedDependency[Tenant]
) -> Response[bytes]:
    """A stored record of the caller's tenant: values, fingerprint, timestamps, Moodle sync state.

    The id is everything after the entity, percent-decoded once: `/` in an id is sent as `%2F`.
    """
    service = _service(request)
    zoho_id = _path_id(request, entity)
    request.scope["state"]["log"]["entity"] = entity
    try:  # an id no record can have (a NUL, a control character, too long) is looked up nowhere
        check_id(zoho_id)
    except ValueError as error:
        raise ApiError(404, "record_not_found", f"no record can have this id: {error}") from None
    record = await service.engine.fetch_record(tenant.name, entity, zoho_id)
    if record is None:
        singular = service.engine.catalog.entity(entity).singular
        raise ApiError(404, "record_not_found", f"no {singular} with Zoho id '{zoho_id}' is stored for this tenant")
    return _json(_encode(record))


def _path_id(request: Request[Any, Any, Any], entity: str) -> str:
    """The record id of a read, from the path as sent: the decoded path has lost `%2F` from `/`."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    segments = raw.split(b"?", 1)[0].split(b"/", 3)  # b'', b'v1', entity, id (some raw_paths keep the query)
    try:
        return unquote_to_bytes(segments[3]).decode() if len(segments) == 4 else ""
    except UnicodeDecodeError:
        raise ApiError(404, "record_not_found", "the record id in the path is not UTF-8 once percent-decoded") from None


# Deliveries

MAX_PAGE = 1000
MAX_ID = 2**63 - 1
_QUERY = Annotated[str | None, QueryParameter(required=False)]
_STATE = Annotated[str | None, QueryParameter(name="state", required=False)]  # `state` is litestar's own


@get(
    "/v1/deliveries",
    dependencies=AUTHENTICATED,
    security=SECURITY,
    tags=["deliveries"],
    operation_id="list_deliveries",
    operation_class=fixed_operation("list_deliveries"),
)
async def deliveries(
    request: Request[Any, Any, Any],
    tenant: NamedDependency[Tenant],
    delivery_state: _STATE = None,
    limit: _QUERY = None,
    after_id: _QUERY = None,
) -> Response[bytes]:
    """The caller's deliveries to Moodle, oldest first: counts per state, and `limit` rows (100 by
    default) after `after_id`; `next_after_id` is the `after_id` of the next page (null: the last)."""
    wanted = _delivery_query(request)
    page = await list_deliveries(_service(request).engine.catalog, _service(request).engine.database,
                                 tenant=tenant.name, **wanted)  # fmt: skip
    body = {"counts": page.counts, "deliveries": [d.to_builtins(tenant=False) for d in page.rows]}
    return _json(_encode(body | {"next_after_id": page.next_after_id}))


def _delivery_query(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """`state`, `limit` and `after_id`, each at most once and with a value it takes; nothing else."""
    wanted, problem = _page_query(request, STATES)
    if problem:
        raise ApiError(400, "invalid_delivery_query", f"{problem}; nothing was changed")
    return wanted


def _page_query(request: Request[Any, Any, Any], states: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """A listing's `state` (one of `states`), `limit` and `after_id`, and the first problem with them."""
    query = request.query_params
    wanted: dict[str, Any] = {}
    for name in query:
        values = query.getall(name)
        if name not in ("state", "limit", "after_id"):
            problem = f"unknown query parameter '{name}': this route takes state, limit and after_id"
        elif len(values) > 1:
            problem = f"'{name}' is given {len(values)} times: give it once"
        elif name == "state":
            problem = "" if values[0] in states else f"state '{values[0]}' is none of {', '.join(states)}"
            wanted["state"] = values[0]
        else:
            top = MAX_PAGE if name == "limit" else MAX_ID
            low = 1 if name == "limit" else 0
            number = int(values[0]) if values[0].isascii() and values[0].isdigit() and len(values[0]) < 20 else -1
            problem = (
                "" if low <= number <= top else f"{name} must be a whole number from {low} to {top}, got '{values[0]}'"
            )
            wanted[name] = number
        if problem:
            return wanted, problem
    return wanted, ""


class RetryRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]], msgspec.Meta(max_length=MAX_PAGE)] = []
    all_dead: bool = False


@post(
    "/v1/deliveries/retry",
    dependencies=AUTHENTICATED,
    security=SECURITY,
    tags=["deliveries"],
    operation_id="retry_deliveries",
    operation_class=fixed_operation("retry_deliveries"),
    status_code=200,
)
async def retry(request: Request[Any, Any, Any], tenant: NamedDependency[Tenant]) -> Response[bytes]:
    """Send the caller's deliveries `ids` (or every dead one) again: due now, attempts back to 0; a
    done one is sent again in full, one a worker is delivering right now is left alone."""
    service = _service(request)
    body = await read_body(request)
    usage = 'send {"ids": [delivery ids]} or {"all_dead": true}'
    try:
        wanted = msgspec.json.decode(body, type=RetryRequest)
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_retry_request", f"the body is not a retry request ({error}): {usage}") from None
    if bool(wanted.ids) == wanted.all_dead:
        raise ApiError(400, "invalid_retry_request", f"give delivery ids or all_dead, one of them: {usage}")
    retried = await retry_deliveries(
        service.engine.database, tenant=tenant.name, ids=wanted.ids, all_dead=wanted.all_dead
    )
    if retried.requeued and service.engine.on_commit is not None:  # this process's worker
        service.engine.on_commit()
    return _json(_encode(retried.to_builtins()))


# Zoho notifications and the intake queue


@post(
    "/v1/zoho/notifications",
    tags=["zoho"],
    operation_id="zoho_notification",
    operation_class=fixed_operation("zoho_notification"),
    status_code=200,
)
async def zoho_notification(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Zoho's Notifications API callback (`syncengine zoho watch` subscribes the channels). No API
    key: the channel's token is checked instead. The ids are queued and the answer goes back at
    once; the intake worker fetches and syncs them (`GET /v1/intake` shows each outcome)."""
    service = _service(request)
    check_encoding(request)
    notification = parse_notification(await read_body(request))
    accepted = await accept_notification(service.engine.catalog, service.engine.database, notification)
    request.scope["state"]["log"].update(tenant=accepted.tenant, entity=accepted.entity, queued=accepted.queued)
    if service.wake_intake is not None:
        service.wake_intake()
    return _json(_encode({"status": "queued", "entity": accepted.entity, "queued": accepted.queued}))


@get(
    "/v1/intake",
    dependencies=AUTHENTICATED,
    security=SECURITY,
    tags=["zoho"],
    operation_id="list_intake",
    operation_class=fixed_operation("list_intake"),
)
async def intake(
    request: Request[Any, Any, Any],
    tenant: NamedDependency[Tenant],
    intake_state: _STATE = None,
    limit: _QUERY = None,
    after_id: _QUERY = None,
) -> Response[bytes]:
    """The caller's notified ids, oldest first: counts per state, and `limit` rows (100 by default)
    after `after_id`, each with its record's outcome once done or its error once failed."""
    wanted, problem = _page_query(request, INTAKE_STATES)
    if problem:
        raise ApiError(400, "invalid_intake_query", f"{problem}; nothing was changed")
    page = await list_intake(_service(request).engine.database, tenant=tenant.name, **wanted)
    body = {"counts": page.counts, "intake": [row.to_builtins(tenant=False) for row in page.rows]}
    return _json(_encode(body | {"next_after_id": page.next_after_id}))


__all__ = ["UnknownEntity", "app_from_env", "create_app"]
