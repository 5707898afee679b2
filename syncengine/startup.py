"""What `serve` does before it listens: make sure the schema is current, and that a tenant exists.

- SQLite (the embedded default) applies the migrations itself, so a fresh checkout just works.
- PostgreSQL is shared by many processes; it is migrated on purpose, by `syncengine db upgrade`,
  and `serve` refuses to start on a schema that is behind.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.engine import make_url

from syncengine import migrate
from syncengine.config import Settings
from syncengine.descriptors import Catalog, Entity
from syncengine.exceptions import Misconfigured
from syncengine.store import database_url, open_database
from syncengine.tenants import ensure_first_tenant, list_tenants

FIRST_TENANT = "default"

#: A value of each field type for the quick-start example (choices take their first choice).
_EXAMPLE_VALUES: dict[str, Any] = {
    "string": "Example",
    "text": "Example",
    "email": "someone@example.com",
    "integer": 1,
    "decimal": 1,
    "boolean": True,
    "date": "2026-01-31",
    "datetime": "2026-01-31T09:00:00+00:00",
    "lookup": "1",
}


class SchemaBehind(Misconfigured):
    """The database's schema is not at the migrations' latest revision; the message says how to
    bring it there."""

    code = "schema_behind"


def dialect_of(settings: Settings) -> str:
    """`sqlite` or `postgresql`, read from the URL: no engine is made for it."""
    return make_url(database_url(settings.database_url)).get_backend_name()


def prepare_schema(settings: Settings) -> None:
    """Upgrade an SQLite database; check that a PostgreSQL one is at the latest migration.

    Runs outside an event loop: Alembic's env.py runs its own.
    """
    if dialect_of(settings) == "sqlite":
        migrate.upgrade(settings)
        return
    head = migrate.head(settings)
    current = asyncio.run(_current(settings))
    if current != head:
        raise SchemaBehind(
            f"the database schema is at {current or 'no revision (an empty database)'}, this version needs "
            f"{head}: run `syncengine db upgrade` with the same SYNCENGINE_DATABASE_URL, then start again"
        )


async def _current(settings: Settings) -> str | None:
    database = open_database(settings.database_url, settings.database_timeouts)
    try:
        return await migrate.current(database)
    finally:
        await database.dispose()


def command_name() -> str:
    """`syncengine` as a user can paste it here, for hints: `syncengine` when the PATH finds this
    very program, else its path (`.venv/bin/syncengine` after `scripts/serve`, run from the
    project folder). Anything else running us (pytest, a server embedding the app) gets `syncengine`.
    """
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if program.name == "__main__.py" and program.parent.name == "syncengine":  # python -m syncengine
        program = Path(sys.executable).with_name("syncengine")
    if program.name != "syncengine" or not program.is_file():
        return "syncengine"
    on_path = shutil.which("syncengine")
    if on_path is not None and os.path.samefile(on_path, program):
        return "syncengine"
    absolute = Path(os.path.abspath(program))  # symlinks kept: the path as the user sees it
    try:
        return shlex.quote(str(absolute.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(absolute))


def port_problem(host: str, port: int) -> str | None:
    """Why `serve` could not listen on host:port (taken, not allowed, no such address), or None.

    Binds as uvicorn will (SO_REUSEADDR), then lets go: checked before anything is printed.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"cannot listen on {host}:{port}: the host is not known ({error.strerror}); check --host"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is taken by another program (a syncengine already serving?): "
                    f"stop it, or choose another port with --port, e.g. --port {port + 1 if port < 65535 else 8000}"
                )
            if error.errno == errno.EACCES:
                return f"port {port} on {host} needs privileges this user lacks: choose a port above 1023 with --port"
            return f"cannot listen on {host}:{port} ({error.strerror}): check --host and --port"
    return None


def tenant_names(settings: Settings) -> list[str]:
    """The names of the tenants of the (migrated) database."""

    async def names() -> list[str]:
        database = open_database(settings.database_url, settings.database_timeouts)
        try:
            return [tenant.name for tenant in await list_tenants(database)]
        finally:
            await database.dispose()

    return asyncio.run(names())


def unknown_tenant_message(name: str, known: list[str]) -> str:
    """The error for a tenant `name` not among `known`, with the commands that help."""
    command = command_name()
    if not known:
        return (
            f"no tenant '{name}': there are no tenants yet; `{command} tenant add {name}` creates it "
            f"(and `{command} serve` creates 'default' on its first start)"
        )
    return (
        f"no tenant '{name}' (known: {', '.join(known)}): `{command} tenant add {name}` creates it, "
        f"`{command} tenant list` shows the tenants"
    )


def lost_key_hint(known: list[str]) -> str:
    """What `serve` says when its tenants exist already: their keys were shown once, how to get new ones."""
    command = command_name()
    example = FIRST_TENANT if FIRST_TENANT in known else known[0]
    return (
        f"tenants: {', '.join(known)} (their API keys were shown when they were made). A lost key: "
        f"`{command} tenant key {example}` issues a new one (the old one stops working); "
        f"more tenants: `{command} tenant add NAME`"
    )


def first_tenant_key(settings: Settings) -> str | None:
    """Create the `default` tenant on a database without tenants; its key, shown once, or None."""

    async def create() -> str | None:
        database = open_database(settings.database_url, settings.database_timeouts)
        try:
            return await ensure_first_tenant(database, FIRST_TENANT)
        finally:
            await database.dispose()

    return asyncio.run(create())


def example_record(entity: Entity) -> dict[str, Any]:
    """A record with every required field of `entity` filled in."""
    record: dict[str, Any] = {"id": "1"}
    for fld in entity.fields:
        if fld.required:
            choices = fld.options.choices
            value = choices[0] if choices else _EXAMPLE_VALUES.get(fld.type.name, "1")
            record[fld.source] = [value] if fld.type.name == "multichoice" else value
    return record


def first_run_message(catalog: Catalog, key: str, host: str, port: int) -> str:
    """The key of the first tenant, and a dry-run `curl` that works as pasted."""
    entity = next(e for e in catalog if not e.requires)
    body = msgspec.json.encode({"data": [example_record(entity)]}).decode()
    address = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    url = f"http://{address}:{port}/v1/sync/{entity.name}?dry_run=true"
    command = command_name()
    return "\n".join(
        [
            f"Created tenant '{FIRST_TENANT}'. Its API key is shown only this once; store it now:",
            "",
            f"    {key}",
            "",
            "Try it (a dry run: nothing is written):",
            "",
            f"    curl -sS -X POST {shlex.quote(url)} \\",
            f"      -H 'Authorization: Bearer {key}' \\",
            "      -H 'Content-Type: application/json' \\",
            f"      -d {shlex.quote(body)}",
            "",
            f"API documentation: http://{address}:{port}/schema",
            f"More tenants: `{command} tenant add NAME`; a new key: `{command} tenant key NAME`.",
            "",
        ]
    )
