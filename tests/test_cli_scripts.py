"""scripts/serve and scripts/test set-up: install only when pyproject.toml changed (item 8 of
issue 14); the tests' PostgreSQL database is created, or one line says why not (item 7)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from syncengine.store import open_database
from tests.conftest import POSTGRES_URL, ROOT


def test_the_package_is_installed_again_only_when_pyproject_changes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", project / "scripts")
    shutil.copy(ROOT / "pyproject.toml", project)
    python = project / ".venv" / "bin" / "python"  # stands in for pip: notes each install it is asked for
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../installs"\n')
    python.chmod(0o755)

    def ensure(extras: str) -> list[str]:
        subprocess.run(["bash", "-c", f'. scripts/setup.sh && ensure_installed "{extras}"'], cwd=project, check=True)
        log = project / ".venv" / "installs"
        return log.read_text().splitlines() if log.exists() else []

    installs = ensure("test")
    assert installs == ["-m pip install --quiet --disable-pip-version-check -e .[test]"]
    assert ensure("test") == installs  # nothing changed: no install
    assert ensure("") == installs  # the test install holds the plain one
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + "\n# changed\n")
    assert ensure("") == [*installs, "-m pip install --quiet --disable-pip-version-check -e ."]
    assert len(ensure("test")) == 3  # the test extras of the new pyproject.toml are installed once more
    assert len(ensure("test")) == 3


def ensure_database(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/ensure_test_database.py"],
        cwd=ROOT, env={**os.environ, "SYNCENGINE_TEST_POSTGRES_URL": url}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def database_exists(name: str, *, drop: bool = False) -> bool:
    admin = open_database(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            found = (await conn.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")).first()
            if drop:
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return found is not None
    finally:
        await admin.dispose()


def test_the_tests_database_is_created_when_missing() -> None:
    name = f"test_missing_{uuid.uuid4().hex[:8]}"
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        created = ensure_database(url)
        assert created.returncode == 0, created.stderr
        assert asyncio.run(database_exists(name))
        assert ensure_database(url).returncode == 0  # there already: nothing to do
    finally:
        asyncio.run(database_exists(name, drop=True))


def test_an_unreachable_server_is_one_line_saying_what_to_do() -> None:
    result = ensure_database("postgresql://postgres@127.0.0.1:1/test")
    assert result.returncode == 1
    assert result.stderr == (
        "scripts/test: cannot reach PostgreSQL for the tests at postgresql://postgres@127.0.0.1:1/test "
        "(ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1)): start it, "
        "or set SYNCENGINE_TEST_POSTGRES_URL to a server that runs\n"
    )
