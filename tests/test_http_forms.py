"""Form webhooks as Zoho sends them: keys typed by hand, in any case, or as a descriptor's aliases.

The sample form webhook (tests/fixtures/zoho/webhook-form-body.txt) says `modified_time`, not
`Modified_Time`: its version still protects a newer stored record, on both databases.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from syncengine.descriptors import load_catalog
from syncengine.engine import SyncEngine
from syncengine.payloads import parse_body
from tests.conftest import ENTITIES, FIXTURES, Databases
from tests.records import student
from tests.service import Api, running_api

FORM = "application/x-www-form-urlencoded"
ENROLLMENT = "6284103000002402077"
#: The sample's body: zoho_id, modified_time (2026-02-10T09:20:13+0300), module, event=upsert.
SAMPLE = (FIXTURES / "webhook-form-body.txt").read_text().split("\n\n", 1)[1].strip()


@pytest.fixture
async def api(engine: SyncEngine) -> AsyncIterator[Api]:
    """The service, with the sample enrollment stored at 2026-02-11 (later than the sample form)."""
    for entity, name in [("programs", "products-record.json"), ("classes", "btec-classes-record.json")]:
        await engine.sync("school", entity, parse_body((FIXTURES / name).read_bytes()))
    await engine.sync("school", "students", [student("6284103000002010101")])
    page = json.loads((FIXTURES / "btec-enrollments-page.json").read_bytes())["data"]
    page[0]["Modified_Time"] = "2026-02-11T08:00:00+03:00"
    assert [r.status for r in (await engine.sync("school", "enrollments", page)).results] == ["NEW"]
    async with running_api(engine) as api:
        yield api


async def send_form(api: Api, body: str, entity: str = "enrollments") -> Any:
    response = await api.http.post(f"/v1/sync/{entity}", content=body, headers=api.auth() | {"Content-Type": FORM})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


async def test_the_sample_form_webhook_older_than_the_stored_record_is_skipped(api: Api) -> None:
    result = await send_form(api, SAMPLE + "&enrollment_type=Recording")
    assert result == {
        "zoho_enrollment_id": ENROLLMENT,
        "status": "SKIPPED",
        "reason": "stale_update",
        "message": "Modified_Time 2026-02-10T06:20:13+00:00 is older than the stored 2026-02-11T05:00:00+00:00; "
        "the newer version is kept",
    }
    stored = await api.engine.fetch_record("school", "enrollments", ENROLLMENT)
    assert stored is not None and stored["values"]["Enrollment_Type"] == "Normal"


@pytest.mark.parametrize(
    "keys",
    [("modified_time", "enrollment_type"), ("MODIFIED_TIME", "ENROLLMENT_TYPE"), ("Modified_Time", "Enrollment_Type")],
    ids=["lower", "upper", "exact"],
)
async def test_form_keys_match_zoho_names_in_any_case(api: Api, keys: tuple[str, str]) -> None:
    version, kind = keys
    stale = await send_form(
        api, urlencode({"zoho_id": ENROLLMENT, version: "2026-02-10T09:20:13+0300", kind: "Recording"})
    )
    assert (stale["status"], stale.get("reason")) == ("SKIPPED", "stale_update")
    newer = await send_form(
        api, urlencode({"ZOHO_ID": ENROLLMENT, version: "2026-02-12T09:00:00+0300", kind: "Recording"})
    )
    assert (newer["status"], newer["changes"]) == ("UPDATED", {"Enrollment_Type": ["Normal", "Recording"]})


async def test_two_keys_for_one_field_are_400(api: Api) -> None:
    response = await api.http.post(
        "/v1/sync/enrollments",
        content=f"zoho_id={ENROLLMENT}&modified_time=2026-02-12T09:00:00Z&Modified_Time=2026-02-01T09:00:00Z",
        headers=api.auth() | {"Content-Type": FORM},
    )
    assert response.status_code == 400
    assert response.json()["message"] == (
        "malformed form body: the fields 'modified_time' and 'Modified_Time' both stand for 'Modified_Time' "
        "(form keys match in any case, and aliases too); send one of them"
    )


ALIASES = textwrap.dedent(
    """
    version: 1
    entities:
      programs:
        source: Products
        singular: program
        version_field: Modified_Time
        version_aliases: [last_changed]
        fields:
          name: {from: Product_Name, type: string, required: true, aliases: [program_name, title]}
          price: {from: Program_Price, type: decimal}
    """
)


async def test_aliases_name_fields_and_the_version_in_a_form(
    databases: Databases, dialect: str, tmp_path: Path
) -> None:
    path = tmp_path / "entities.yaml"
    path.write_text(ALIASES)
    catalog = load_catalog(path)
    engine = SyncEngine(catalog, await databases.create(dialect, catalog))
    async with running_api(engine, entities=path) as api:
        first = await send_form(api, "zoho_id=1&Program_Name=Web+Design&Last_Changed=2026-02-10T10:00:00Z", "programs")
        assert first["status"] == "NEW"
        older = await send_form(api, "zoho_id=1&TITLE=Old+Title&last_changed=2026-02-09T10:00:00Z", "programs")
        assert (older["status"], older["reason"]) == ("SKIPPED", "stale_update")
        newer = await send_form(
            api, "zoho_id=1&title=New+Title&program_price=10&last_changed=2026-02-11T10:00:00Z", "programs"
        )
        assert newer["changes"] == {"Product_Name": ["Web Design", "New Title"], "Program_Price": [None, "10"]}
        # In JSON, a key is the Zoho name exactly: an alias there is no field of the entity.
        response = await api.sync("programs", {"id": "1", "title": "JSON", "Modified_Time": "2026-02-12T10:00:00Z"})
        assert response.json()["results"][0]["status"] == "UNCHANGED"


async def test_a_json_body_sent_as_a_form_says_to_send_its_content_type(api: Api) -> None:
    """What `curl -d '{...}'` does without `-H 'Content-Type: application/json'`."""
    for body in ['{"id": "1", "Name": "x"}', '  [{"id": "1", "a": "b=c"}]']:
        response = await api.http.post("/v1/sync/students", content=body, headers=api.auth() | {"Content-Type": FORM})
        assert response.status_code == 400
        assert response.json() == {
            "status": "error",
            "status_code": 400,
            "error": "invalid_body",
            "message": "the body looks like JSON, but its Content-Type is application/x-www-form-urlencoded "
            "(what `curl -d` sends when no Content-Type is given): send it with 'Content-Type: application/json'",
        }


def test_the_descriptor_keeps_the_school_entities_form_keys() -> None:
    enrollments = load_catalog(ENTITIES).entity("enrollments")
    assert enrollments.form_keys["modified_time"] == "Modified_Time"
    assert enrollments.form_keys["enrolled_students"] == "Enrolled_Students"
