"""One JSON log line per request: id, tenant, entity, counts, duration; no records, no keys."""

from __future__ import annotations

import json
import logging

import pytest

from syncengine.engine import SyncEngine
from syncengine.logs import JsonFormatter
from tests.records import student
from tests.service import running_api


async def test_one_json_line_per_request_without_contents_or_secrets(
    engine: SyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncengine")
    async with running_api(engine) as api:
        await api.sync(
            "students",
            [student("3001", First_Name="Zeynep"), student("3002", Academic_Email="x")],
            headers={"X-Request-ID": "req-1", "Idempotency-Key": "secret-ish"},
        )
        await api.http.get("/v2/missing")
        await api.http.post("/v1/sync/students", json=[student()], headers={"Authorization": "Bearer sk_wrong"})
    lines = [
        JsonFormatter().format(r) for r in caplog.records if r.name == "syncengine.http" and r.getMessage() == "request"
    ]
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["request_id"] == "req-1"
    assert first["level"] == "INFO" and first["status"] == 200
    assert (first["tenant"], first["entity"], first["records"]) == ("school", "students", 2)
    assert first["counts"] == {"NEW": 1, "INVALID": 1}
    assert isinstance(first["duration_ms"], float)
    assert json.loads(lines[1])["status"] == 404
    assert json.loads(lines[2])["error"] == "invalid_api_key"
    text = "\n".join(lines)
    for secret_or_content in ("Zeynep", "s3001@school.edu", api.keys["school"], "sk_wrong", "secret-ish"):
        assert secret_or_content not in text
