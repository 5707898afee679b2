"""Make sure the PostgreSQL database of the tests exists (scripts/test runs this before pytest).

Creates it if the server answers and it is missing; otherwise prints one line that says what to
do and exits 1, instead of every PostgreSQL test failing with a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL


async def ensure_database(url: str) -> str | None:
    """None when the database of `url` exists (or was created); else what went wrong."""
    target = make_url(url)
    shown = target.render_as_string(hide_password=True)
    name = target.database or "postgres"
    options = {"host": target.host, "port": target.port, "user": target.username, "password": target.password}
    try:
        admin = await asyncpg.connect(database="postgres", timeout=10, **options)
    except Exception as error:
        return (
            f"cannot reach PostgreSQL for the tests at {shown} ({type(error).__name__}: {error}): start it, "
            "or set SYNCENGINE_TEST_POSTGRES_URL to a server that runs"
        )
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return None
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
        print(f"created the tests' database {name!r} on {shown}", file=sys.stderr)
        return None
    except Exception as error:
        return (
            f"the tests' database {name!r} does not exist on {shown} and could not be created "
            f"({type(error).__name__}: {error}): create it, or set SYNCENGINE_TEST_POSTGRES_URL to one that exists"
        )
    finally:
        await admin.close()


if __name__ == "__main__":
    problem = asyncio.run(ensure_database(POSTGRES_URL))
    if problem is not None:
        sys.exit(f"scripts/test: {problem}")
