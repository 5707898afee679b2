"""The HTTP edge on a real `syncengine serve`, over sockets: slow bodies time out, idle
connections close, an abandoned upload is a 499 and no traceback, and a client that sends its
whole body before reading (urllib) reads its 413.

One server for the module, with small limits so that each case takes a second or two.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import msgspec
import pytest

from tests.conftest import ENTITIES, ROOT
from tests.records import student
from tests.test_serve import SYNCENGINE, environment, free_port

MAX_BODY = 1024 * 1024  # small enough to send 3 times over quickly, large enough to fill the socket buffers
BODY_TIMEOUT = 2
KEEP_ALIVE = 1


@dataclass
class Server:
    port: int
    key: str
    log: Path

    def lines(self) -> list[dict[str, object]]:
        """The JSON log lines so far."""
        text = self.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def head(self, method: str, path: str, length: int, **headers: str) -> bytes:
        fields = {"Host": "127.0.0.1", "Authorization": f"Bearer {self.key}", "Content-Length": str(length)}
        fields |= {"Content-Type": "application/json"} | headers
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items()), "", ""]
        return "\r\n".join(lines).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    project = tmp_path_factory.mktemp("edge")
    shutil.copytree(ROOT / "migrations", project / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ENTITIES, project / "entities.yaml")
    port, log = free_port(), project / "server.log"
    env = environment(
        SYNCENGINE_MAX_BODY_BYTES=str(MAX_BODY),
        SYNCENGINE_BODY_TIMEOUT=str(BODY_TIMEOUT),
        SYNCENGINE_KEEP_ALIVE_TIMEOUT=str(KEEP_ALIVE),
    )
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [SYNCENGINE, "serve", "--port", str(port)], env=env, cwd=project, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        for _ in range(200):
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5):
                    break
            except OSError:
                time.sleep(0.1)
        printed = b""
        while b"sk_" not in printed:
            printed += process.stdout.readline()  # type: ignore[union-attr]
        key = printed.decode().split("sk_", 1)[1].split()[0]
        yield Server(port, "sk_" + key, log)
    finally:
        process.terminate()
        process.wait(20)


def response_of(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (with a Content-Length) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *fields = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (field.split(":", 1) for field in fields)}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def wait_for_line(server: Server, **fields: object) -> dict[str, object]:
    for _ in range(100):
        for line in server.lines():
            if all(line.get(k) == v for k, v in fields.items()):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no log line with {fields}: {server.lines()[-3:]}")


def test_a_body_sent_too_slowly_is_408_and_the_connection_closes(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(server.head("POST", "/v1/sync/students", 100, **{"X-Request-ID": "slow-body"}))
        for _ in range(40):  # one byte every quarter second, until the server answers (at most 10 s)
            if select.select([sock], [], [], 0.25)[0]:
                break
            sock.sendall(b" ")
        status, headers, body = response_of(sock)
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body)["message"] == (
            f"the request body did not arrive within {BODY_TIMEOUT} seconds (SYNCENGINE_BODY_TIMEOUT): "
            "send it at once, or in smaller batches"
        )
    assert wait_for_line(server, request_id="slow-body")["status"] == 408


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = response_of(sock)
        assert status == 200 and headers.get("connection") != "close"
        sock.settimeout(KEEP_ALIVE + 3)  # SYNCENGINE_KEEP_ALIVE_TIMEOUT, not uvicorn's 5 s default
        assert sock.recv(1) == b""  # closed by the server


def test_an_abandoned_upload_is_a_499_without_a_traceback(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(server.head("POST", "/v1/sync/students", 50_000, **{"X-Request-ID": "abandoned"}))
        sock.sendall(b'[{"id": "3001", ' + b" " * 1000)
    line = wait_for_line(server, request_id="abandoned")
    assert (line["status"], line["error"], line["level"]) == (499, "client_disconnected", "INFO")
    text = server.log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text and "Exception in ASGI" not in text


def test_a_client_that_sends_everything_first_reads_its_413(server: Server) -> None:
    body = b"[" + b" " * (3 * MAX_BODY) + b"]"  # without lingering, 2 of 3 such uploads saw a reset
    for attempt in range(3):
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/v1/sync/students",
            data=body,
            headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413, attempt
        assert caught.value.headers["connection"] == "close"
        assert json.loads(caught.value.read())["error"] == "body_too_large"
    # The same for an answer that comes before the body is read for another reason (a bad key).
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/sync/students", data=body)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 401


def test_ids_with_slash_and_percent_and_head_through_uvicorn(server: Server) -> None:
    auth = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    base = f"http://127.0.0.1:{server.port}"
    ids = ["x/y", "a%b", "a%2Fb"]
    sync = urllib.request.Request(f"{base}/v1/sync/students", data=msgspec.json.encode([student(i) for i in ids]))
    for name, value in auth.items():
        sync.add_header(name, value)
    with urllib.request.urlopen(sync, timeout=30) as answer:
        assert json.loads(answer.read())["summary"]["NEW"] == 3
    for zoho_id in ids:
        read = urllib.request.Request(f"{base}/v1/students/{quote(zoho_id, safe='')}", headers=auth)
        with urllib.request.urlopen(read, timeout=30) as answer:
            assert json.loads(answer.read())["zoho_student_id"] == zoho_id
    for path in ("/v1/health", "/v1/ready"):
        with urllib.request.urlopen(urllib.request.Request(base + path, method="HEAD"), timeout=30) as answer:
            assert (answer.status, answer.read()) == (200, b"")
