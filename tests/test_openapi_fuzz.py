"""Schemathesis against the served service: every operation of its own OpenAPI document.

The app runs under uvicorn on a socket of 127.0.0.1, on the test's event loop (where its database
connections live); schemathesis builds requests from the document served at
/schema/openapi.json, valid ones and invalid ones, and sends them with a valid API key from a
worker thread. Every answer must be no 5xx but a declared 503, have a declared status code, the
declared content type and headers, and a body that follows the declared schema. The examples are
bounded and derandomized, so a run is the same run every time.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import requests
import schemathesis
import sqlalchemy as sa
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from syncengine import migrate
from syncengine.app import create_app
from syncengine.engine import SyncEngine
from syncengine.tenants import add_tenant
from tests.records import class_, enrollment, program, student, teacher
from tests.service import SETTINGS

#: Records stored before the run, so that reads of them answer 200: (entity, record).
STORED = [("programs", program()), ("teachers", teacher()), ("students", student()), ("classes", class_())]
STORED += [("enrollments", enrollment(Classes="4001"))]

#: Examples per operation and generation mode (15 operations, 2 modes, 2 databases: about 20 s each).
EXAMPLES = 6
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@asynccontextmanager
async def served(engine: SyncEngine) -> AsyncIterator[tuple[str, str]]:
    """The service on a free port of 127.0.0.1: its base URL and the API key of tenant 'school'."""
    key = await add_tenant(engine.database, "school")
    async with engine.database.begin() as conn:  # the schema is current: /v1/ready answers 200
        await conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO alembic_version VALUES (:head)"), {"head": migrate.head(SETTINGS)})
    app = create_app(SETTINGS, engine=engine)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        listener.close()


def five_hundreds(response: requests.Response) -> str | None:
    """What is wrong with a 5xx: only 503, the declared 'come back later', is an answer."""
    if response.status_code >= 500 and response.status_code != 503:
        return f"{response.status_code}: {response.text[:500]}"
    return None


async def test_every_operation_answers_as_its_document_says(engine: SyncEngine) -> None:
    async with served(engine) as (base_url, key):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        for entity, record in STORED:
            stored = await asyncio.to_thread(session.post, f"{base_url}/v1/sync/{entity}", json=record, timeout=30)
            assert stored.json()["results"][0]["status"] == "NEW", stored.text
        document = await asyncio.to_thread(lambda: session.get(f"{base_url}/schema/openapi.json", timeout=30).json())
        schema = schemathesis.openapi.from_dict(document)
        operations = [cast("Ok[Any]", result).ok() for result in schema.get_all_operations()]
        labels = sorted(f"{method.upper()} {path}" for path, methods in document["paths"].items() for method in methods)
        strategies = [
            operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE) for operation in operations
        ]
        read = schema["/v1/{entity}/{zoho_id}"]["GET"]
        strategies += [read.as_strategy(path_parameters={"entity": e, "zoho_id": r["id"]}) for e, r in STORED]
        # Invalid requests, of the operations that take something to get wrong.
        strategies += [
            operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
            for operation in operations
            if operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody")
        ]
        seen: dict[str, set[int]] = {}

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def check(data: st.DataObject, strategy: Any) -> None:
            case = data.draw(strategy)
            response = case.call(base_url=base_url, session=session, headers=session.headers)
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            assert five_hundreds(response) is None, case.as_curl_command()
            case.validate_response(response, checks=CHECKS)

        def run_all() -> None:
            for strategy in strategies:
                check(strategy=strategy)

        await asyncio.wait_for(asyncio.to_thread(run_all), timeout=300)
        session.close()
    assert sorted(seen) == labels  # every operation was called
    assert 200 in seen["POST /v1/sync/programs"] and 200 in seen["GET /v1/health"]
    assert {200, 404} <= seen["GET /v1/{entity}/{zoho_id}"] and seen["GET /v1/ready"] == {200}
