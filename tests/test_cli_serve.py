"""`syncengine serve` before it listens: a taken port is said first, and later starts say how to
replace a lost key (items 10 and 16 of issue 14). Real processes, real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import ENTITIES
from tests.test_cli import ACTIVATED, run
from tests.test_serve import SYNCENGINE, free_port


def test_a_taken_port_is_said_before_anything_is_done(tmp_path: Path) -> None:
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'busy.db'}", "SYNCENGINE_ENTITIES": str(ENTITIES)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), env=env)
    assert (result.returncode, result.stdout) == (2, "")  # no key shown for a server that cannot start
    assert result.stderr == (
        f"error: port {port} on 127.0.0.1 is taken by another program (a syncengine already serving?): "
        f"stop it, or choose another port with --port, e.g. --port {port + 1}\n"
    )
    assert not (tmp_path / "busy.db").exists()  # nothing was done


def test_a_second_start_says_how_to_replace_a_lost_key(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SYNCENGINE_")},
        **ACTIVATED,
        "SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'again.db'}",
        "SYNCENGINE_ENTITIES": str(ENTITIES),
    }
    assert run("tenant", "add", "school", env=env).returncode == 0
    port = free_port()
    log = tmp_path / "serve.err"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [SYNCENGINE, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        for _ in range(300):
            assert process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5):
                    break
            except OSError:
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert log.read_text().splitlines()[0] == (
        "tenants: school (their API keys were shown when they were made). A lost key: "
        "`syncengine tenant key school` issues a new one (the old one stops working); "
        "more tenants: `syncengine tenant add NAME`"
    )
