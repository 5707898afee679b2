"""Idempotency keys, persisted: one claim row per (tenant, endpoint, key), kept until it expires.

The first request with a key inserts a claim row; the unique constraint makes every other
request with that key lose the insert, in any process on any host. The winner processes the
request and stores its response in the row; a loser with the same body waits for that response
and replays it, a loser with another body is refused.

    claim = await keys.claim("school", "/v1/sync/students", key, request_hash)
    if claim is None:                      # ours: process, then store what we answered
        await keys.complete("school", "/v1/sync/students", key, 200, body)
    else:                                  # a replay of the first answer
        return claim.status_code, claim.body
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.tables import IDEMPOTENCY_KEY_LENGTH, engine_table

#: A claim whose request never finished (its process died) may be taken over after this long.
CLAIM_TIMEOUT = 300.0
_KEY = re.compile(rf"^[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_LENGTH}}}$")
_keys = engine_table("syncengine_idempotency_keys")


class InvalidIdempotencyKey(ValueError):
    pass


class IdempotencyKeyReused(Exception):
    """The key was first used with another request body."""


class IdempotencyKeyInUse(Exception):
    """The first request with this key is still being processed."""


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes


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

    async def claim(self, tenant: str, endpoint: str, key: str, digest: str) -> StoredResponse | None:
        """None if this request now holds the key; else the stored response to replay.

        Raises `IdempotencyKeyReused` for another body, `IdempotencyKeyInUse` when the first
        request has not finished within `wait` seconds.
        """
        deadline = time.monotonic() + self.wait
        delay = 0.02
        where = (_keys.c.tenant_id == tenant, _keys.c.endpoint == endpoint, _keys.c.key == key)
        while True:
            now = _now()
            try:
                async with self.database.begin() as conn:
                    await conn.execute(
                        _keys.insert().values(
                            tenant_id=tenant,
                            endpoint=endpoint,
                            key=key,
                            request_hash=digest,
                            created_at=now,
                            expires_at=now + dt.timedelta(seconds=min(self.ttl, CLAIM_TIMEOUT)),
                        )
                    )
                return None
            except sa.exc.IntegrityError:
                pass
            query = sa.select(
                _keys.c.id, _keys.c.request_hash, _keys.c.status_code, _keys.c.response, _keys.c.expires_at
            )
            async with self.database.connect() as conn:
                row = (await conn.execute(query.where(*where))).first()
            if row is None:
                continue  # the first request failed and let go of the key: claim it again
            if _utc(row.expires_at) <= now:
                async with self.database.begin() as conn:
                    await conn.execute(_keys.delete().where(_keys.c.id == row.id, _keys.c.expires_at == row.expires_at))
                continue
            if row.request_hash != digest:
                raise IdempotencyKeyReused
            if row.status_code is not None:
                return StoredResponse(row.status_code, row.response or b"")
            if time.monotonic() + delay > deadline:
                raise IdempotencyKeyInUse
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def complete(self, tenant: str, endpoint: str, key: str, status_code: int, body: bytes) -> None:
        """Store the response of the claimed request; it replays until the key expires."""
        expires_at = _now() + dt.timedelta(seconds=self.ttl)
        statement = (
            _keys.update()
            .where(_keys.c.tenant_id == tenant, _keys.c.endpoint == endpoint, _keys.c.key == key)
            .values(status_code=status_code, response=body, expires_at=expires_at)
        )
        async with self.database.begin() as conn:
            await conn.execute(statement)

    async def release(self, tenant: str, endpoint: str, key: str) -> None:
        """Let go of a claim whose request failed, so that a retry is processed."""
        statement = _keys.delete().where(
            _keys.c.tenant_id == tenant, _keys.c.endpoint == endpoint, _keys.c.key == key, _keys.c.status_code.is_(None)
        )
        async with self.database.begin() as conn:
            await conn.execute(statement)

    async def purge(self) -> int:
        """Delete expired keys; return how many."""
        async with self.database.begin() as conn:
            result = await conn.execute(_keys.delete().where(_keys.c.expires_at <= _now()))
        return int(result.rowcount)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
