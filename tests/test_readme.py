"""README.md's shell examples, run as written in a fresh copy of the project.

Every ```sh block runs in README order, in one copy (git's files, with this work tree's .venv
linked in, as if `scripts/serve` had made it there), as in a shell where `.venv` is activated.
A block with a line `# not run by tests/test_readme.py: WHY` is left out (and reported); the
one command marked `# runs until Ctrl-C` (the quick start's `scripts/serve`) is started without
.venv on the PATH, as on a fresh clone, tried with the `curl` it prints and the hint it gives,
and stopped at the end. In a block of `$ command` lines, the lines after each command are its
exact output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
VENV = ROOT / ".venv"
SKIP = re.compile(r"^# not run by tests/test_readme\.py: (.+)$", re.MULTILINE)
LONG_RUNNING = "# runs until Ctrl-C"


@dataclass(frozen=True)
class Example:
    line: int  # of the block's first line in README.md
    text: str

    @property
    def skipped(self) -> str | None:
        match = SKIP.search(self.text)
        return match.group(1) if match else None

    @property
    def runs_until_stopped(self) -> bool:
        return LONG_RUNNING in self.text

    def commands(self) -> list[tuple[str, str | None]]:
        """(command, its exact output, or None when the block shows none)."""
        if not self.text.startswith("$ "):
            return [(self.text, None)]
        pairs: list[tuple[str, list[str]]] = []
        for line in self.text.splitlines():
            if line.startswith("$ "):
                pairs.append((line[2:], []))
            else:
                pairs[-1][1].append(line)
        return [(command, "".join(out + "\n" for out in output)) for command, output in pairs]


def readme_examples() -> list[Example]:
    text = README.read_text()
    return [
        Example(text.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in re.finditer(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    ]


def test_the_readme_marks_one_command_that_runs_until_stopped() -> None:
    examples = readme_examples()
    assert examples, "no ```sh blocks in README.md"
    assert [e.line for e in examples if e.runs_until_stopped and not e.skipped] == [
        next(e.line for e in examples if e.runs_until_stopped)
    ], "exactly one ```sh block may be marked '# runs until Ctrl-C'"


def fresh_copy(target: Path) -> Path:
    """The project as a clone has it: the files git knows (tracked, or new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(VENV)
    return target


def plain_environment() -> dict[str, str]:
    """A new user's shell: no SYNCENGINE_ settings, no virtual environment on the PATH."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(str(VENV)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCENGINE_") and k != "VIRTUAL_ENV"}
    return env | {"PATH": path}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_readme_examples_work_in_a_fresh_copy(tmp_path: Path) -> None:
    stamp = VENV / "syncengine-installed"
    if not stamp.is_file():
        pytest.fail(f"{VENV} was not made by scripts/test or scripts/serve: run the tests with scripts/test")
    project = fresh_copy(tmp_path / "project")
    plain = plain_environment()
    activated = plain | {"VIRTUAL_ENV": str(project / ".venv"), "PATH": f"{project / '.venv' / 'bin'}:{plain['PATH']}"}
    server: subprocess.Popen[bytes] | None = None
    printed = tmp_path / "serve.out"
    left_out: list[str] = []
    try:
        for example in readme_examples():
            where = f"README.md:{example.line}"
            if example.skipped:
                left_out.append(f"{where}: {example.skipped}")
                continue
            if example.runs_until_stopped:
                command = example.text.split(LONG_RUNNING)[0].strip()
                with printed.open("wb") as out:
                    server = subprocess.Popen(
                        ["bash", "-c", f"exec {command} --port {free_port()}"],
                        cwd=project, env=plain, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                try_the_quick_start(server, printed, project, plain, where)
                continue
            for command, output in example.commands():
                result = shell(command, project, activated)
                assert result.returncode == 0, f"{where}: `{command}` failed:\n{result.stderr}"
                if output is not None:
                    assert result.stdout == output, f"{where}: `{command}` printed other than the README shows"
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert server is not None, "README.md has no block marked '# runs until Ctrl-C'"
    print("left out:", *left_out, sep="\n  ")


def try_the_quick_start(
    server: subprocess.Popen[bytes], printed: Path, project: Path, env: dict[str, str], where: str
) -> None:
    """Wait for the quick start's server; paste its curl and its `tenant add` hint as printed."""
    for _ in range(600):  # its first start makes nothing; the package is installed already
        assert server.poll() is None, f"{where}: serve stopped:\n{printed.read_text()}"
        text = printed.read_text()
        port = re.search(r"serving \d+ entities on http://127\.0\.0\.1:(\d+)", text)
        if port:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/v1/health", timeout=5):
                    break
            except OSError:
                pass
        time.sleep(0.1)
    else:
        raise AssertionError(f"{where}: serve did not answer within 60 seconds:\n{printed.read_text()}")
    curl = re.search(r"^ +(curl .*?[^\\])$", text, re.MULTILINE | re.DOTALL)
    assert curl, f"{where}: serve printed no curl:\n{text}"
    answer = shell(curl.group(1), project, env)
    assert answer.returncode == 0, answer.stderr
    reply = json.loads(answer.stdout)
    assert (reply["status"], reply["dry_run"], reply["summary"]["NEW"]) == ("success", True, 1), reply
    hint = re.search(r"More tenants: `(.+) tenant add NAME`", text)
    assert hint, f"{where}: serve printed no hint to add a tenant:\n{text}"
    added = shell(f"{hint.group(1)} tenant add pasted", project, env)  # as pasted, .venv not activated
    assert added.returncode == 0, f"{where}: the hint `{hint.group(1)} tenant add NAME` does not run: {added.stderr}"
