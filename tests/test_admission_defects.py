"""Defects found under load (issue 13): the key purger while the database is away, a client that
trickles its headers, and a tenant stored under a name this version refuses."""

from __future__ import annotations

import asyncio
import logging
import select
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from syncengine.engine import SyncEngine
from syncengine.idempotency import IdempotencyKeys
from syncengine.store import Timeouts, open_database
from syncengine.tenants import hash_key
from tests.conftest import ENTITIES, ROOT
from tests.records import student
from tests.service import running_api
from tests.test_http_edge_serve import Server, response_of, wait_for_line
from tests.test_serve import SYNCENGINE, environment, free_port

HEADER_TIMEOUT = 1


@pytest.mark.postgres
async def test_the_key_purger_says_in_one_line_that_the_database_is_away_and_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="syncengine")
    database = open_database("postgresql://postgres:secret@127.0.0.1:1/test", Timeouts(1.0, 1.0, 0.3))
    keys = IdempotencyKeys(database, ttl=60.0, wait=1.0)
    purger = asyncio.create_task(keys.purge_forever(0.01))
    try:
        for _ in range(500):  # until it has failed twice: it keeps trying
            if len([r for r in caplog.records if "could not purge" in r.getMessage()]) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        purger.cancel()
        await asyncio.gather(purger, return_exceptions=True)
        await database.dispose()
    failures = [record for record in caplog.records if "could not purge" in record.getMessage()]
    assert len(failures) >= 2
    for record in failures:
        assert record.levelno == logging.WARNING
        assert record.exc_info is None and record.exc_text is None  # one line, no traceback
        assert record.fields["reason"].startswith("ConnectionRefusedError")  # type: ignore[attr-defined]
    assert "secret" not in caplog.text


async def test_a_tenant_stored_under_a_name_now_refused_gets_403_that_says_what_to_do(engine: SyncEngine) -> None:
    async with running_api(engine) as api:
        async with engine.database.begin() as conn:  # as an older version, with freer names, stored it
            await conn.execute(
                sa.text(
                    "INSERT INTO syncengine_tenants (name, key_hash, created_at, key_created_at) "
                    "VALUES ('old school', :digest, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"digest": hash_key("sk_old")},
            )
        for response in (
            await api.http.post("/v1/sync/students", json=[student("1")], headers={"X-API-Key": "sk_old"}),
            await api.http.get("/v1/students/1", headers={"X-API-Key": "sk_old"}),
        ):
            assert (response.status_code, response.json()["error"]) == (403, "tenant_name_refused"), response.text
            message = response.json()["message"]
            assert "tenant name 'old school' must be" in message
            assert "add the tenant again under a valid name (`syncengine tenant add NAME`)" in message


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`syncengine serve` with SYNCENGINE_HEADER_TIMEOUT=1, on a SQLite file."""
    project = tmp_path_factory.mktemp("headers")
    shutil.copytree(ROOT / "migrations", project / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ENTITIES, project / "entities.yaml")
    port, log = free_port(), project / "server.log"
    env = environment(SYNCENGINE_HEADER_TIMEOUT=str(HEADER_TIMEOUT), SYNCENGINE_KEEP_ALIVE_TIMEOUT="30")
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [SYNCENGINE, "serve", "--port", str(port)], env=env, cwd=project, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        for _ in range(300):
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5):
                    break
            except OSError:
                subprocess.run(["sleep", "0.1"], check=True)
        printed = b""
        while b"sk_" not in printed:
            printed += process.stdout.readline()  # type: ignore[union-attr]
        key = printed.decode().split("sk_", 1)[1].split()[0]
        yield Server(port, "sk_" + key, Path(log))
    finally:
        process.terminate()
        process.wait(20)


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (read to its end)."""
    while chunk := sock.recv(65536):
        del chunk
    return True


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # a connection that sends nothing at all
        b"POST /v1/sync/students HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers begun, never ended
    ],
    ids=["nothing", "part of the headers"],
)
def test_headers_that_trickle_past_the_header_timeout_are_408_and_the_connection_closes(
    server: Server, sent: bytes
) -> None:
    with server.connect() as sock:
        sock.sendall(sent)
        for _ in range(40):  # a byte of a header every quarter second, until the server answers (at most 10 s)
            if select.select([sock], [], [], 0.25)[0]:
                break
            if sent:
                sock.sendall(b"X")
        status, headers, body = response_of(sock)
        assert (status, headers["connection"]) == (408, "close")
        assert b'"error":"header_timeout"' in body
        assert b"(SYNCENGINE_HEADER_TIMEOUT): send them at once" in body
        assert closed(sock)
    wait_for_line(server, status=408, error="header_timeout")


def test_a_kept_alive_connection_has_the_header_timeout_again_for_its_next_request(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert response_of(sock)[0] == 200  # headers in time: answered, and the connection stays open
        sock.sendall(b"GET /v1/health HTTP/1.1\r\n")  # the next request's headers never end
        status, _, body = response_of(sock)
        assert status == 408 and b"header_timeout" in body
