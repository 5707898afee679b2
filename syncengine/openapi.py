"""OpenAPI: each entity's request schema, derived from its descriptor, and every answer of every route.

    record_schema(entity)["required"]   # "id" and the Zoho names of the entity's required fields
    error_responses(READ_ANSWERS)       # {"401": ..., "403": ..., "404": ..., "429": ..., "503": ...}

Litestar builds the rest of the document from the handlers; the request bodies and the responses
come from here, since the handlers read their bodies themselves (a record, a list, Zoho's envelope
or a form) and answer JSON they encode themselves. `ANSWERS` lists every error code the service
answers with; each route declares the codes it can give, grouped by status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar.openapi.spec import Components, Operation, SecurityScheme

from syncengine.deliveries import STATES
from syncengine.descriptors import Catalog, Entity
from syncengine.intake import STATES as INTAKE_STATES
from syncengine.payloads import FORM_CONTENT_TYPE

SECURITY: list[dict[str, list[str]]] = [{"BearerAuth": []}, {"ApiKeyAuth": []}]


def record_schema(entity: Entity) -> dict[str, Any]:
    """One Zoho record of `entity`, keyed by Zoho API names; required fields are required."""
    properties: dict[str, Any] = {
        "id": {"type": ["string", "integer"], "description": "the Zoho record id"},
    }
    if entity.version_field is not None:
        properties[entity.version_field] = {
            "type": "string",
            "format": "date-time",
            "description": "the source version: an older update never overwrites a newer one",
        }
    for fld in entity.fields:
        schema = dict(fld.type.json_schema(fld.options))
        if fld.description:
            schema["description"] = fld.description
        elif fld.target:
            schema["description"] = f"a {fld.target} record id"
        properties[fld.source] = schema
    description = entity.description or f"a record of the Zoho module {entity.source}"
    if entity.rules:  # checked on the record as merged with what is stored: INVALID if broken
        description += " Rules: " + "; ".join(map(str, entity.rules)) + "."
    return {
        "type": "object",
        "title": f"{entity.singular} record",
        "description": description,
        "properties": properties,
        "required": ["id", *(f.source for f in entity.fields if f.required)],
    }


def record_name(entity: Entity) -> str:
    return "".join(part.title() for part in entity.singular.split("_")) + "Record"


def request_body(entity: Entity, max_records: int) -> dict[str, Any]:
    """The request body of `POST /v1/sync/{entity}`: JSON in three shapes, or one record as a form."""
    record = {"$ref": f"#/components/schemas/{record_name(entity)}"}
    records = {"type": "array", "items": record, "maxItems": max_records}
    return {
        "required": True,
        "description": f'{entity.name} records as {{"data": [records]}} (Zoho\'s envelope), an array, '
        "one record, or one record as form fields",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "properties": {"data": records}, "required": ["data"]},
                        records,
                        record,
                    ]
                }
            },
            FORM_CONTENT_TYPE: {"schema": record},
        },
    }


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"const": "error"},
        "status_code": {"type": "integer"},
        "error": {"type": "string", "description": "a stable code, such as malformed_json or unknown_entity"},
        "message": {"type": "string", "description": "what is wrong, where, and what to do"},
    },
    "required": ["status", "status_code", "error", "message"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Answer:
    """An error the service answers: its status, when, and the headers it always carries."""

    status: int
    meaning: str
    headers: tuple[str, ...] = ()


RETRY = ("Retry-After",)
#: Every error code the service answers with, and its status (raised in errors.py, edge.py,
#: admission.py and app.py; tests/test_openapi_answers.py holds this table to that code).
ANSWERS: dict[str, Answer] = {
    "malformed_json": Answer(400, "the body is not JSON (the message gives line and column) or not UTF-8"),
    "invalid_body": Answer(400, "the body is JSON but not one of the accepted shapes, or a form field is not UTF-8"),
    "json_too_deep": Answer(400, "arrays and objects nested deeper than 64 levels"),
    "unknown_query_parameter": Answer(400, "a query parameter other than dry_run; nothing was written"),
    "repeated_query_parameter": Answer(400, "dry_run given more than once; nothing was written"),
    "invalid_query_parameter": Answer(400, "dry_run other than true, false, 1 or 0; nothing was written"),
    "invalid_idempotency_key": Answer(400, "an Idempotency-Key that is empty, too long or not printable ASCII"),
    "invalid_delivery_query": Answer(
        400, "state, limit or after_id with a value it does not take or given twice, or another query parameter"
    ),
    "invalid_retry_request": Answer(400, 'a retry body other than {"ids": [ids]} or {"all_dead": true}'),
    "invalid_intake_query": Answer(
        400, "state, limit or after_id with a value it does not take or given twice, or another query parameter"
    ),
    "invalid_notification": Answer(400, "a callback body other than Zoho's notification (the message says where)"),
    "unknown_module": Answer(400, "a callback's module is no entity's source, or not its channel's module"),
    "channel_refused": Answer(401, "a callback whose channel is unknown or whose token does not match; nothing queued"),
    "merge_field_not_substituted": Answer(400, "an id-only record's id is a workflow merge field: ${!Module.Id}"),
    "wrong_module": Answer(400, "an id-only record's module is not the endpoint's entity's"),
    "unstorable_value": Answer(400, "a value the database refused (a number beyond 64 bits, a NUL); nothing written"),
    "repeated_header": Answer(400, "Idempotency-Key or X-Tenant-ID sent more than once"),
    "malformed_credentials": Answer(
        401, "a credential header that holds no usable key (no scheme, another scheme, two keys)", ("WWW-Authenticate",)
    ),
    "missing_api_key": Answer(401, "no API key", ("WWW-Authenticate",)),
    "invalid_api_key": Answer(401, "an unknown or replaced API key", ("WWW-Authenticate",)),
    "tenant_mismatch": Answer(403, "X-Tenant-ID names another tenant than the API key's"),
    "tenant_name_refused": Answer(403, "the key's tenant is stored under a name this version refuses: add it again"),
    "unknown_entity": Answer(404, "no such entity (the message lists the known ones)"),
    "record_not_found": Answer(404, "no record with this Zoho id is stored for the tenant"),
    "asset_not_found": Answer(404, "no such file of the /schema page (not part of this document)"),
    "body_timeout": Answer(408, "the body did not all arrive within SYNCENGINE_BODY_TIMEOUT"),
    "idempotency_key_in_use": Answer(409, "the first request with this Idempotency-Key is still running", RETRY),
    "write_conflict": Answer(409, "other writers kept changing the batch's records; nothing written: resend", RETRY),
    "body_too_large": Answer(413, "the body is larger than SYNCENGINE_MAX_BODY_BYTES"),
    "too_many_records": Answer(413, "more records than SYNCENGINE_MAX_RECORDS"),
    "unsupported_media_type": Answer(415, "a Content-Type other than JSON or a form"),
    "unsupported_content_encoding": Answer(415, "a compressed body (gzip...): send it uncompressed"),
    "unsupported_charset": Answer(415, "a charset other than UTF-8"),
    "idempotency_key_reused": Answer(422, "this Idempotency-Key was used with another body"),
    "tenant_over_share": Answer(429, "the tenant has its share of the server at work; nothing done", RETRY),
    "client_disconnected": Answer(499, "never received: logged when the client left before sending its whole body"),
    "server_busy": Answer(503, "the server is full with other tenants' work; nothing done", RETRY),
    "database_unavailable": Answer(503, "the database cannot be reached or does not answer", RETRY),
    "database_busy": Answer(503, "a lock, pool or statement wait ran past its budget", RETRY),
    "schema_missing": Answer(503, "the database has no table for the entity: run `syncengine db upgrade`"),
    "zoho_unavailable": Answer(503, "Zoho did not answer or kept throttling while id-only records were fetched", RETRY),
    "schema_behind": Answer(503, "the database schema is behind the code: run `syncengine db upgrade`"),
}
#: What a request that touches a tenant's data can answer before its handler runs: the API key's
#: check (which reads the database) and admission (admission.py).
TENANT_ANSWERS = (
    "missing_api_key",
    "invalid_api_key",
    "malformed_credentials",
    "repeated_header",
    "tenant_mismatch",
    "tenant_name_refused",
    "tenant_over_share",
    "server_busy",
    "database_unavailable",
    "database_busy",
)
#: `POST /v1/sync/{entity}`: the query (edge.check_write_query), the body (edge.py, payloads.py),
#: the Idempotency-Key (idempotency.py), the batch (engine.py) and Zoho (fetching.py).
SYNC_ANSWERS = (
    *("unknown_query_parameter", "repeated_query_parameter", "invalid_query_parameter"),
    *TENANT_ANSWERS,
    *("unsupported_media_type", "unsupported_content_encoding", "unsupported_charset"),
    *("body_too_large", "body_timeout", "client_disconnected", "malformed_json", "invalid_body", "json_too_deep"),
    *("too_many_records", "invalid_idempotency_key", "idempotency_key_in_use", "idempotency_key_reused"),
    *("unstorable_value", "write_conflict", "schema_missing"),
    *("merge_field_not_substituted", "wrong_module", "zoho_unavailable"),  # id-only records (fetching.py)
)
#: `GET /v1/{entity}/{zoho_id}`.
READ_ANSWERS = (*TENANT_ANSWERS, "unknown_entity", "record_not_found")
#: `GET /v1/deliveries`.
DELIVERIES_ANSWERS = (*TENANT_ANSWERS, "invalid_delivery_query")
#: `POST /v1/deliveries/retry`: the body (edge.py) and the request in it.
RETRY_ANSWERS = (*TENANT_ANSWERS, "body_too_large", "body_timeout", "client_disconnected", "invalid_retry_request")
#: `GET /v1/intake`.
INTAKE_ANSWERS = (*TENANT_ANSWERS, "invalid_intake_query")
#: `POST /v1/zoho/notifications`: the body (edge.py) and the callback in it (channels.py).
NOTIFICATION_ANSWERS = (
    *("unsupported_content_encoding", "unsupported_charset", "body_too_large", "body_timeout", "client_disconnected"),
    *("invalid_notification", "unknown_module", "channel_refused", "database_unavailable", "database_busy"),
)
#: Answers of routes the document does not describe (the /schema page's own files).
UNDOCUMENTED_ANSWERS = ("asset_not_found",)
#: `GET|HEAD /v1/ready`.
READY_ANSWERS = ("database_unavailable", "schema_behind")
_HEADERS = {
    "Retry-After": {"description": "seconds to wait before sending the request again", "schema": {"type": "string"}},
    "WWW-Authenticate": {"description": "the scheme to authenticate with: Bearer", "schema": {"type": "string"}},
}
REQUEST_ID = {"description": "the request's id, as logged (X-Request-ID if sent)", "schema": {"type": "string"}}


def error_responses(codes: tuple[str, ...], body: bool = True) -> dict[str, Any]:
    """The OpenAPI responses of these error codes, one per status: the Error schema narrowed to
    the status and its codes, and the headers every one of them carries (`body=False` for HEAD)."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ANSWERS[code].status, []).append(code)
    responses: dict[str, Any] = {}
    for status, listed in sorted(by_status.items()):
        answers = [ANSWERS[code] for code in listed]
        headers: dict[str, Any] = {"X-Request-ID": REQUEST_ID}
        for name, header in _HEADERS.items():
            carried = [name in answer.headers for answer in answers]
            if any(carried):
                headers[name] = header | {"required": all(carried)}
        response: dict[str, Any] = {
            "description": "; ".join(
                f"`{code}`: {answer.meaning}" for code, answer in zip(listed, answers, strict=True)
            ),
            "headers": headers,
        }
        if body:
            narrowed = {"properties": {"status_code": {"const": status}, "error": {"enum": listed}}}
            schema = {"allOf": [{"$ref": "#/components/schemas/Error"}, narrowed]}
            response["content"] = {"application/json": {"schema": schema}}
        responses[str(status)] = response
    return responses


def ok(description: str, schema: dict[str, Any] | None, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 200 response; `schema` None for HEAD."""
    response: dict[str, Any] = {"description": description, "headers": {"X-Request-ID": REQUEST_ID, **(headers or {})}}
    if schema is not None:
        response["content"] = {"application/json": {"schema": schema}}
    return response


def report_schema(entity: Entity) -> dict[str, Any]:
    """The response of a sync: one result per record in input order, and counts per status."""
    statuses = ["NEW", "UPDATED", "UNCHANGED", "INVALID", "SKIPPED", "DELETED"]
    result = {
        "type": "object",
        "properties": {
            entity.id_key: {"type": ["string", "null"]},
            "status": {"enum": statuses},
            "message": {"type": "string"},
            "changes": {"type": "object", "additionalProperties": {"type": "array", "minItems": 2, "maxItems": 2}},
            "errors": {
                "type": "array",
                "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}},
            },
            "reason": {"type": "string"},
        },
        "required": [entity.id_key, "status", "message"],
    }
    return {
        "type": "object",
        "properties": {
            "status": {"const": "success"},
            "entity": {"const": entity.name},
            "dry_run": {"type": "boolean"},
            "results": {"type": "array", "items": result},
            "summary": {"type": "object", "properties": {s: {"type": "integer"} for s in statuses}},
        },
        "required": ["status", "entity", "dry_run", "results", "summary"],
    }


def responses(entity: Entity) -> dict[str, Any]:
    replayed = {"Idempotent-Replayed": {"schema": {"const": "true"}, "description": "sent on a replay only"}}
    return {
        "200": ok("one result per record, in input order", report_schema(entity), replayed),
        **error_responses(SYNC_ANSWERS),
    }


_MOMENT = {"type": "string", "format": "date-time"}
_MAYBE_MOMENT = {"type": ["string", "null"], "format": "date-time"}
_MAYBE_ID = {"type": ["integer", "null"]}
#: A record's Moodle side in `GET /v1/{entity}/{zoho_id}` (deliveries.record_moodle_state).
MOODLE_STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "moodle_id": _MAYBE_ID | {"description": "of the record's own Moodle object (its mapping's first target)"},
        "targets": {
            "type": "array",
            "description": "each target of the entity's mapping, in order",
            "items": {
                "type": "object",
                "properties": {
                    "target": {"type": "string"},
                    "kind": {"enum": ["user", "category", "course", "enrolment"]},
                    "moodle_id": _MAYBE_ID | {"description": "null for enrolments and before delivery"},
                    "state": {"enum": ["active", "left", "not_delivered"], "description": "left: its leave action ran"},
                    "delivered_at": _MAYBE_MOMENT,
                },
                "required": ["target", "kind", "moodle_id", "state", "delivered_at"],
            },
        },
        "delivery": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "description": "the record's latest delivery (outbox row)",
                    "properties": {
                        "id": {"type": "integer"},
                        "operation": {"type": "string"},
                        "state": {"enum": list(STATES)},
                        "attempts": {"type": "integer"},
                        "next_attempt_at": _MAYBE_MOMENT | {"description": "null once done or dead"},
                        "last_error": {"type": ["string", "null"]},
                    },
                    "required": ["id", "operation", "state", "attempts", "next_attempt_at", "last_error"],
                },
            ]
        },
    },
    "required": ["moodle_id", "targets", "delivery"],
}
DELIVERY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "entity": {"type": "string"},
        "zoho_id": {"type": "string"},
        "operation": {"enum": ["upsert", "delete"]},
        "state": {"enum": list(STATES)},
        "attempts": {"type": "integer"},
        "last_error": {"type": ["string", "null"], "description": "Moodle's errorcode and message, or why it waits"},
        "moodle_id": _MAYBE_ID | {"description": "of the record's own Moodle object, once known"},
        "next_attempt_at": _MAYBE_MOMENT | {"description": "when it is due (pending, waiting, working)"},
        "created_at": _MOMENT,
    },
    "required": [
        *("id", "entity", "zoho_id", "operation", "state", "attempts", "last_error", "moodle_id"),
        *("next_attempt_at", "created_at"),
    ],
}
DELIVERIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "counts": {
            "type": "object",
            "description": "the tenant's deliveries per state (working: a worker holds it right now)",
            "properties": {state: {"type": "integer"} for state in STATES},
            "required": list(STATES),
        },
        "deliveries": {"type": "array", "items": DELIVERY_SCHEMA},
        "next_after_id": {"type": ["integer", "null"], "description": "after_id of the next page; null: no more"},
    },
    "required": ["counts", "deliveries", "next_after_id"],
}
_IDS = {"type": "array", "items": {"type": "integer"}}
RETRIED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "requeued": _IDS | {"description": "due now, attempts back to 0"},
        "not_found": _IDS | {"description": "ids no delivery of the tenant has"},
        "working": _IDS | {"description": "being delivered right now: left alone"},
    },
    "required": ["requeued", "not_found", "working"],
}
RETRY_BODY: dict[str, Any] = {
    "required": True,
    "description": 'the deliveries to send again: {"ids": [...]} or {"all_dead": true}',
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "ids": {"type": "array", "items": {"type": "integer", "minimum": 1}, "maxItems": 1000},
                    "all_dead": {"type": "boolean"},
                },
                "additionalProperties": False,
            }
        }
    },
}


def stored_record_schema(entity: Entity) -> dict[str, Any]:
    """What `GET /v1/{entity}/{zoho_id}` answers for a record of `entity`: every field by its Zoho name."""
    moment = {"type": "string", "format": "date-time"}
    maybe_moment = {"type": ["string", "null"], "format": "date-time"}
    sources = [f.source for f in entity.fields]
    return {
        "type": "object",
        "title": f"stored {entity.singular}",
        "properties": {
            "entity": {"const": entity.name},
            entity.id_key: {"type": "string"},
            "values": {
                "type": "object",
                "description": "the stored values by Zoho field name; null where empty",
                "properties": {source: {} for source in sources},
                "required": sources,
                "additionalProperties": False,
            },
            "fingerprint": {"type": "string"},
            "source_version": maybe_moment,
            "created_at": moment,
            "updated_at": moment,
            "deleted_at": maybe_moment,
            "moodle": MOODLE_STATE_SCHEMA,
        },
        "required": ["entity", entity.id_key, "values", "fingerprint", "source_version", "created_at", "updated_at"],
    }


def stored_name(entity: Entity) -> str:
    return "Stored" + record_name(entity)


DESCRIPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "singular": {"type": "string"},
        "source": {"type": "string"},
        "description": {"type": ["string", "null"]},
        "endpoint": {"type": "string"},
        "id_key": {"type": "string"},
        "version_field": {"type": ["string", "null"]},
        "requires": {"type": "array", "items": {"type": "string"}},
        "lookups": {"type": "array", "items": {"type": "string"}},
        "fields": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "from": {"type": "string"},
                    "type": {"type": "string"},
                    "required": {"type": "boolean"},
                    "entity": {"type": "string"},
                    "choices": {"type": "array", "items": {"type": "string"}},
                    "max_length": {"type": "integer"},
                    "description": {"type": "string"},
                },
                "required": ["name", "from", "type", "required"],
            },
        },
    },
    "required": ["name", "singular", "source", "endpoint", "id_key", "requires", "lookups", "fields"],
}
READY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"const": "ready"},
        "database": {"type": "string", "description": "sqlite or postgresql"},
        "schema_revision": {"type": ["string", "null"]},
    },
    "required": ["status", "database", "schema_revision"],
}
INTAKE_ROW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "entity": {"type": "string"},
        "zoho_id": {"type": "string"},
        "operation": {"enum": ["insert", "update", "delete"]},
        "state": {"enum": list(INTAKE_STATES)},
        "status": {"type": ["string", "null"], "description": "the record's outcome once done: NEW, UPDATED, ..."},
        "attempts": {"type": "integer"},
        "last_error": {"type": ["string", "null"], "description": "why it failed, or what its outcome says is wrong"},
        "next_attempt_at": _MAYBE_MOMENT | {"description": "when it is due (pending, working)"},
        "created_at": _MOMENT,
        "updated_at": _MOMENT,
    },
    "required": [
        *("id", "entity", "zoho_id", "operation", "state", "status", "attempts", "last_error"),
        *("next_attempt_at", "created_at", "updated_at"),
    ],
}
INTAKE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "counts": {
            "type": "object",
            "description": "the tenant's intake rows per state (working: a worker holds it right now)",
            "properties": {state: {"type": "integer"} for state in INTAKE_STATES},
            "required": list(INTAKE_STATES),
        },
        "intake": {"type": "array", "items": INTAKE_ROW_SCHEMA},
        "next_after_id": {"type": ["integer", "null"], "description": "after_id of the next page; null: no more"},
    },
    "required": ["counts", "intake", "next_after_id"],
}
QUEUED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"const": "queued"},
        "entity": {"type": "string"},
        "queued": {"type": "integer", "description": "ids queued (a repeated id once)"},
    },
    "required": ["status", "entity", "queued"],
}
NOTIFICATION_BODY: dict[str, Any] = {
    "required": True,
    "description": "Zoho's Notifications API callback (more keys may come: they are not read)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "channel_id": {"type": ["integer", "string"]},
                    "token": {"type": ["string", "null"]},
                    "module": {"type": "string"},
                    "operation": {"enum": ["insert", "update", "delete"]},
                    "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
                "required": ["channel_id", "token", "module", "operation", "ids"],
            }
        }
    },
}
#: The answers of the fixed routes, by operation id (app.py gives each route its id).
FIXED_RESPONSES: dict[str, dict[str, Any]] = {
    "health": {"200": ok("the process answers", {"type": "object", "properties": {"status": {"const": "ok"}}})},
    "health_head": {"200": ok("the process answers", None)},
    "ready": {"200": ok("ready", READY_SCHEMA), **error_responses(READY_ANSWERS)},
    "ready_head": {"200": ok("ready", None), **error_responses(READY_ANSWERS, body=False)},
    "entities": {
        "200": ok(
            "the loaded descriptors, parents first",
            {
                "type": "object",
                "properties": {
                    "entities": {"type": "array", "items": {"$ref": "#/components/schemas/EntityDescription"}}
                },
                "required": ["entities"],
            },
        )
    },
    "read_record": {
        "200": ok("the stored record", {"$ref": "#/components/schemas/StoredRecord"}),
        **error_responses(READ_ANSWERS),
    },
    "list_deliveries": {
        "200": ok("counts per state and a page of deliveries, oldest first", DELIVERIES_SCHEMA),
        **error_responses(DELIVERIES_ANSWERS),
    },
    "retry_deliveries": {
        "200": ok("what was requeued, what no delivery has, what a worker holds", RETRIED_SCHEMA),
        **error_responses(RETRY_ANSWERS),
    },
    "list_intake": {
        "200": ok("counts per state and a page of intake rows, oldest first", INTAKE_SCHEMA),
        **error_responses(INTAKE_ANSWERS),
    },
    "zoho_notification": {
        "200": ok("the ids are queued; the intake worker fetches and syncs them", QUEUED_SCHEMA),
        **error_responses(NOTIFICATION_ANSWERS),
    },
}
#: The request bodies of the fixed routes that take one.
FIXED_BODIES: dict[str, dict[str, Any]] = {"retry_deliveries": RETRY_BODY, "zoho_notification": NOTIFICATION_BODY}


@dataclass
class RecordComponents(Components):
    """Litestar's generated components, plus the record and error schemas written here."""

    raw_schemas: dict[str, Any] = field(default_factory=dict)

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema.pop("rawSchemas", None)
        schema["schemas"] = {**schema.get("schemas", {}), **self.raw_schemas}
        return schema


def components(catalog: Catalog) -> Components:
    entities = list(catalog)
    stored = {stored_name(entity): stored_record_schema(entity) for entity in entities}
    return RecordComponents(
        raw_schemas={
            "Error": ERROR_SCHEMA,
            **{record_name(entity): record_schema(entity) for entity in entities},
            **stored,
            "StoredRecord": {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in stored]},
            "EntityName": {"enum": [entity.name for entity in entities]},
            "EntityDescription": DESCRIPTION_SCHEMA,
        },
        security_schemes={
            "BearerAuth": SecurityScheme(type="http", scheme="bearer", description="Authorization: Bearer KEY"),
            "ApiKeyAuth": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
        },
    )


def sync_operation(entity: Entity, max_records: int) -> type[Operation]:
    """An Operation class whose request body is `entity`'s; litestar instantiates it."""
    body, answers = request_body(entity, max_records), responses(entity)

    class SyncOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            schema = super().to_schema()
            schema["requestBody"] = body
            schema["responses"] = answers
            return schema

    SyncOperation.__name__ = SyncOperation.__qualname__ = f"Sync{record_name(entity)}Operation"
    return SyncOperation


#: The path parameters of a read, as they are sent: the entity's name, and the id percent-encoded
#: (litestar would describe a `path` parameter as a URI).
READ_PARAMETERS = {
    "entity": {"$ref": "#/components/schemas/EntityName"},
    "zoho_id": {"type": "string", "minLength": 1, "description": "the Zoho id; `/` as `%2F`, `%` as `%25`"},
}
#: The query parameters of `GET /v1/deliveries` (the handler reads them as text and checks them).
DELIVERIES_PARAMETERS = {
    "state": {"enum": list(STATES)},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "after_id": {"type": "integer", "minimum": 0, "description": "the previous page's next_after_id"},
}
#: The query parameters of each listing route, by operation id.
QUERY_PARAMETERS = {
    "list_deliveries": DELIVERIES_PARAMETERS,
    "list_intake": DELIVERIES_PARAMETERS | {"state": {"enum": list(INTAKE_STATES)}},
}


def fixed_operation(operation_id: str) -> type[Operation]:
    """An Operation class answering as FIXED_RESPONSES[operation_id] says."""
    answers, body = FIXED_RESPONSES[operation_id], FIXED_BODIES.get(operation_id)
    query = QUERY_PARAMETERS.get(operation_id, {})

    class FixedOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            schema = super().to_schema()
            schema["responses"] = answers
            if body is not None:
                schema["requestBody"] = body
            for parameter in schema.get("parameters", ()):
                if parameter.get("in") == "path" and parameter.get("name") in READ_PARAMETERS:
                    parameter["schema"] = READ_PARAMETERS[parameter["name"]]
                if parameter.get("in") == "query" and parameter.get("name") in query:
                    parameter["schema"] = query[parameter["name"]]
            return schema

    FixedOperation.__name__ = FixedOperation.__qualname__ = f"{operation_id.title().replace('_', '')}Operation"
    return FixedOperation
