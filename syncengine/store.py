"""The store: opening databases, and the few statements whose SQL differs by dialect.

Everything SQLite- or PostgreSQL-specific lives here. The pipeline asks a `Store` for three
set-based operations (lock ids, fetch rows by Zoho id, write a batch's rows and its outbox rows)
and never learns which database it talks to.

- PostgreSQL: one statement writes a batch, `WITH written AS (INSERT ... SELECT FROM unnest(...)
  ON CONFLICT ...) INSERT INTO outbox ... SELECT FROM unnest(...)`, arrays bound as parameters.
  A batch first takes transaction-scoped advisory locks, in sorted order, on the buckets its ids
  hash to (at most `LOCK_BUCKETS` per table and tenant, so a large batch cannot exhaust the
  server's lock table), so that concurrent batches touching the same records queue (and never
  deadlock) while small batches on other records mostly run in parallel; every read after that
  sees the latest committed state.
- SQLite: `executemany` of one upsert; write transactions start with `BEGIN IMMEDIATE` so that
  two writers queue instead of failing, and the file runs in WAL mode.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any, Protocol

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

#: Advisory locks per table and tenant: PostgreSQL's lock table holds 64 per connection by default.
LOCK_BUCKETS = 32
#: The unique key of every entity table.
NATURAL_KEY = ("tenant_id", "zoho_id")


class Store(Protocol):
    async def lock(self, conn: AsyncConnection, table: sa.Table, tenant: str, zoho_ids: Iterable[str]) -> None:
        """Serialise writers of the same records until the transaction ends."""

    async def fetch(
        self, conn: AsyncConnection, columns: Sequence[sa.Column[Any]], tenant: str, zoho_ids: Iterable[str]
    ) -> Sequence[sa.Row[Any]]:
        """Rows of `columns`' table for one tenant whose zoho_id is among `zoho_ids`."""

    async def resolve(
        self, conn: AsyncConnection, wanted: dict[str, tuple[sa.Table, set[str]]], tenant: str
    ) -> dict[str, dict[str, int]]:
        """Local ids of live rows, for each of several tables at once: {name: {zoho_id: id}}."""

    async def write(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: list[dict[str, Any]],
        queue: sa.Table,
        queued: list[dict[str, Any]],
    ) -> None:
        """Upsert `rows` into `table` (every given column but `created_at` is updated where the
        natural key exists) and insert `queued` into `queue`."""


def database_url(url: str) -> str:
    """Accept the URLs people write and name the async driver we use.

    >>> database_url("postgresql://postgres@127.0.0.1/test")
    'postgresql+asyncpg://postgres@127.0.0.1/test'
    """
    for plain, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def open_database(url: str, **options: Any) -> AsyncEngine:
    """An engine for `url`, set up for how syncengine uses its dialect."""
    url = database_url(url)
    if url.startswith("postgresql+asyncpg://"):
        options = _plan_each_statement(options)
    engine = create_async_engine(url, **options)
    if engine.dialect.name == "sqlite":
        _serialise_sqlite_writers(engine)
    return engine


def _plan_each_statement(options: dict[str, Any]) -> dict[str, Any]:
    """Have PostgreSQL plan every execution of a prepared statement for its own parameters.

    asyncpg prepares each statement once per connection; after five runs PostgreSQL may switch
    to a generic plan and keep it. A generic plan made while a table was small scans the table
    for `zoho_id = ANY(...)`, and keeps doing so as it grows to millions of rows (5x slower
    batches at 20,000 rows). Planning these statements costs far less than one bad plan.
    A caller's own `plan_cache_mode` wins.
    """
    connect_args = dict(options.get("connect_args") or {})
    server_settings = {"plan_cache_mode": "force_custom_plan"} | dict(connect_args.get("server_settings") or {})
    return options | {"connect_args": connect_args | {"server_settings": server_settings}}


def store_for(engine: AsyncEngine | AsyncConnection) -> Store:
    name = engine.dialect.name
    if name == "postgresql":
        return PostgresStore()
    if name == "sqlite":
        return SqliteStore()
    raise ValueError(f"unsupported database '{name}': use a postgresql:// or sqlite:/// URL")


def _serialise_sqlite_writers(engine: AsyncEngine) -> None:
    """pysqlite's own transaction handling defers locks; take the write lock at BEGIN instead."""

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class SqliteStore:
    async def resolve(
        self, conn: AsyncConnection, wanted: dict[str, tuple[sa.Table, set[str]]], tenant: str
    ) -> dict[str, dict[str, int]]:
        return await _resolve(conn, wanted, tenant, _sqlite_resolve_statement, lambda ids: _json_text(sorted(ids)))

    async def lock(self, conn: AsyncConnection, table: sa.Table, tenant: str, zoho_ids: Iterable[str]) -> None:
        """Nothing to do: BEGIN IMMEDIATE already gave this transaction the only write lock."""

    async def fetch(
        self, conn: AsyncConnection, columns: Sequence[sa.Column[Any]], tenant: str, zoho_ids: Iterable[str]
    ) -> Sequence[sa.Row[Any]]:
        table = columns[0].table
        ids = sa.func.json_each(msgspec.json.encode(list(zoho_ids)).decode()).table_valued("value")
        query = sa.select(*columns).where(table.c.tenant_id == tenant, table.c.zoho_id.in_(sa.select(ids.c.value)))
        return (await conn.execute(query)).all()

    async def write(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: list[dict[str, Any]],
        queue: sa.Table,
        queued: list[dict[str, Any]],
    ) -> None:
        if rows:
            await conn.execute(_sqlite_upsert(table, tuple(rows[0])), rows)
        if queued:
            await conn.execute(queue.insert(), queued)


@cache
def _sqlite_upsert(table: sa.Table, columns: tuple[str, ...]) -> Any:
    statement = sqlite_insert(table)
    updates = {name: statement.excluded[name] for name in columns if name not in (*NATURAL_KEY, "created_at")}
    return statement.on_conflict_do_update(index_elements=list(NATURAL_KEY), set_=updates)


class PostgresStore:
    async def resolve(
        self, conn: AsyncConnection, wanted: dict[str, tuple[sa.Table, set[str]]], tenant: str
    ) -> dict[str, dict[str, int]]:
        return await _resolve(conn, wanted, tenant, _postgres_resolve_statement, list)

    async def lock(self, conn: AsyncConnection, table: sa.Table, tenant: str, zoho_ids: Iterable[str]) -> None:
        buckets = {zlib.crc32(zoho_id.encode()) % LOCK_BUCKETS for zoho_id in zoho_ids}
        keys = sorted(f"{table.name}:{tenant}:{bucket}" for bucket in buckets)
        if keys:
            await conn.execute(_ADVISORY_LOCKS, {"keys": keys})

    async def fetch(
        self, conn: AsyncConnection, columns: Sequence[sa.Column[Any]], tenant: str, zoho_ids: Iterable[str]
    ) -> Sequence[sa.Row[Any]]:
        query = _fetch_statement(tuple(columns))
        rows: Sequence[sa.Row[Any]] = (await conn.execute(query, {"tenant": tenant, "ids": list(zoho_ids)})).all()
        return rows

    async def write(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: list[dict[str, Any]],
        queue: sa.Table,
        queued: list[dict[str, Any]],
    ) -> None:
        """One statement: `WITH written AS (INSERT ... ON CONFLICT ...) INSERT INTO queue ...`."""
        parts, params = [], {}
        for target, items, prefix, upsert in ((table, rows, "p", True), (queue, queued, "q", False)):
            if items:
                sql, values = _unnest_insert(target, items, prefix, upsert=upsert)
                parts.append(sql)
                params.update(values)
        if len(parts) == 2:
            parts = [f"WITH written AS ({parts[0]}) {parts[1]}"]
        if parts:
            await conn.execute(sa.text(parts[0]), params)


def _unnest_insert(
    table: sa.Table, rows: list[dict[str, Any]], prefix: str, *, upsert: bool
) -> tuple[str, dict[str, Any]]:
    """The SQL and the parameters that insert (or upsert) `rows` from arrays."""
    names = tuple(rows[0])
    params: dict[str, Any] = {}
    scalars = []
    for i, name in enumerate(names):
        values = [row[name] for row in rows]
        if isinstance(table.c[name].type, sa.JSON):
            values = [None if value is None else _json_text(value) for value in values]
        # A column with one value for the whole batch (tenant, timestamps, ...) is sent once.
        scalar = len(values) > 1 and values.count(values[0]) == len(values)
        scalars.append(scalar)
        params[f"{prefix}{i}"] = values[0] if scalar else values
    if all(scalars):
        scalars[0], params[f"{prefix}0"] = False, [params[f"{prefix}0"]] * len(rows)
    return _unnest_sql(table, names, upsert, tuple(scalars), prefix), params


async def _resolve(
    conn: AsyncConnection,
    wanted: dict[str, tuple[sa.Table, set[str]]],
    tenant: str,
    statement: Callable[[tuple[sa.Table, ...]], sa.CompoundSelect[Any]],
    encode_ids: Callable[[set[str]], Any],
) -> dict[str, dict[str, int]]:
    """One `UNION ALL` (part number, zoho_id, id) over the tables that have ids to resolve."""
    resolved: dict[str, dict[str, int]] = {name: {} for name in wanted}
    present = [(name, table, ids) for name, (table, ids) in wanted.items() if ids]
    if present:
        params = {"tenant": tenant} | {f"ids{i}": encode_ids(ids) for i, (_, _, ids) in enumerate(present)}
        for index, zoho_id, local_id in await conn.execute(statement(tuple(t for _, t, _ in present)), params):
            resolved[present[index][0]][zoho_id] = local_id
    return resolved


@cache
def _sqlite_resolve_statement(tables: tuple[sa.Table, ...]) -> sa.CompoundSelect[Any]:
    tenant = sa.bindparam("tenant", type_=sa.String)
    parts = []
    for index, table in enumerate(tables):
        ids = sa.select(sa.func.json_each(sa.bindparam(f"ids{index}", type_=sa.String)).table_valued("value").c.value)
        parts.append(
            sa.select(sa.literal(index).label("part"), table.c.zoho_id, table.c.id).where(
                table.c.tenant_id == tenant, table.c.deleted_at.is_(None), table.c.zoho_id.in_(ids)
            )
        )
    return sa.union_all(*parts)


@cache
def _postgres_resolve_statement(tables: tuple[sa.Table, ...]) -> sa.CompoundSelect[Any]:
    """One unique-index probe per id (LATERAL ... LIMIT 1), as in `_fetch_statement`: never a scan."""
    tenant = sa.bindparam("tenant", type_=sa.String)
    parts = []
    for index, table in enumerate(tables):
        ids = sa.bindparam(f"ids{index}", type_=postgresql.ARRAY(sa.String))
        wanted = sa.func.unnest(ids).table_valued("zoho_id").render_derived(name=f"wanted{index}")
        row = (
            sa.select(table.c.zoho_id, table.c.id)
            .where(table.c.tenant_id == tenant, table.c.zoho_id == wanted.c.zoho_id, table.c.deleted_at.is_(None))
            .limit(1)
            .lateral(f"found{index}")
        )
        parts.append(
            sa.select(sa.literal(index).label("part"), row.c.zoho_id, row.c.id).select_from(wanted).join(row, sa.true())
        )
    return sa.union_all(*parts)


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


_ADVISORY_LOCKS = sa.text(
    "SELECT count(pg_advisory_xact_lock(hashtextextended(key, 0))) "
    "FROM (SELECT key FROM unnest(CAST(:keys AS TEXT[])) AS key ORDER BY key) AS ordered"
)


@cache
def _fetch_statement(columns: tuple[sa.Column[Any], ...]) -> sa.Select[Any]:
    """`columns` of the rows of tenant `:tenant` whose zoho_id is in `:ids`; built once per column set.

    One unique-index lookup per id (a LATERAL ... LIMIT 1 cannot be flattened into a join):
    `zoho_id = ANY(:ids)` let the planner scan the tenant's whole index range when the
    statistics were stale, as during a first large load (22 ms a batch at 100,000 rows).
    """
    table = columns[0].table
    ids = sa.func.unnest(sa.bindparam("ids", type_=postgresql.ARRAY(sa.String)))
    wanted = ids.table_valued("zoho_id").render_derived(name="wanted")
    row = (
        sa.select(*columns)
        .where(table.c.tenant_id == sa.bindparam("tenant", type_=sa.String))
        .where(table.c.zoho_id == wanted.c.zoho_id)
        .limit(1)
        .lateral("stored")
    )
    return sa.select(*row.c).select_from(wanted).join(row, sa.true())


@cache
def _unnest_sql(table: sa.Table, names: tuple[str, ...], upsert: bool, scalars: tuple[bool, ...], prefix: str) -> str:
    """`INSERT INTO t (a, b, c) SELECT u.p0, u.p1, CAST(:p2 AS T) FROM unnest(CAST(:p0 AS T[]), ...)`.

    One statement a batch: a column is an array parameter, or (where `scalars` says so) one
    value for every row. JSON values travel as text and are cast back, since asyncpg has no
    codec for json[].
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    casts, selects, aliases = [], [], []
    for i, (name, scalar) in enumerate(zip(names, scalars, strict=True)):
        column_type = table.c[name].type
        sql_type = column_type.compile(dialect=dialect)
        is_json = isinstance(column_type, sa.JSON)
        if scalar:
            param = f":{prefix}{i}"
            selects.append(f"CAST(CAST({param} AS TEXT) AS {sql_type})" if is_json else f"CAST({param} AS {sql_type})")
            continue
        casts.append(f"CAST(:{prefix}{i} AS {'TEXT' if is_json else sql_type}[])")
        selects.append(f"CAST(u.p{i} AS {sql_type})" if is_json else f"u.p{i}")
        aliases.append(f"p{i}")
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"SELECT {', '.join(selects)} FROM unnest({', '.join(casts)}) AS u({', '.join(aliases)})"
    )
    if upsert:
        updates = [n for n in names if n not in (*NATURAL_KEY, "created_at")]
        sql += f" ON CONFLICT ({', '.join(NATURAL_KEY)}) DO UPDATE SET " + ", ".join(
            f"{quote(n)} = EXCLUDED.{quote(n)}" for n in updates
        )
    return sql
