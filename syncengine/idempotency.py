"""Idempotency keys, persisted: one claim row per (tenant, endpoint, key), kept until it expires.

The first request with a key inserts a claim row; the unique constraint makes every other
request with that key lose the insert, in any process on any host. The winner processes the
request; a loser with the same body waits for its answer and replays it, a loser with another
body is refused.

The answer of a sync is stored by the transaction that writes the batch (`Answer`, handed to
`SyncEngine.sync`), so the two commit together or not at all: a claim without an answer means
that nothing of its request was written. (A dry run writes nothing, and its answer is stored
after it, as are 4xx answers; a 409 or 5xx answer is not stored: the claim is deleted, so
that a retry runs.)

A claim's holder keeps a lock for as long as it runs, one that dies with its process:

- PostgreSQL: a session advisory lock (keyed by a 64-bit hash of tenant, endpoint and key, as
  two int4: a keyspace apart from the store's one-bigint lane locks) on one connection that
  each process keeps for the purpose;
- SQLite (one host): an fcntl lock on one byte, at an offset hashed the same way, of a file
  beside the database (`<database>-idempotency.lock`); the kernel drops it when the process ends.

A request takes the lock before it inserts its claim. One that finds a claim without an answer
tries the lock: if it gets it, the holder is gone (before its batch committed, since the answer
commits with it), and the request deletes that claim and claims the key itself, at once; if not,
it waits for the answer. The answer's write names the claim row by id and fails if the row is
gone (`ClaimLost`: the batch is rolled back), so even a holder wrongly taken for dead (its lock
connection dropped) cannot commit a batch beside the one that took over.

    claim = await keys.claim("school", f"/v1/sync/{entity.name}", key, request_hash)
    if isinstance(claim, StoredResponse):  # a replay of the first answer
        return claim.status_code, claim.body
    try:
        report = await engine.sync(..., answer=keys.answer(claim, render))   # stored with the batch
    finally:
        await keys.let_go(claim)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine.exceptions import BadInput, Conflict, DatabaseBusy, DatabaseUnavailable
from syncengine.fieldtypes import utc_now
from syncengine.report import SyncReport
from syncengine.store import translate
from syncengine.tables import IDEMPOTENCY_KEY_LENGTH, IDEMPOTENCY_KEYS, engine_table

#: An unanswered claim (its holder died, and no retry came) is purged after this long at least.
CLAIM_TIMEOUT = 300.0
_KEY = re.compile(rf"^[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_LENGTH}}}$")
_keys = engine_table(IDEMPOTENCY_KEYS)
log = logging.getLogger(__name__)


class InvalidIdempotencyKey(BadInput):
    """A key that is empty, too long or not printable ASCII."""

    code = "invalid_idempotency_key"


class IdempotencyKeyReused(Conflict):
    """The key was first used with another request body."""

    code = "idempotency_key_reused"

    def __init__(
        self,
        message: str = "this Idempotency-Key was already used with a different request body; "
        "use a new key for a new request",
    ) -> None:
        super().__init__(message)


class IdempotencyKeyInUse(Conflict):
    """The first request with this key is still being processed."""

    code = "idempotency_key_in_use"

    def __init__(
        self,
        message: str = "the first request with this Idempotency-Key is still being processed; retry in a few seconds",
    ) -> None:
        super().__init__(message)


class ClaimLost(IdempotencyKeyInUse):
    """This request's claim was taken over (its lock was lost); its batch was rolled back, and
    the request that took the key over answers it."""

    code = "idempotency_key_in_use"


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes


@dataclass(frozen=True)
class Claim:
    """A request's hold on a key: its claim row, and the lock that shows the holder is alive."""

    tenant: str
    endpoint: str
    key: str
    row: int
    lock: bytes


@dataclass(slots=True)
class Answer:
    """What a sync call stores in its own transaction when it succeeds: the 200 answer to its
    claim, `render`ed from the call's report (once per report)."""

    row: int
    ttl: float
    render: Callable[[SyncReport], bytes]
    _rendered: tuple[SyncReport, bytes] | None = field(default=None, repr=False)

    def body(self, report: SyncReport) -> bytes:
        if self._rendered is None or self._rendered[0] is not report:
            self._rendered = (report, self.render(report))
        return self._rendered[1]

    def expires_at(self) -> dt.datetime:
        return utc_now() + dt.timedelta(seconds=self.ttl)


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LENGTH} printable ASCII characters without spaces"
        )
    return key


def request_hash(*parts: bytes | str) -> str:
    """A digest of everything that makes two requests the same request."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


class IdempotencyKeys:
    """Claims and stored responses in the database; `ttl` and `wait` are in seconds."""

    def __init__(self, database: AsyncEngine, ttl: float, wait: float) -> None:
        self.database = database
        self.ttl = ttl
        self.wait = wait
        self._locks: _HolderLocks = (
            _AdvisoryLocks(database) if database.dialect.name == "postgresql" else _FileLocks.of(database.url.database)
        )

    async def claim(self, tenant: str, endpoint: str, key: str, digest: str) -> Claim | StoredResponse:
        """A `Claim` if this request now holds the key; else the stored response to replay.

        Raises `IdempotencyKeyReused` for another body, `IdempotencyKeyInUse` when the first
        request, still alive, has not finished within `wait` seconds.
        """
        deadline = time.monotonic() + self.wait
        delay = 0.02
        lock = _lock_key(tenant, endpoint, key)
        where = (_keys.c.tenant_id == tenant, _keys.c.endpoint == endpoint, _keys.c.key == key)
        query = sa.select(_keys.c.id, _keys.c.request_hash, _keys.c.status_code, _keys.c.response, _keys.c.expires_at)
        while True:
            held = await self._hold(lock)
            try:
                if held:
                    row_id = await self._insert(tenant, endpoint, key, digest)
                    if row_id is not None:
                        held = False  # the claim keeps the lock until `let_go`
                        return Claim(tenant, endpoint, key, row_id, lock)
                async with self.database.connect() as conn:
                    row = (await conn.execute(query.where(*where))).first()
                if row is not None and row.status_code is not None:
                    if row.expires_at <= utc_now():
                        await self._delete(row.id, answered=True)
                        continue
                    if row.request_hash != digest:
                        raise IdempotencyKeyReused
                    return StoredResponse(row.status_code, row.response or b"")
                if held:  # no answer, and no process holds the lock: its holder died before committing
                    if row is not None:
                        await self._delete(row.id, answered=False)
                        log.info("took over an idempotency key whose first request died", extra={"fields": {}})
                    continue
                if row is not None and row.request_hash != digest:
                    raise IdempotencyKeyReused
            finally:
                if held:
                    await self._let_go(lock)
            if time.monotonic() + delay > deadline:
                raise IdempotencyKeyInUse
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def answer(self, claim: Claim, render: Callable[[SyncReport], bytes]) -> Answer:
        """What `SyncEngine.sync` stores as the claim's answer, in the transaction of its batch."""
        return Answer(claim.row, self.ttl, render)

    async def complete(self, claim: Claim, status_code: int, body: bytes) -> None:
        """Store the answer of a request that wrote nothing (a dry run, a 4xx); it replays until
        the key expires."""
        expires_at = utc_now() + dt.timedelta(seconds=self.ttl)
        statement = (
            _keys.update()
            .where(_keys.c.id == claim.row, _keys.c.status_code.is_(None))
            .values(status_code=status_code, response=body, expires_at=expires_at)
        )
        async with self.database.begin() as conn:
            await conn.execute(statement)

    async def release(self, claim: Claim) -> None:
        """Let go of a claim whose request failed, so that a retry is processed."""
        await self._delete(claim.row, answered=False)

    async def let_go(self, claim: Claim) -> None:
        """Give up the claim's lock, once its request is answered (or failed): always, last.
        Never raises: the answer is what it is by now (and a lock not given up is dropped, see
        `_AdvisoryLocks.let_go`)."""
        try:
            await self._let_go(claim.lock)
        except Exception:
            log.warning("could not give up an idempotency key's lock", exc_info=True)

    async def purge(self) -> int:
        """Delete expired keys; return how many."""
        async with self.database.begin() as conn:
            result = await conn.execute(_keys.delete().where(_keys.c.expires_at <= utc_now()))
        return int(result.rowcount)

    async def purge_forever(self, interval: float) -> None:
        """`purge` every `interval` seconds, until cancelled. A failure (the database away, most
        often) is one log line with its reason, not a traceback, and the next round tries again."""
        while True:
            try:
                removed = await self.purge()
            except Exception as error:  # a database blip must not stop the purging for good
                reason = _reason(error)
                fields = {"reason": reason, "retry_in_s": interval}
                log.warning("could not purge expired idempotency keys; trying again later", extra={"fields": fields})
            else:
                if removed:
                    log.info("purged expired idempotency keys", extra={"fields": {"removed": removed}})
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Close the lock connection (PostgreSQL) or file (SQLite)."""
        await self._locks.close()

    async def _insert(self, tenant: str, endpoint: str, key: str, digest: str) -> int | None:
        """The new claim row's id, or None if the key has a row."""
        now = utc_now()
        expires_at = now + dt.timedelta(seconds=max(self.ttl, CLAIM_TIMEOUT))  # the answer sets `ttl`
        values = dict(tenant_id=tenant, endpoint=endpoint, key=key, request_hash=digest, created_at=now)
        try:
            async with self.database.begin() as conn:
                result = await conn.execute(_keys.insert().values(**values, expires_at=expires_at))
        except sa.exc.IntegrityError:
            return None
        key_row = result.inserted_primary_key
        assert key_row is not None, "an INSERT of one row has its primary key"
        return int(key_row[0])

    async def _delete(self, row: int, *, answered: bool) -> None:
        answer = _keys.c.status_code.is_not(None) if answered else _keys.c.status_code.is_(None)
        async with self.database.begin() as conn:
            await conn.execute(_keys.delete().where(_keys.c.id == row, answer))

    async def _hold(self, lock: bytes) -> bool:
        held = self._locks.held
        if lock in held:
            return False
        held.add(lock)  # before the lock is asked for: a request of this process may ask meanwhile
        taken = False
        try:
            taken = await self._locks.try_hold(lock)
        finally:
            if not taken:
                held.discard(lock)
        return taken

    async def _let_go(self, lock: bytes) -> None:
        try:
            await self._locks.let_go(lock)
        finally:  # only now: until then, a request of this process must not take it
            self._locks.held.discard(lock)


def _lock_key(tenant: str, endpoint: str, key: str) -> bytes:
    """Eight bytes of a hash of the key's row: the lock that its holder keeps."""
    return hashlib.blake2b(request_hash(tenant, endpoint, key).encode(), digest_size=8).digest()


class _HolderLocks(Protocol):
    #: The locks held through this: a lock is re-entrant within its holder (a PostgreSQL
    #: session, a process's fcntl locks), so a request asks here first.
    held: set[bytes]

    async def try_hold(self, lock: bytes) -> bool:
        """Take the lock if no process holds it; whether it was taken."""

    async def let_go(self, lock: bytes) -> None: ...

    async def close(self) -> None: ...


class _AdvisoryLocks:
    """PostgreSQL: session advisory locks on one connection of the pool, kept while the process
    runs (taken from the pool on first use); if it broke, its locks are gone and another is taken."""

    def __init__(self, database: AsyncEngine) -> None:
        self.database = database
        self._lent: AsyncConnection | None = None
        self._conn: Any = None
        self._turn = asyncio.Lock()  # one statement at a time on the connection
        self.held: set[bytes] = set()

    async def try_hold(self, lock: bytes) -> bool:
        async with self._turn:
            conn = await self._connection()
            return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *_int4s(lock)))

    async def let_go(self, lock: bytes) -> None:
        """Should the unlock fail (or be cancelled), the connection is dropped, and every lock
        with it: a lock left held would keep its key "in use" for as long as the process runs
        (a holder of another key then looks dead, which the answer's check on its claim row
        covers)."""
        async with self._turn:
            if self._conn is not None and not self._conn.is_closed():
                try:
                    await self._conn.fetchval("SELECT pg_advisory_unlock($1, $2)", *_int4s(lock))
                except BaseException:
                    await self._drop()
                    raise

    async def close(self) -> None:
        async with self._turn:
            await self._drop()

    async def _drop(self) -> None:
        lent, self._lent, self._conn = self._lent, None, None
        if lent is not None:
            with contextlib.suppress(Exception):  # a broken connection has nothing to close
                await lent.invalidate()  # not back to the pool: it would keep the locks
                await lent.close()

    async def _connection(self) -> Any:
        if self._conn is not None and self._conn.is_closed():
            await self._drop()
        if self._conn is None:
            self._lent = await self.database.connect()
            self._conn = (await self._lent.get_raw_connection()).driver_connection
        return self._conn


def _int4s(lock: bytes) -> tuple[int, int]:
    """The lock's eight bytes as PostgreSQL's two int4 keys."""
    high, low = struct.unpack(">ii", lock)
    return high, low


class _FileLocks:
    """SQLite: fcntl locks on one byte each of a file beside the database, which the kernel
    drops with the process. fcntl locks belong to the process, and closing any descriptor of
    the file drops them all: one object per file and process (`of`) opens it once, keeps it
    open while it is used, and knows which of the locks the process holds."""

    _open: ClassVar[dict[tuple[int, str | None], _FileLocks]] = {}

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.held: set[bytes] = set()
        self.users = 0
        self._fd: int | None = None
        self._pid = 0

    @classmethod
    def of(cls, database: str | None) -> _FileLocks:
        in_memory = not database or database == ":memory:" or database.startswith("file:")
        path = None if in_memory or database is None else os.path.abspath(f"{database}-idempotency.lock")
        locks = cls._open.setdefault((os.getpid(), path), cls(path))
        locks.users += 1
        return locks

    async def try_hold(self, lock: bytes) -> bool:
        fd = self._file()
        if fd is None:  # an in-memory database lives in this process alone
            return True
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _offset(lock))
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True

    async def let_go(self, lock: bytes) -> None:
        fd = self._file()
        if fd is not None:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, _offset(lock))

    async def close(self) -> None:
        self.users -= 1
        if self.users > 0:
            return
        self._open.pop((os.getpid(), self.path), None)
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def _file(self) -> int | None:
        if self.path is None:
            return None
        if self._fd is None or self._pid != os.getpid():  # a forked child holds none of the parent's locks
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd


def _offset(lock: bytes) -> int:
    """A byte offset of 62 bits (a file offset is a signed 64-bit number): the lock's byte."""
    return int.from_bytes(lock, "big") >> 2


def _reason(error: Exception) -> str:
    """Why a statement failed, for a log line: the database's trouble, or the exception's type."""
    failure = translate(error)
    if isinstance(failure, DatabaseUnavailable | DatabaseBusy):
        return failure.reason
    return type(error).__name__
