"""`syncengine serve` as a real process: the quick start on SQLite, and PostgreSQL end to end."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.conftest import ENTITIES, Databases
from tests.records import class_, enrollment, program, student

SYNCENGINE = str(Path(sys.executable).with_name("syncengine"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCENGINE_")}
    return env | variables


@asynccontextmanager
async def serving(args: list[str], env: dict[str, str], cwd: Path) -> AsyncIterator[tuple[str, str]]:
    """Start `syncengine serve`, wait until it answers; yield (base URL, what it printed first)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        SYNCENGINE, "serve", "--port", str(port), *args,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(200):
                if process.returncode is not None:
                    stderr = await process.stderr.read()  # type: ignore[union-attr]
                    raise AssertionError(f"serve exited with {process.returncode}: {stderr.decode()}")
                try:
                    if (await http.get("/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("serve did not answer within 20 seconds")
        printed = b""  # all of it was printed before the server started to listen
        while not process.stdout.at_eof():  # type: ignore[union-attr]
            try:
                printed += await asyncio.wait_for(process.stdout.readline(), 0.5)  # type: ignore[union-attr]
            except TimeoutError:
                break
        yield base, printed.decode()
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 20)


def printed_key(printed: str) -> str:
    match = re.search(r"^\s+(sk_\S+)$", printed, re.MULTILINE)
    assert match, printed
    return match.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the quick start's example uses curl")
async def test_quick_start_on_sqlite_prints_a_key_and_a_curl_that_works(project_copy: Callable[[], Path]) -> None:
    project = project_copy().parent  # entities.yaml and migrations/, no database yet
    async with serving([], environment(), project) as (base, printed):
        assert "Created tenant 'default'" in printed
        command = "\n".join(
            line.strip() for line in printed.splitlines() if line.strip().startswith(("curl", "-H", "-d"))
        )
        curl = await asyncio.create_subprocess_exec(
            "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(curl.communicate(), 30)
        assert curl.returncode == 0, err
        answer = msgspec.json.decode(out)
        assert answer["status"] == "success" and answer["dry_run"] is True
        assert answer["summary"]["NEW"] == 1, answer
        ready = httpx.get(f"{base}/v1/ready")
        assert ready.status_code == 200
    assert (project / "syncengine.db").is_file()
    async with serving([], environment(), project) as (_, printed_again):
        assert "sk_" not in printed_again  # the key is shown once, on the first run only


@pytest.mark.postgres
async def test_end_to_end_on_postgresql(databases: Databases, tmp_path: Path) -> None:
    url = await databases.fresh_url("postgresql")
    env = environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ENTITIES))

    refused = await asyncio.create_subprocess_exec(
        SYNCENGINE, "serve", "--port", str(free_port()), env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 6
    assert "run `syncengine db upgrade`" in err.decode()

    upgrade = await asyncio.create_subprocess_exec(SYNCENGINE, "db", "upgrade", env=env, cwd=tmp_path)
    assert await asyncio.wait_for(upgrade.wait(), 120) == 0

    async with serving(["--workers", "2"], env, tmp_path) as (base, printed):
        key = printed_key(printed)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            assert (await http.get("/v1/ready")).json()["status"] == "ready"
            order = [e["name"] for e in (await http.get("/v1/entities")).json()["entities"]]
            assert order.index("programs") < order.index("classes") < order.index("enrollments")
            for entity, records in (
                ("programs", [program("1001"), program("1002")]),
                ("students", [student("3001"), student("3002")]),
                ("classes", [class_("4001", "1001")]),
                ("enrollments", [enrollment("5001", "3001", "4001"), enrollment("5002", "3002", "4001")]),
            ):
                response = await http.post(f"/v1/sync/{entity}", json={"data": records})
                assert response.status_code == 200, response.text
                assert response.json()["summary"]["NEW"] == 2 if entity != "classes" else 1

            stored = (await http.get("/v1/enrollments/5002")).json()
            assert stored["values"]["Enrolled_Students"] == "3002" and stored["values"]["Classes"] == "4001"

            # Idempotency holds across the two worker processes: it lives in the database.
            replays = [
                await http.post("/v1/sync/students", json=[student("3003")], headers={"Idempotency-Key": "e2e-1"})
                for _ in range(6)
            ]
            assert [r.json()["results"][0]["status"] for r in replays] == ["NEW"] * 6
            assert sum(r.headers.get("idempotent-replayed") == "true" for r in replays) == 5

            form = await http.post("/v1/sync/students", data={"zoho_id": "3003", "event": "delete"})
            assert form.json()["results"][0]["status"] == "DELETED"
