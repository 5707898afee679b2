"""The store: opening databases, and the few statements whose SQL differs by dialect.

Everything SQLite- or PostgreSQL-specific lives here. The pipeline asks a `Store` for a
transaction and three set-based operations in it (fetch rows by Zoho id, resolve lookup ids,
write row sets, each saying whether its rows are new or fetched: `Rows`), and whether a failed
transaction is to be run again (a `LostRace`, see `translate`); it never learns which database it talks to.

- PostgreSQL: the statements run on the pooled connection's asyncpg connection, in a
  transaction of asyncpg's, each prepared once per connection (asyncpg's statement cache).
  SQLAlchemy's execute path cost as much CPU a statement as a small batch's own work (bench/README.md).
  One statement writes a batch (or a part of one), `WITH w0 AS (INSERT ... SELECT FROM
  unnest(...)), w1 AS (UPDATE ... FROM unnest(...)) INSERT INTO outbox ... SELECT FROM
  unnest(...)`, arrays bound as parameters.
  Writers do not lock what they read; they check it when they write. The fetch returns each
  row's version (its `xmin`, which every update changes), and a row is updated only where it
  is still at the version fetched; rows the fetch did not find are inserted, and the unique key
  refuses one that another transaction inserted meanwhile. Either way the write fails
  (`RowsChanged`, a unique violation, or, when two transactions wait on each other's rows, a
  deadlock that PostgreSQL ends), translated to `LostRace`: the transaction is run again. So
  batches of other records never wait for each other, an unchanged batch writes nothing (not
  even a COMMIT), and what a batch decided on a row still holds when it writes it.
  A transaction run again must not lose again (under heavy contention, batches of hundreds of
  shared records, it could, time after time): every writing transaction of a table and tenant
  holds one advisory lock on them in shared mode (taken with its BEGIN), and one run again
  (`fetch`'s `hold`) takes it exclusively before it reads, so it waits for the writers in
  flight to end, then runs alone. (Processes of an older syncengine, which took other advisory
  locks, must not write beside this one: README.md says to stop them first.)
- SQLite: `executemany` of an insert (rows not found) and of an upsert; the pipeline's write
  transactions start with `BEGIN IMMEDIATE` so that two writers queue instead of failing, and
  the file runs in WAL mode, so that reads (a plain, deferred BEGIN) never wait for a writer.

Every wait on the database has a bound (`Timeouts`): connecting, a statement, a lock, a pooled
connection. `unavailable` tells the errors that mean the database cannot be reached or did not
answer in time from the others, for the HTTP and command-line edges to say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import functools
import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints and has no stubs
import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from syncengine.exceptions import (
    DatabaseBusy,
    DatabaseNotOpened,
    DatabaseUnavailable,
    LostRace,
    SchemaMissing,
    SyncEngineError,
    UnstorableValue,
)
from syncengine.tables import IDEMPOTENCY_KEYS, engine_table

#: The unique key of every entity table.
NATURAL_KEY = ("tenant_id", "zoho_id")
#: PostgreSQL's SQLSTATEs of the races a transaction is run again after (`LostRace`): a unique
#: violation and a detected deadlock.
RACES = frozenset({"23505", "40P01"})


class RowsChanged(LostRace):
    """Rows a transaction fetched were changed by another before it wrote them."""

    code = "lost_race"


#: What a store's `transaction` yields, and its other statements take: the store's own handle.
Conn = TypeVar("Conn")


class Store(Protocol[Conn]):
    """A dialect's statements; `conn` is what `transaction` yields, the store's own handle."""

    def transaction(
        self, database: AsyncEngine, *, rollback: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Conn]:
        """A connection in a transaction, committed at the end (rolled back with `rollback`). A
        database failure in it is raised as the engine's own exception (`translate`): a
        `LostRace` means the transaction is to be run again as it is."""

    async def fetch(
        self, conn: Conn, columns: Sequence[sa.Column[Any]], tenant: str, zoho_ids: Iterable[str], *, hold: bool = False
    ) -> Sequence[Sequence[Any]]:
        """Rows of `columns`' table for one tenant whose zoho_id is among `zoho_ids`, each with
        one value more at its end: the row's version, which `write` wants back (`Rows.versions`).
        With `hold`, no other writer of the table and tenant runs from then until the transaction
        ends, so that nothing changes what it read (for a transaction run again after it lost a
        race)."""

    async def resolve(
        self, conn: Conn, wanted: dict[str, tuple[sa.Table, set[str]]], tenant: str
    ) -> dict[str, dict[str, int]]:
        """Local ids of live rows, for each of several tables at once: {name: {zoho_id: id}}."""

    async def write(self, conn: Conn, row_sets: Sequence[Rows]) -> None:
        """Write each row set, in order, as its `Write` says; empty ones are skipped. A write
        that finds a row changed since it was fetched fails (`RowsChanged`, a `LostRace`)."""

    async def write_answers(self, conn: Conn, answers: Sequence[StoredAnswer]) -> int:
        """Store each answer in its idempotency key's claim row (by id, if still unanswered), in
        the transaction of the batch it answers; how many rows were."""


class Write(enum.Enum):
    """How a row set is written (`Store.write`)."""

    #: Rows the transaction's fetch did not find: inserted (the unique key refuses a row that
    #: another transaction inserted meanwhile).
    INSERT = "insert"
    #: Rows the transaction fetched: every given column but `created_at` updated, where the
    #: natural key is, if the row is still at the version fetched (`Rows.versions`).
    UPDATE = "update"


@dataclass(frozen=True, slots=True)
class Rows:
    """A row set: how it is written, its table and column names, and one tuple of values per
    row in that order; for `Write.UPDATE`, the version each row had when fetched (`Store.fetch`).

        Rows(Write.INSERT, outbox, ("tenant_id", "entity", ...), [(tenant, entity.name, ...)])
    """

    write: Write
    table: sa.Table
    names: tuple[str, ...]
    values: list[tuple[Any, ...]]
    versions: list[Any] | None = None


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


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each wait on the database may last (None: no bound of ours).

    - `connect`: opening a connection (asyncpg's `timeout`), and waiting for one of the pool's;
    - `statement`: one statement (PostgreSQL's `statement_timeout`; the client gives up a second
      later, asyncpg's `command_timeout`, should the server not answer at all);
    - `lock`: waiting for a lock (PostgreSQL's `lock_timeout`, SQLite's `busy_timeout`).
    """

    connect: float | None = 5.0
    statement: float | None = 30.0
    lock: float | None = 10.0


#: SQLite's `busy_timeout` where no `Timeouts` are given, as before they were.
SQLITE_BUSY_SECONDS = 30.0


def open_database(url: str, timeouts: Timeouts | None = None, **options: Any) -> AsyncEngine:
    """An engine for `url`, set up for how syncengine uses its dialect, with `timeouts` (see
    `Timeouts`). Statement parameters never appear in SQLAlchemy's errors or logs: they hold
    record contents and key hashes."""
    url = database_url(url)
    options["hide_parameters"] = True
    if url.startswith("postgresql+asyncpg://"):
        options = _plan_each_statement(options)
        if timeouts is not None:
            options = _bound_postgres_waits(options, timeouts)
    elif timeouts is not None and timeouts.connect is not None:
        options.setdefault("pool_timeout", timeouts.connect)
    engine = create_async_engine(url, **options)
    if engine.dialect.name == "sqlite":
        lock = SQLITE_BUSY_SECONDS if timeouts is None or timeouts.lock is None else timeouts.lock
        _refuse_missing_folder(engine)
        _serialise_sqlite_writers(engine, lock)
    else:
        _skip_closed_connections(engine)
    return engine


def _bound_postgres_waits(options: dict[str, Any], timeouts: Timeouts) -> dict[str, Any]:
    """asyncpg's connect and command timeouts, the server's statement and lock timeouts, and
    the pool's wait for a connection; a caller's own settings win."""
    connect_args = dict(options.get("connect_args") or {})
    server: dict[str, str] = {}
    if timeouts.statement is not None:
        server["statement_timeout"] = str(int(timeouts.statement * 1000))
        connect_args.setdefault("command_timeout", timeouts.statement + 1)
    if timeouts.lock is not None:
        server["lock_timeout"] = str(int(timeouts.lock * 1000))
    if timeouts.connect is not None:
        connect_args.setdefault("timeout", timeouts.connect)
        options = {"pool_timeout": timeouts.connect} | options
    connect_args["server_settings"] = server | dict(connect_args.get("server_settings") or {})
    return options | {"connect_args": connect_args}


def _skip_closed_connections(engine: AsyncEngine) -> None:
    """A pooled connection whose server went away is not lent out: the pool opens another.

    A free check (the socket is closed), not a round trip like `pool_pre_ping`: after the
    database restarts, requests get new connections instead of one failure per pooled one.
    """

    @sa.event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and driver.is_closed():
            raise sa.exc.DisconnectionError("the server closed this pooled connection")


def translate(error: BaseException) -> SyncEngineError | None:
    """The engine's own exception for what a driver (asyncpg, aiosqlite) or SQLAlchemy raised
    running a statement, or None when `error` is no database failure we know. The messages hold
    no statement, parameter, record value or password.

    >>> translate(ConnectionRefusedError(111, "Connection refused"))
    DatabaseUnavailable('the database cannot be reached: ConnectionRefusedError: Connection refused')
    """
    if isinstance(error, SyncEngineError):
        return error
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # SQLAlchemy's DBAPIError wraps the driver's
        seen.add(id(current))
        found = _trouble_of(current) or _refusal_of(current)
        if found is not None:
            return found
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def _lost(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached or stopped answering."""
    return isinstance(translate(error), DatabaseUnavailable)


#: SQLSTATEs of a database that is there but refused to wait longer, and of one going away.
_BUSY_STATES = {"55P03": "lock wait past lock_timeout", "57014": "statement ran past statement_timeout",
                "53300": "too many connections"}  # fmt: skip
_GONE_STATES = ("08", "57P")
#: PostgreSQL's SQLSTATE of a statement naming a table that is not there (SQLite has only its text).
_NO_TABLE_STATE = "42P01"


def _trouble_of(error: BaseException) -> DatabaseUnavailable | DatabaseBusy | None:
    """A database that cannot be reached or did not answer, or that made a wait run past its budget."""
    if isinstance(error, sa.exc.TimeoutError):  # the pool: no connection came free in time
        return DatabaseBusy("every pooled database connection stayed in use past the wait for one")
    if type(error).__name__ == "OperationalError" and "database is locked" in str(error):  # sqlite3's
        return DatabaseBusy("the SQLite file stayed locked by another writer past busy_timeout")
    if type(error).__name__ == "OperationalError" and "unable to open database file" in str(error):
        return DatabaseNotOpened("unable to open database file")
    sqlstate = str(getattr(error, "sqlstate", None) or "")
    if sqlstate in _BUSY_STATES:
        return DatabaseBusy(_BUSY_STATES[sqlstate])
    if sqlstate.startswith(_GONE_STATES) or isinstance(
        error, (asyncpg.PostgresConnectionError, asyncpg.ConnectionDoesNotExistError)
    ):
        return DatabaseUnavailable(f"{type(error).__name__}: the connection to the database was lost")
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return DatabaseUnavailable("the database did not answer in time")
    if isinstance(error, asyncpg.InterfaceError) and "closed" in str(error):
        return DatabaseUnavailable(f"{type(error).__name__}: the connection to the database was lost")
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return DatabaseUnavailable("the connection to the database was lost")
    if isinstance(error, OSError):  # refused, reset, no route, unknown host...
        return DatabaseUnavailable(f"{type(error).__name__}: {error.strerror or error}")
    return None


def _refusal_of(error: BaseException) -> SyncEngineError | None:
    """A statement the database refused: a race lost to another writer (PostgreSQL: a unique
    violation, a deadlock), a table that is not there, a value it cannot store."""
    sqlstate = str(getattr(error, "sqlstate", None) or "")
    if sqlstate in RACES:
        return LostRace(f"another transaction wrote these rows first ({type(error).__name__})")
    text = str(error)
    if sqlstate == _NO_TABLE_STATE or (type(error).__name__ == "OperationalError" and "no such table" in text):
        return SchemaMissing("the database has no table for this statement: run `syncengine db upgrade` first")
    if (
        isinstance(error, (OverflowError, UnicodeEncodeError, asyncpg.DataError, sqlite3.DataError))
        or sqlstate.startswith("22")
        or (isinstance(error, asyncpg.InterfaceError) and "invalid input for query argument" in text)
    ):
        reason = re.sub(r": \[.*\] \(", " (", text.splitlines()[0] if text else type(error).__name__)
        return UnstorableValue(reason)  # without the values (they are record contents)
    return None


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


def store_for(engine: AsyncEngine | AsyncConnection) -> Store[Any]:
    name = engine.dialect.name
    if name == "postgresql":
        return PostgresStore()
    if name == "sqlite":
        return SqliteStore()
    raise ValueError(f"unsupported database '{name}': use a postgresql:// or sqlite:/// URL")


#: The execution option of a connection whose transactions write: SQLite takes the write lock at
#: their BEGIN (`_serialise_sqlite_writers`).
WRITES = "syncengine_writes"


def _refuse_missing_folder(engine: AsyncEngine) -> None:
    """A database file in a folder that does not exist fails before aiosqlite starts a thread for
    it: on its own failed connect, aiosqlite leaves its thread to stop after the event loop may
    be gone, which prints a traceback beside the one line that says what to do."""

    @sa.event.listens_for(engine.sync_engine, "do_connect")
    def check_folder(_dialect: Any, _record: Any, cargs: list[Any], _cparams: dict[str, Any]) -> None:
        path = str(cargs[0]) if cargs else ""
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).parent.is_dir():
            raise sqlite3.OperationalError("unable to open database file")


def _serialise_sqlite_writers(engine: AsyncEngine, busy_seconds: float) -> None:
    """Transactions begin with our BEGIN, not pysqlite's: `BEGIN IMMEDIATE` (the write lock, so
    that writers queue instead of failing when one upgrades from reading) on connections with
    the `WRITES` option, a plain deferred BEGIN elsewhere, so that reads take no lock at all
    (WAL: they read a snapshot beside the writer). A transaction that writes first (an INSERT,
    as the tenant and key statements do) waits for the lock at that statement, as long as
    BEGIN IMMEDIATE would. A lock wait lasts at most `busy_seconds`."""

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", f"busy_timeout={int(busy_seconds * 1000)}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        writes = connection.get_execution_options().get(WRITES, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class SqliteStore:
    @contextlib.asynccontextmanager
    async def transaction(self, database: AsyncEngine, *, rollback: bool = False) -> AsyncIterator[AsyncConnection]:
        """Writers never lose a race here: BEGIN IMMEDIATE makes them take turns."""
        try:
            async with database.connect() as conn:
                await conn.execution_options(**{WRITES: True})
                async with conn.begin() as transaction:
                    yield conn
                    if rollback:
                        await transaction.rollback()
        except Exception as error:
            failure = translate(error)
            if failure is None or failure is error:
                raise
            raise failure from error

    async def fetch(
        self,
        conn: AsyncConnection,
        columns: Sequence[sa.Column[Any]],
        tenant: str,
        zoho_ids: Iterable[str],
        *,
        hold: bool = False,
    ) -> Sequence[Sequence[Any]]:
        """No row version, nothing to hold: BEGIN IMMEDIATE gave this transaction the only write
        lock, so nothing changes between its fetch and its write."""
        table = columns[0].table
        ids = sa.func.json_each(_json_text(list(zoho_ids))).table_valued("value")
        wanted = table.c.zoho_id.in_(sa.select(ids.c.value))
        query = sa.select(*columns, sa.null()).where(table.c.tenant_id == tenant, wanted)
        rows: Sequence[Sequence[Any]] = (await conn.execute(query)).all()
        return rows

    async def resolve(
        self, conn: AsyncConnection, wanted: dict[str, tuple[sa.Table, set[str]]], tenant: str
    ) -> dict[str, dict[str, int]]:
        """One `UNION ALL` of (part number, zoho_id, id) over the tables that have ids to resolve."""
        resolved: dict[str, dict[str, int]] = {name: {} for name in wanted}
        present = [(name, table, ids) for name, (table, ids) in wanted.items() if ids]
        if present:
            params = {"tenant": tenant} | {f"ids{i}": _json_text(sorted(ids)) for i, (_, _, ids) in enumerate(present)}
            statement = _sqlite_resolve_statement(tuple(table for _, table, _ in present))
            for index, zoho_id, local_id in await conn.execute(statement, params):
                resolved[present[index][0]][zoho_id] = local_id
        return resolved

    async def write(self, conn: AsyncConnection, row_sets: Sequence[Rows]) -> None:
        """An `executemany` per row set: an insert, or an upsert for `Write.UPDATE` (rows do not
        change under a writer here: see `fetch`).

        The values are converted column by column with the column types' own SQLAlchemy
        processors (a value repeated down a whole column, such as the batch's timestamp, once)
        and handed to the driver as they are: SQLAlchemy's per-row parameter processing cost
        more than SQLite's work.
        """
        for items in row_sets:
            if items.values:
                upsert = items.write is Write.UPDATE
                sql, processors = _sqlite_insert(conn.dialect, items.table, items.names, upsert)
                columns = [
                    _processed(process, list(column))
                    for process, column in zip(processors, zip(*items.values, strict=True), strict=True)
                ]
                await conn.exec_driver_sql(sql, list(zip(*columns, strict=True)))

    async def write_answers(self, conn: AsyncConnection, answers: Sequence[StoredAnswer]) -> int:
        stored = 0
        for answer in answers:
            statement = (
                _KEYS.update()
                .where(_KEYS.c.id == answer.row, _KEYS.c.status_code.is_(None))
                .values(status_code=answer.status_code, response=answer.body, expires_at=answer.expires_at)
            )
            stored += (await conn.execute(statement)).rowcount
        return stored


@functools.cache
def _sqlite_insert(
    dialect: sa.Dialect, table: sa.Table, names: tuple[str, ...], upsert: bool
) -> tuple[str, tuple[Any, ...]]:
    """The INSERT (or upsert) of `names` into `table` with positional parameters, and each
    column's SQLAlchemy bind processor (None where the driver takes the value as it is)."""
    statement = sqlite_insert(table).values({name: sa.bindparam(name) for name in names})
    if upsert:
        updates = {name: statement.excluded[name] for name in names if name not in (*NATURAL_KEY, "created_at")}
        statement = statement.on_conflict_do_update(index_elements=list(NATURAL_KEY), set_=updates)
    compiled = statement.compile(dialect=dialect)
    assert compiled.positiontup == list(names), "parameters out of column order"
    return str(compiled), tuple(table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)


def _one_value(values: list[Any]) -> bool:
    """Whether a (non-empty) column holds one value all the way down: it is then converted or sent once."""
    return values.count(values[0]) == len(values)


def _processed(process: Callable[[Any], Any] | None, values: list[Any]) -> list[Any]:
    if process is None:
        return values
    if _one_value(values):
        return [process(values[0])] * len(values)
    return [None if value is None else process(value) for value in values]


@functools.cache
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


class PostgresStore:
    @contextlib.asynccontextmanager
    async def transaction(self, database: AsyncEngine, *, rollback: bool = False) -> AsyncIterator[PgSession]:
        """The pooled connection's asyncpg connection, with a transaction of our own on it.

        BEGIN goes out before the batch's first write (see `fetch`), and a batch that writes
        nothing sends neither BEGIN nor COMMIT. SQLAlchemy sees no
        statement on the connection, so it has no transaction of its own to end. A connection
        that broke is invalidated, so that the pool does not hand it out again.
        """
        try:
            async with database.connect() as lent:
                conn = (await lent.get_raw_connection()).driver_connection
                assert conn is not None, "the pool lent a closed connection"
                session = PgSession(conn)
                try:
                    try:
                        yield session
                    except BaseException as error:
                        if session.begun and not conn.is_closed() and not _lost(error):
                            await conn.execute("ROLLBACK")
                        raise
                    if session.begun:
                        await conn.execute("ROLLBACK" if rollback else "COMMIT")
                except BaseException as error:
                    # A connection that broke, or whose server stopped answering, is not lent again
                    # (nor sent a ROLLBACK, which would wait as long again): the server ends the
                    # transaction when the connection goes.
                    if conn.is_closed() or _lost(error):
                        await lent.invalidate()
                    raise
        except Exception as error:
            failure = translate(error)
            if failure is None or failure is error:
                raise
            raise failure from error

    async def fetch(
        self,
        session: PgSession,
        columns: Sequence[sa.Column[Any]],
        tenant: str,
        zoho_ids: Iterable[str],
        *,
        hold: bool = False,
    ) -> Sequence[Sequence[Any]]:
        """Read outside the transaction, which begins with the first write: a batch with nothing
        to write sends neither BEGIN nor COMMIT. With `hold`, inside it, once it holds the lane
        lock of the table and tenant exclusively (see the module's docstring)."""
        session.lane = _lane_key(columns[0].table.name, tenant)
        conn = await session.begin(exclusive=True) if hold else session.conn
        ids, literal = _array(list(zoho_ids), "text")
        rows: Sequence[Sequence[Any]] = await conn.fetch(_fetch_sql(tuple(columns), literal), tenant, ids)
        return rows

    async def resolve(
        self, session: PgSession, wanted: dict[str, tuple[sa.Table, set[str]]], tenant: str
    ) -> dict[str, dict[str, int]]:
        """One `UNION ALL` of (part number, zoho_id, id) over the tables that have ids to resolve."""
        resolved: dict[str, dict[str, int]] = {name: {} for name in wanted}
        present = [(name, table, ids) for name, (table, ids) in wanted.items() if ids]
        if present:
            conn = await session.begin()
            arrays = [_array(list(ids), "text") for _, _, ids in present]
            sql = _resolve_sql(tuple(table.name for _, table, _ in present), tuple(literal for _, literal in arrays))
            for index, zoho_id, local_id in await conn.fetch(sql, tenant, *(ids for ids, _ in arrays)):
                resolved[present[index][0]][zoho_id] = local_id
        return resolved

    async def write(self, session: PgSession, row_sets: Sequence[Rows]) -> None:
        """One statement: `WITH w0 AS (INSERT ...), w1 AS (UPDATE ...) INSERT INTO outbox ...`.

        Rows known to be new go in without ON CONFLICT: PostgreSQL's speculative insertion
        costs a quarter of an insert more. Rows that exist are updated where still at the
        version fetched; should fewer be, the statement counts them and this raises
        `RowsChanged` (the transaction is then rolled back and run again).
        """
        statements: list[str] = []
        params: list[Any] = []
        updates: list[tuple[str, Rows]] = []  # each update's name in the WITH, and its rows
        for rows in row_sets:
            if not rows.values:
                continue
            if rows.write is Write.UPDATE:
                updates.append((f"w{len(statements)}", rows))
                statements.append(_unnest_update(rows, params))
            else:
                statements.append(_unnest_insert(rows, params))
        if not statements:
            return
        conn = await session.begin()
        if not updates:
            *first, last = statements
            await conn.execute(_with(first) + last, *params)
            return
        counted = ", ".join(f"(SELECT count(*) FROM {name})" for name, _ in updates)
        found = await conn.fetchrow(_with(statements) + f"SELECT {counted}", *params)
        for (_, rows), count in zip(updates, found, strict=True):
            if count != len(rows.values):
                raise RowsChanged(f"rows of {rows.table.name} changed after this transaction fetched them")

    async def write_answers(self, session: PgSession, answers: Sequence[StoredAnswer]) -> int:
        """One statement for all of them; it begins the transaction if the batch wrote nothing."""
        conn = await session.begin()
        status: str = await conn.execute(
            _ANSWERS_SQL,
            [answer.row for answer in answers],
            [answer.status_code for answer in answers],
            [answer.body for answer in answers],
            [answer.expires_at for answer in answers],
        )
        return int(status.rsplit(" ", 1)[1])


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """An idempotency key's answer, for its claim row (see idempotency.py)."""

    row: int
    status_code: int
    body: bytes
    expires_at: dt.datetime


_KEYS = engine_table(IDEMPOTENCY_KEYS)
_ANSWERS_SQL = (
    f"UPDATE {IDEMPOTENCY_KEYS} AS k "
    "SET status_code = a.status_code, response = a.response, expires_at = a.expires_at "
    "FROM unnest(CAST($1 AS BIGINT[]), CAST($2 AS INTEGER[]), CAST($3 AS BYTEA[]), CAST($4 AS TIMESTAMPTZ[])) "
    "AS a(id, status_code, response, expires_at) WHERE k.id = a.id AND k.status_code IS NULL"
)


def _with(statements: list[str]) -> str:
    return "WITH " + ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(statements)) + " " if statements else ""


class PgSession:
    """An asyncpg connection, whether this batch's BEGIN has been sent on it, and the key of the
    lane lock its writes take (`_lane_key`; set by the fetch, which comes first)."""

    __slots__ = ("begun", "conn", "lane")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.begun = False
        self.lane: int | None = None

    async def begin(self, *, exclusive: bool = False) -> Any:
        """The connection, in the batch's transaction, holding the lane lock (shared, unless
        `exclusive`) in the same round trip as BEGIN."""
        if not self.begun:
            self.begun = True  # set first: should the lock fail, the transaction still needs a ROLLBACK
            if self.lane is None:
                await self.conn.execute("BEGIN")
            else:  # the key is an integer computed here, so writing it into the SQL is safe
                mode = "" if exclusive else "_shared"
                await self.conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock{mode}({self.lane})")
        return self.conn


@functools.lru_cache(maxsize=4096)
def _lane_key(table: str, tenant: str) -> int:
    """The advisory lock key of a table's rows of one tenant: a 64-bit hash of `table:tenant`."""
    return int.from_bytes(hashlib.blake2b(f"{table}:{tenant}".encode(), digest_size=8).digest(), signed=True)


_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves this constructor untyped
_quote = _DIALECT.identifier_preparer.quote


@functools.cache
def _fetch_sql(columns: tuple[sa.Column[Any], ...], literal: bool) -> str:
    """`columns` of tenant `$1`'s rows whose zoho_id is in `$2` (see `_array`); built once per column set.

    Each row ends with its `xmin`, its version for `write`. One unique-index lookup per id (a
    LATERAL ... LIMIT 1 cannot be flattened into a join):
    `zoho_id = ANY($2)` let the planner scan the tenant's whole index range when the
    statistics were stale, as during a first large load.
    """
    names = ", ".join(f"t.{_quote(column.name)}" for column in columns)
    return (
        f"SELECT stored.* FROM unnest({_array_sql('$2', 'TEXT', literal)}) AS wanted(zoho_id) "
        f"CROSS JOIN LATERAL (SELECT {names}, t.xmin FROM {_quote(columns[0].table.name)} AS t "
        "WHERE t.tenant_id = $1 AND t.zoho_id = wanted.zoho_id LIMIT 1) AS stored"
    )


@functools.cache
def _resolve_sql(tables: tuple[str, ...], literals: tuple[bool, ...]) -> str:
    """One unique-index probe per id, as in `_fetch_sql`. `$1` is the tenant; `$2`, `$3`... the
    ids wanted of each table, in order (see `_array`)."""
    return " UNION ALL ".join(
        f"SELECT {index} AS part, found.zoho_id, found.id "
        f"FROM unnest({_array_sql(f'${index + 2}', 'TEXT', literal)}) AS wanted(zoho_id) "
        f"CROSS JOIN LATERAL (SELECT t.zoho_id, t.id FROM {_quote(table)} AS t WHERE t.tenant_id = $1 "
        "AND t.zoho_id = wanted.zoho_id AND t.deleted_at IS NULL LIMIT 1) AS found"
        for index, (table, literal) in enumerate(zip(tables, literals, strict=True))
    )


#: How `_array` writes the elements of an array literal, by kind (see `_literal_kind`).
_RENDER: dict[str, Callable[[Any], str]] = {"int": int.__repr__, "date": dt.date.isoformat}


def _array(values: list[Any], kind: str | None) -> tuple[Any, bool]:
    """An array parameter, and whether it is an array literal (text) rather than a list.

    asyncpg checks each element of a list against `collections.abc` (one or two calls into
    Python each), which cost more than the rest of a batch's encoding together; a literal is
    one string, built by `str.join` in C. Text is written quoted; where an element would need
    escaping (a quote or a backslash), where one is null, or where the kind has no literal form
    (timestamps: their time zone must not depend on the session's), the list goes as it is.
    """
    if kind is None or not values or None in values:
        return values, False
    try:
        if kind == "text":
            every = "".join(values)
            if '"' in every or "\\" in every:
                return values, False
            return '{"' + '","'.join(values) + '"}', True
        return "{" + ",".join(map(_RENDER[kind], values)) + "}", True
    except TypeError:  # an element of another type than the column's: asyncpg says what is wrong
        return values, False


def _array_sql(param: str, sql_type: str, literal: bool) -> str:
    return f"CAST(CAST({param} AS TEXT) AS {sql_type}[])" if literal else f"CAST({param} AS {sql_type}[])"


def _unnest_insert(rows: Rows, params: list[Any]) -> str:
    """The SQL that inserts `rows` from arrays; their values are appended to `params`."""
    start = len(params) + 1
    return _insert_sql(rows.table, rows.names, _unnest_params(rows, params), start)


def _unnest_update(rows: Rows, params: list[Any]) -> str:
    """The SQL that updates `rows` from arrays where each is still at its version (`Rows.versions`),
    returning a row for each updated; their values are appended to `params`."""
    assert rows.versions is not None and len(rows.versions) == len(rows.values), "a version for each row"
    start = len(params) + 1
    modes = _unnest_params(rows, params, skip="created_at")
    versions, literal = _array(rows.versions, "int")
    params.append(versions)
    return _update_sql(rows.table, rows.names, modes, start, literal)


def _unnest_params(rows: Rows, params: list[Any], skip: str | None = None) -> tuple[str, ...]:
    """Append a parameter for each column of `rows` but `skip` to `params`; how each is sent
    (see `_unnest_parts`)."""
    start = len(params) + 1
    modes: list[str] = []
    layout = _layout(rows.table, rows.names)
    for name, (is_json, kind), column in zip(rows.names, layout, zip(*rows.values, strict=True), strict=True):
        if name == skip:
            modes.append("skip")
            continue
        values = list(column)
        if is_json:
            values = [None if value is None else _json_text(value) for value in values]
        # A column with one value for the whole batch (tenant, timestamps, ...) is sent once.
        if len(values) > 1 and _one_value(values):
            modes.append("scalar")
            params.append(values[0])
            continue
        param, literal = _array(values, kind)
        modes.append("literal" if literal else "array")
        params.append(param)
    if all(mode == "scalar" for mode in modes):
        modes[0], params[start - 1] = "array", [params[start - 1]] * len(rows.values)
    return tuple(modes)


@functools.cache
def _layout(table: sa.Table, names: tuple[str, ...]) -> tuple[tuple[bool, str | None], ...]:
    """Per column of `names`: whether it holds JSON (sent as text), and its kind for `_array`."""
    layout = []
    for name in names:
        column_type = table.c[name].type
        is_json = isinstance(column_type, sa.JSON)
        layout.append((is_json, "text" if is_json else _literal_kind(column_type)))
    return tuple(layout)


def _literal_kind(column_type: sa.types.TypeEngine[Any]) -> str | None:
    """How a column's values are written in an array literal (`_array`), if they can be."""
    if isinstance(column_type, sa.String):
        return "text"
    if isinstance(column_type, sa.Integer):
        return "int"
    if isinstance(column_type, sa.Date):
        return "date"
    return None


def _unnest_parts(
    table: sa.Table, names: tuple[str, ...], modes: tuple[str, ...], start: int
) -> tuple[list[str], list[str], list[str]]:
    """For `SELECT <values> FROM unnest(<arrays>) AS u(<aliases>)`: the array expressions, each
    column's value expression, and the aliases.

    A column is an array parameter (numbered from `start`), a literal of one (see `_array`),
    (`modes` says "scalar") one value for every row, or not sent ("skip": it gets no value
    expression). JSON values travel as text and are cast back, since asyncpg has no codec for
    json[].
    """
    casts, values, aliases = [], [], []
    number = start
    for i, (name, mode) in enumerate(zip(names, modes, strict=True)):
        if mode == "skip":
            continue
        column_type = table.c[name].type
        sql_type = column_type.compile(dialect=_DIALECT)
        is_json = isinstance(column_type, sa.JSON)
        param = f"${number}"
        number += 1
        if mode == "scalar":
            values.append(f"CAST(CAST({param} AS TEXT) AS {sql_type})" if is_json else f"CAST({param} AS {sql_type})")
            continue
        # A text literal is read as TEXT[] and each value cast by the insert to its column's
        # type: reading it as VARCHAR(n)[] cost the server more (measured, batches of 1,000).
        as_text = is_json or (mode == "literal" and _literal_kind(column_type) == "text")
        casts.append(_array_sql(param, "TEXT" if as_text else sql_type, mode == "literal"))
        values.append(f"CAST(u.p{i} AS {sql_type})" if is_json else f"u.p{i}")
        aliases.append(f"p{i}")
    return casts, values, aliases


@functools.cache
def _insert_sql(table: sa.Table, names: tuple[str, ...], modes: tuple[str, ...], start: int) -> str:
    """`INSERT INTO t (a, b, c) SELECT u.p0, u.p1, CAST($3 AS T) FROM unnest(CAST($1 AS T[]), ...)`."""
    casts, values, aliases = _unnest_parts(table, names, modes, start)
    return (
        f"INSERT INTO {_quote(table.name)} ({', '.join(_quote(n) for n in names)}) "
        f"SELECT {', '.join(values)} FROM unnest({', '.join(casts)}) AS u({', '.join(aliases)})"
    )


@functools.cache
def _update_sql(table: sa.Table, names: tuple[str, ...], modes: tuple[str, ...], start: int, literal: bool) -> str:
    """`UPDATE t SET b = u.p1, ... FROM unnest(..., <versions>) AS u(..., version) WHERE <natural
    key matches> AND t.xmin = u.version RETURNING 1`; the versions are the last parameter.

    Should another transaction have updated a row since it was fetched, PostgreSQL waits for it
    to end, then checks the condition again on the row as it left it: its `xmin` is then that
    transaction's, so the row is not updated (and not counted).
    """
    casts, values, aliases = _unnest_parts(table, names, modes, start)
    sent = [name for name, mode in zip(names, modes, strict=True) if mode != "skip"]
    casts.append(_array_sql(f"${start + len(sent)}", "xid", literal))
    aliases.append("version")
    value = dict(zip(sent, values, strict=True))
    updates = [f"{_quote(n)} = {value[n]}" for n in sent if n not in NATURAL_KEY]
    matches = [f"t.{_quote(n)} = {value[n]}" for n in NATURAL_KEY]
    return (
        f"UPDATE {_quote(table.name)} AS t SET {', '.join(updates)} "
        f"FROM unnest({', '.join(casts)}) AS u({', '.join(aliases)}) "
        f"WHERE {' AND '.join(matches)} AND t.xmin = u.version RETURNING 1"
    )


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()
