"""`syncengine tenant add|key|list`: a key is printed once, stored only as its hash."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from syncengine.cli import main
from syncengine.store import open_database
from syncengine.tenants import KeyCache, TenantError, add_tenant, check_name, hash_key, rotate_key
from tests.conftest import ENTITIES, Databases


def run(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main, ["tenant", *args, "--entities", str(ENTITIES)], env={"SYNCENGINE_DATABASE_URL": url}
    )
    return result.exit_code, result.stdout, result.stderr


async def stored_hashes(url: str) -> list[str]:
    database = open_database(url)
    async with database.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT key_hash FROM syncengine_tenants ORDER BY name"))).scalars().all()
    await database.dispose()
    return list(rows)


def test_add_key_list_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tenants.db'}"  # a fresh file: the command migrates it
    code, key, message = run(url, "add", "school")
    assert code == 0, message
    key = key.strip()
    assert key.startswith("sk_") and len(key) > 40
    assert message == "created tenant 'school'; its API key (shown only this once):\n"
    assert asyncio.run(stored_hashes(url)) == [hashlib.sha256(key.encode()).hexdigest()]

    code, new_key, message = run(url, "key", "school")
    assert code == 0 and new_key.strip() != key
    assert asyncio.run(tenant_of(url, key)) is None
    assert asyncio.run(tenant_of(url, new_key.strip())) == "school"

    run(url, "add", "annex")
    code, listing, _ = run(url, "list")
    lines = listing.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "KEY", "ISSUED"]
    assert [line.split()[0] for line in lines[1:]] == ["annex", "school"]
    assert key not in listing and new_key.strip() not in listing


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (
            ("add", "school"),
            4,
            "error: tenant 'school' already exists; `syncengine tenant key school` gives it a new key\n",
        ),
        (("key", "nobody"), 3, "error: no tenant 'nobody'; `syncengine tenant list` shows the tenants\n"),
        (
            ("add", "two words"),
            2,
            "error: tenant name 'two words' must be 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$)\n",
        ),
    ],
)
def test_tenant_command_errors(tmp_path: Path, args: tuple[str, ...], status: int, message: str) -> None:
    url = f"sqlite:///{tmp_path / 'tenants.db'}"
    run(url, "add", "school")
    code, out, err = run(url, *args)
    assert (code, out, err) == (status, "", message)


@pytest.mark.postgres
def test_postgres_behind_schema_is_refused(databases: Databases) -> None:
    url = asyncio.run(databases.fresh_url("postgresql"))
    code, out, err = run(url, "list")
    assert code == 6 and out == ""
    assert "run `syncengine db upgrade`" in err


async def tenant_of(url: str, key: str) -> str | None:
    database = open_database(url)
    tenant = await KeyCache(database).authenticate(key)
    await database.dispose()
    return None if tenant is None else tenant.name


async def test_keys_are_hashed_and_unique_on_both_databases(
    databases: Databases, dialect: str, catalog: object
) -> None:
    database = await databases.create(dialect, catalog)  # type: ignore[arg-type]
    first = await add_tenant(database, "a")
    second = await add_tenant(database, "b")
    assert first != second
    rotated = await rotate_key(database, "a")
    assert (await KeyCache(database).authenticate(rotated)).name == "a"  # type: ignore[union-attr]
    assert await KeyCache(database).authenticate(first) is None
    assert await KeyCache(database).authenticate("") is None
    with pytest.raises(TenantError):
        check_name("x" * 65)


async def test_key_cache_trusts_a_key_briefly_and_forgets_it_on_rotation(
    databases: Databases, dialect: str, catalog: object
) -> None:
    database = await databases.create(dialect, catalog)  # type: ignore[arg-type]
    key = await add_tenant(database, "a")
    keys = KeyCache(database, ttl=0.3)
    assert (await keys.authenticate(key)).name == "a"  # type: ignore[union-attr]
    assert await keys.authenticate("sk_unknown") is None

    # Another process replaces the key: this one trusts the old key until its entry expires.
    async with database.begin() as conn:
        await conn.execute(sa.text("UPDATE syncengine_tenants SET key_hash = :h"), {"h": hash_key("sk_elsewhere")})
    assert (await keys.authenticate(key)).name == "a"  # type: ignore[union-attr]
    await asyncio.sleep(0.35)
    assert await keys.authenticate(key) is None
    assert (await keys.authenticate("sk_elsewhere")).name == "a"  # type: ignore[union-attr]

    # A rotation in this process takes effect at once.
    rotated = await rotate_key(database, "a")
    assert await keys.authenticate("sk_elsewhere") is None
    assert (await keys.authenticate(rotated)).name == "a"  # type: ignore[union-attr]


async def test_key_cache_asks_once_for_many_concurrent_requests(
    databases: Databases, dialect: str, catalog: object
) -> None:
    database = await databases.create(dialect, catalog)  # type: ignore[arg-type]
    key = await add_tenant(database, "a")
    asked: list[str] = []
    sa.event.listen(
        database.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: asked.append(statement) if "syncengine_tenants" in statement else None,
    )
    keys = KeyCache(database)
    tenants = await asyncio.gather(*(keys.authenticate(key) for _ in range(20)))
    assert {tenant.name for tenant in tenants if tenant is not None} == {"a"} and None not in tenants
    assert len(asked) == 1
    # Unknown keys are asked about once per burst too, and are not remembered.
    assert await asyncio.gather(*(keys.authenticate("sk_unknown") for _ in range(5))) == [None] * 5
    assert len(asked) == 2
    assert await keys.authenticate("sk_unknown") is None
    assert len(asked) == 3


async def test_a_caller_giving_up_does_not_fail_the_others(databases: Databases, dialect: str, catalog: object) -> None:
    database = await databases.create(dialect, catalog)  # type: ignore[arg-type]
    key = await add_tenant(database, "a")
    keys = KeyCache(database)
    first = asyncio.ensure_future(keys.authenticate(key))
    others = [asyncio.ensure_future(keys.authenticate(key)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    assert [tenant.name for tenant in await asyncio.gather(*others)] == ["a"] * 3  # type: ignore[union-attr]
