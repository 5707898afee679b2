"""The exit statuses of README.md's "Exit statuses", from the real `syncengine` command: one case
of each branch of the engine's exception tree (and click's usage errors), in real processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ENTITIES, FIXTURES
from tests.test_serve import SYNCENGINE, environment

RECORD = str(FIXTURES / "products-record.json")
CLOSED_PORT = "postgresql://postgres@127.0.0.1:1/test"


def syncengine(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYNCENGINE, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def school(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A SQLite file with the tenant `default`."""
    folder = tmp_path_factory.mktemp("exit")
    env = environment(SYNCENGINE_DATABASE_URL=f"sqlite:///{folder / 'exit.db'}", SYNCENGINE_ENTITIES=str(ENTITIES))
    added = syncengine("tenant", "add", "default", env=env)
    assert added.returncode == 0, added.stderr
    return env


@pytest.mark.parametrize(
    ("status", "args", "variables", "stdin", "said"),
    [
        (2, ("dry-run", "programs"), {}, None, "Missing argument 'FILE'"),  # click's usage error
        (2, ("dry-run", "programs", "-"), {}, '{"data": [', "error: -: malformed JSON"),  # BadInput
        (2, ("backfill", "--tenant", "default", "--since", "yesterday"), {}, None,
         "error: --since 'yesterday' is not an ISO date-time"),  # BadInput, said by the command itself
        (2, ("tenant", "moodle", "default", "--url", "ftp://moodle", "--token-file", "-"), {}, "t0ken",
         "error: the Moodle URL 'ftp://moodle' is not an http(s) address"),  # BadInput: sites.SiteError
        (3, ("dry-run", "programs", RECORD, "--tenant", "nobody"), {}, None, "error: no tenant 'nobody'"),  # NotFound
        (4, ("tenant", "add", "default"), {}, None, "error: tenant 'default' already exists"),  # Conflict
        (5, ("tenant", "list"), {"SYNCENGINE_DATABASE_URL": CLOSED_PORT}, None,
         "error: cannot reach the database"),  # Unavailable
        (6, ("tenant", "moodle", "default", "--url", "https://moodle.school.test", "--token-file", "-"),
         {"SYNCENGINE_SECRET_KEY": "short"}, "t0ken",
         "error: SYNCENGINE_SECRET_KEY is not a Fernet key"),  # Misconfigured: vault.SecretKeyError
        (6, ("dry-run", "programs", RECORD), {"SYNCENGINE_ENTITIES": "/nowhere/entities.yaml"}, None,
         "error: the descriptor file has problems"),  # Misconfigured: DescriptorError
    ],
    ids=["usage", "bad-input", "bad-since", "bad-site", "not-found", "conflict", "unavailable", "bad-secret-key", "bad-descriptor"],
)  # fmt: skip
def test_each_branch_exits_with_its_own_status(
    school: dict[str, str], status: int, args: tuple[str, ...], variables: dict[str, str], stdin: str | None, said: str
) -> None:
    result = syncengine(*args, env=school | variables, stdin=stdin)
    assert (result.returncode, result.stdout) == (status, ""), result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr


def test_check_exits_1_when_it_finds_problems(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "version: 1\nentities:\n  x:\n    source: X\n    singular: x\n    fields:\n      a: {type: nope}\n"
    )
    result = syncengine("check", "--entities", str(broken), env=environment())
    assert result.returncode == 1 and result.stderr == f"1 problem in {broken}\n"
