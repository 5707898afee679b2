"""OpenAPI for the generated endpoints: each entity's request schema, derived from its descriptor.

    record_schema(entity)["required"]   # "id" and the Zoho names of the entity's required fields

Litestar builds the rest of the document from the handlers; the request bodies come from here,
since the sync handlers read their bodies themselves (a record, a list, Zoho's envelope or a form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar.openapi.spec import Components, Operation, SecurityScheme

from syncengine.descriptors import Catalog, Entity
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
}
ERRORS = {
    "400": "malformed JSON (with line and column), or a body that is not one of the accepted shapes",
    "401": "no API key, or an unknown one",
    "403": "X-Tenant-ID names another tenant than the API key's",
    "409": "the first request with this Idempotency-Key is still being processed",
    "413": "the body or the number of records is over the limit",
    "415": "a Content-Type other than JSON or a form",
    "422": "this Idempotency-Key was used with another body",
}


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
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "200": {
            "description": "one result per record, in input order",
            "headers": {"Idempotent-Replayed": {"schema": {"type": "string"}, "description": "true on a replay"}},
            "content": {"application/json": {"schema": report_schema(entity)}},
        },
        **{code: {"description": text, "content": error} for code, text in ERRORS.items()},
    }


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
    return RecordComponents(
        raw_schemas={"Error": ERROR_SCHEMA} | {record_name(entity): record_schema(entity) for entity in catalog},
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
