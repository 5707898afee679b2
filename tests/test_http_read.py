"""The reading endpoints, OpenAPI, and tenant isolation, through the real ASGI app."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from syncengine import migrate
from syncengine.app import create_app
from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from tests.conftest import Databases
from tests.records import class_, program, student
from tests.service import SETTINGS, Api, asgi_client, lifespan, running_api, statuses


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    async with running_api(engine) as api:
        yield api


async def test_health_needs_no_database() -> None:
    settings = dataclasses.replace(SETTINGS, database_url="postgresql://nobody@127.0.0.1:1/none")
    app = create_app(settings)
    async with lifespan(app), asgi_client(app) as http:
        response = await http.get("/v1/health")
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        ready = await http.get("/v1/ready")
        assert ready.status_code == 503
        assert ready.json()["error"] == "database_unavailable"


async def test_ready_on_a_migrated_database(databases: Databases, dialect: str) -> None:
    settings = dataclasses.replace(SETTINGS, database_url=await databases.fresh_url(dialect))
    await asyncio.to_thread(migrate.upgrade, settings)
    app = create_app(settings)
    async with lifespan(app), asgi_client(app) as http:
        response = await http.get("/v1/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": dialect, "schema_revision": migrate.head(settings)}


async def test_ready_says_when_the_schema_is_behind(api: Api) -> None:
    response = await api.http.get("/v1/ready")  # tables made by create_all: no Alembic revision
    assert response.status_code == 503
    assert response.json()["message"] == (
        f"the database schema is at no revision, the code expects {migrate.head(SETTINGS)}: run `syncengine db upgrade`"
    )


async def test_entities_lists_descriptors_in_dependency_order(api: Api, catalog: Catalog) -> None:
    response = await api.http.get("/v1/entities")
    entities = response.json()["entities"]
    assert [e["name"] for e in entities] == list(catalog.entities)
    enrollments = next(e for e in entities if e["name"] == "enrollments")
    assert enrollments["endpoint"] == "/v1/sync/enrollments"
    assert enrollments["requires"] == ["students", "classes"]
    assert enrollments["id_key"] == "zoho_enrollment_id"
    assert enrollments["fields"][0] == {
        "name": "student",
        "from": "Enrolled_Students",
        "type": "lookup",
        "required": True,
        "entity": "students",
    }


async def test_openapi_has_a_request_schema_per_entity(api: Api, catalog: Catalog) -> None:
    document = (await api.http.get("/schema/openapi.json")).json()
    for entity in catalog:
        operation = document["paths"][f"/v1/sync/{entity.name}"]["post"]
        body = operation["requestBody"]["content"]
        assert set(body) == {"application/json", "application/x-www-form-urlencoded"}
        assert operation["security"] == [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    students = document["components"]["schemas"]["StudentRecord"]
    assert students["required"] == ["id", "First_Name", "Last_Name", "Academic_Email"]
    assert students["properties"]["Academic_Email"] == {"type": "string", "format": "email", "maxLength": 320}
    assert students["properties"]["Birth_Date"] == {"type": "string", "format": "date"}
    assert students["properties"]["Status"]["enum"][:2] == ["Pending", "Passive"]
    assert "/v1/sync/{entity}" not in document["paths"]
    html = await api.http.get("/schema")
    assert html.status_code == 200


async def test_read_a_stored_record(api: Api) -> None:
    await api.sync("programs", [program("1001")])
    await api.sync("classes", [class_("4001", Start_Date="2026-02-16")])
    response = await api.http.get("/v1/classes/4001", headers=api.auth())
    assert response.status_code == 200
    record = response.json()
    assert record["entity"] == "classes" and record["zoho_class_id"] == "4001"
    assert record["values"]["Class_Name"] == "Class 4001"
    assert record["values"]["BTEC_Program"] == "1001"
    assert record["values"]["Start_Date"] == "2026-02-16"
    assert len(record["fingerprint"]) == 64
    assert record["source_version"] == "2026-02-10T06:15:42Z"
    assert record["created_at"].endswith("Z") and record["deleted_at"] is None
    # Issue 16 (ops): each target of the mapping, not delivered yet, and the outbox row's id.
    not_delivered = {"moodle_id": None, "state": "not_delivered", "delivered_at": None}
    assert record["moodle"] == {
        "moodle_id": None,
        "targets": [
            {"target": "course", "kind": "course", **not_delivered},
            {"target": "teacher", "kind": "enrolment", **not_delivered},
        ],
        "delivery": {
            "id": record["moodle"]["delivery"]["id"],
            "operation": "upsert",
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": record["moodle"]["delivery"]["next_attempt_at"],
            "last_error": None,
        },
    }


async def test_read_errors(api: Api) -> None:
    missing = await api.http.get("/v1/students/404404", headers=api.auth())
    assert missing.status_code == 404
    assert missing.json()["message"] == "no student with Zoho id '404404' is stored for this tenant"
    unknown = await api.http.get("/v1/pupils/1", headers=api.auth())
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_entity"
    unauthenticated = await api.http.get("/v1/students/1")
    assert unauthenticated.status_code == 401


# Tenant isolation: a key of tenant A can neither read nor write tenant B's records.


async def test_a_tenant_cannot_read_another_tenants_records(api: Api) -> None:
    assert statuses(await api.sync("students", [student("3001")], tenant="other")) == ["NEW"]
    theirs = await api.http.get("/v1/students/3001", headers=api.auth("school"))
    assert theirs.status_code == 404
    asking_by_header = await api.http.get("/v1/students/3001", headers=api.auth("school") | {"X-Tenant-ID": "other"})
    assert asking_by_header.status_code == 403
    own = await api.http.get("/v1/students/3001", headers=api.auth("other"))
    assert own.status_code == 200


async def test_a_tenant_cannot_write_another_tenants_records(api: Api) -> None:
    await api.sync("students", [student("3001", Status="Active")], tenant="other")
    ours = await api.sync("students", [student("3001", Status="Freeze")], tenant="school")
    assert statuses(ours) == ["NEW"]  # a record of its own, not an update of theirs
    deleted = await api.sync("students", [{"id": "3001", "$deleted": True}], tenant="school")
    assert statuses(deleted) == ["DELETED"]
    theirs = (await api.http.get("/v1/students/3001", headers=api.auth("other"))).json()
    assert theirs["values"]["Status"] == "Active" and theirs["deleted_at"] is None
    forged = await api.sync("students", [student("3001")], tenant="school", headers={"X-Tenant-ID": "other"})
    assert forged.status_code == 403


async def test_a_tenant_cannot_replay_another_tenants_idempotent_response(api: Api) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    await api.sync("students", [student("3001")], tenant="other", headers=headers)
    mine = await api.sync("students", [student("3001")], tenant="school", headers=headers)
    assert "idempotent-replayed" not in mine.headers and statuses(mine) == ["NEW"]


@pytest.mark.parametrize(
    ("path_id", "why"),
    [
        ("%00", "a record id cannot contain a NUL character"),
        ("a%07b", "a record id cannot contain a control or invisible character (U+0007)"),
    ],
)
async def test_an_id_no_record_can_have_is_404_on_both_databases(api: Api, path_id: str, why: str) -> None:
    response = await api.http.get(f"/v1/students/{path_id}", headers=api.auth())
    assert response.status_code == 404
    assert response.json() == {
        "status": "error",
        "status_code": 404,
        "error": "record_not_found",
        "message": f"no record can have this id: {why}",
    }
