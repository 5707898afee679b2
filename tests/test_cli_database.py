"""Commands against a database that is not there: one line naming the URL (without its password)
and what to check, exit 1, no traceback (item 15 of issue 13)."""

from __future__ import annotations

import pytest

from tests.conftest import ENTITIES, FIXTURES
from tests.test_cli import run

CLOSED_PORT = "postgresql://postgres:hunter2@127.0.0.1:1/test"
SHOWN = "postgresql://postgres:***@127.0.0.1:1/test"


REFUSED = (
    f"error: cannot reach the database at {SHOWN} (ConnectionRefusedError: Connect call failed "
    "('127.0.0.1', 1)): check that SYNCENGINE_DATABASE_URL is right, and that it runs and accepts connections there"
)
NO_FOLDER = (
    "error: cannot open the database at sqlite:////nonexistent-folder/x.db (unable to open database "
    "file): check that SYNCENGINE_DATABASE_URL is right, and that its folder exists and is writable"
)


@pytest.mark.parametrize(
    ("command", "url", "status", "message"),
    [
        (("db", "upgrade"), CLOSED_PORT, 5, REFUSED),
        (("tenant", "list"), CLOSED_PORT, 5, REFUSED),
        (("dry-run", "programs", str(FIXTURES / "products-record.json")), CLOSED_PORT, 5, REFUSED),
        (("serve", "--port", "0"), CLOSED_PORT, 5, REFUSED),
        (("tenant", "list"), "sqlite:////nonexistent-folder/x.db", 6, NO_FOLDER),
    ],
    ids=["db-upgrade", "tenant-list", "dry-run", "serve", "sqlite-no-folder"],
)
def test_a_database_that_is_not_there_is_one_line(
    command: tuple[str, ...], url: str, status: int, message: str
) -> None:
    """5: the database may come back (try again later); 6: a SQLite folder no retry brings."""
    result = run(*command, env={"SYNCENGINE_DATABASE_URL": url, "SYNCENGINE_ENTITIES": str(ENTITIES)})
    assert result.returncode == status
    lines = [line for line in result.stderr.splitlines() if not line.startswith("upgrading ")]
    assert lines == [message]
    assert "hunter2" not in result.stderr + result.stdout
