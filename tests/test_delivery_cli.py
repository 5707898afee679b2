"""`syncengine tenant moodle` and `syncengine worker`, as processes, against the Moodle fake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import records
from tests.moodle_fake import running

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "syncengine", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)


def test_the_worker_delivers_what_was_loaded_and_the_token_is_never_printed(tmp_path: Path) -> None:
    env = {
        "SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
        "SYNCENGINE_ENTITIES": str(ROOT / "entities.yaml"),
    }
    assert run("tenant", "add", "school", env=env).returncode == 0
    with running() as moodle:
        added = run("tenant", "moodle", "school", "--url", moodle.url, "--token-file", "-", env=env, stdin=moodle.token)
        assert added.returncode == 0, added.stderr
        assert moodle.token not in added.stdout + added.stderr
        import asyncio

        from syncengine.config import Settings
        from syncengine.engine import SyncEngine

        async def load() -> None:
            engine = SyncEngine.open(Settings.from_env(env))
            await engine.sync("school", "teachers", [records.teacher("2001")])
            await engine.close()

        asyncio.run(load())
        worker = subprocess.Popen(
            [sys.executable, "-m", "syncengine", "worker"], env={**os.environ, **env}, cwd=ROOT,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for _ in range(200):
                if any(u["idnumber"] == "2001" for u in moodle.users.values()):
                    break
                time.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=20)
        assert worker.returncode == 0, err
        assert "delivered 1, waiting 0, retrying 0, dead 0" in err
        assert moodle.token not in err
