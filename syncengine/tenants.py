"""Tenants and their API keys: a key is shown once, stored as its SHA-256, looked up by that hash.

    >>> key = await add_tenant(database, "school")   # 'sk_...', print it once
    >>> (await KeyCache(database).authenticate(key)).name
    'school'

A key carries 256 random bits, so a plain SHA-256 is enough to store it: there is nothing to
guess, and no slow hash is needed to protect it.

A request presents its key as `Authorization: Bearer KEY` or `X-API-Key: KEY` (`presented_key`);
a header that is there but holds no usable key says what is wrong with it, never the key.

The HTTP service checks keys through a `KeyCache`, which trusts a valid key for a second instead
of asking the database on every request (BEGIN, SELECT, ROLLBACK: three round trips of the
eleven a single-record webhook made).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.exceptions import BadInput, Conflict, NotFound
from syncengine.fieldtypes import utc_now
from syncengine.tables import TENANT_LENGTH, TENANTS, engine_table

KEY_PREFIX = "sk_"
#: What a tenant name is, for `tenant add` and for the engine: ASCII letters, digits, `_`, `.`
#: and `-`, starting with a letter or digit; nothing else, not even a trailing newline.
TENANT_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{TENANT_LENGTH - 1}}}$"
_NAME = re.compile(TENANT_PATTERN.removesuffix("$") + r"\Z")
_tenants = engine_table(TENANTS)
#: How long a server process trusts a key it has checked: a key replaced with `syncengine tenant
#: key` stops working in every running server within this many seconds.
KEY_CACHE_SECONDS = 1.0
_rotations = 0  # rotations done in this process; a change empties every KeyCache at once


class TenantError(BadInput):
    """A name that cannot be a tenant's; the message says the pattern."""

    code = "invalid_tenant_name"


class TenantExists(Conflict):
    """`add_tenant` of a name that is taken; the message says how to get a new key instead."""

    code = "tenant_exists"


class UnknownTenant(NotFound):
    """A tenant command names no tenant; the message says how to list them."""

    code = "unknown_tenant"


class CredentialError(BadInput):
    """A request's credential headers hold no usable key; the message says what is wrong (never
    the key) and how to send one."""

    code = "malformed_credentials"


#: How a request sends its key, for messages.
SEND_KEY = "send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
#: An Authorization scheme that may be shown back (Basic, Token, Zoho-oauthtoken); a key may not.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}\Z")


def presented_key(authorization: list[str], api_key: list[str]) -> str | None:
    """The key of a request's `Authorization` and `X-API-Key` headers (each as its list of values),
    or None when it sends neither; CredentialError when a header is there but holds no key.

    An `Authorization` of another scheme is ignored when `X-API-Key` holds the key (a proxy may
    use it); when both hold a key, they must be the same one.

        >>> presented_key(["sk_abc"], [])
        CredentialError: the Authorization header has no scheme (the word Bearer and a space before
        the key): send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'
    """
    for name, values in (("Authorization", authorization), ("X-API-Key", api_key)):
        if len(values) > 1:
            raise CredentialError(f"the {name} header is sent {len(values)} times: send one key, in one header")
    header = api_key[0].strip() if api_key else None
    bearer, problem = _bearer(authorization[0].strip()) if authorization else (None, None)
    if header and bearer and not hmac.compare_digest(header.encode(), bearer.encode()):
        raise CredentialError("the Authorization and X-API-Key headers hold different keys: send one of them")
    if header or bearer:
        return header or bearer
    if problem is None and header == "":
        problem = "the X-API-Key header is empty"
    if problem is not None:
        raise CredentialError(f"{problem}: {SEND_KEY}")
    return None


def _bearer(authorization: str) -> tuple[str | None, str | None]:
    """The key of an `Authorization` value, or what is wrong with it (without the key)."""
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if not authorization:
        return None, "the Authorization header is empty"
    if scheme.lower() == "bearer":
        return (credentials, None) if credentials else (None, "the Authorization header says Bearer but holds no key")
    if scheme.rstrip(":").lower() == "bearer":
        return None, "the Authorization header has a ':' after Bearer"
    if not credentials or scheme.startswith(KEY_PREFIX):
        return None, "the Authorization header has no scheme (the word Bearer and a space before the key)"
    shown = f" '{scheme}'" if _SCHEME.match(scheme) else ""
    return None, f"the Authorization scheme{shown} is not accepted, only Bearer"


@dataclass(frozen=True)
class Tenant:
    name: str
    created_at: dt.datetime
    key_created_at: dt.datetime


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    """`name`, if it is a tenant name (TENANT_PATTERN); else TenantError, which says the pattern."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise TenantError(
            f"tenant name {name!r} must be 1 to {TENANT_LENGTH} letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit ({TENANT_PATTERN})"
        )
    return name


async def add_tenant(database: AsyncEngine, name: str) -> str:
    """Create a tenant; return its API key, which is stored nowhere else."""
    check_name(name)
    key, now = new_key(), utc_now()
    try:
        async with database.begin() as conn:
            await conn.execute(
                _tenants.insert().values(name=name, key_hash=hash_key(key), created_at=now, key_created_at=now)
            )
    except sa.exc.IntegrityError:
        raise TenantExists(
            f"tenant '{name}' already exists; `syncengine tenant key {name}` gives it a new key"
        ) from None
    return key


async def rotate_key(database: AsyncEngine, name: str) -> str:
    """Give a tenant a new API key; the old one stops working at once (in running servers, within
    KEY_CACHE_SECONDS)."""
    global _rotations
    key = new_key()
    async with database.begin() as conn:
        result = await conn.execute(
            _tenants.update().where(_tenants.c.name == name).values(key_hash=hash_key(key), key_created_at=utc_now())
        )
    if result.rowcount != 1:
        raise UnknownTenant(f"no tenant '{name}'; `syncengine tenant list` shows the tenants")
    _rotations += 1
    return key


async def list_tenants(database: AsyncEngine) -> list[Tenant]:
    query = sa.select(_tenants.c.name, _tenants.c.created_at, _tenants.c.key_created_at).order_by(_tenants.c.name)
    async with database.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [Tenant(name, created, rotated) for name, created, rotated in rows]


async def _tenant_of(database: AsyncEngine, digest: str) -> Tenant | None:
    query = sa.select(_tenants.c.name, _tenants.c.key_hash, _tenants.c.created_at, _tenants.c.key_created_at)
    async with database.connect() as conn:
        row = (await conn.execute(query.where(_tenants.c.key_hash == digest))).first()
    if row is None:  # the database compared the hashes: nothing secret is compared here
        return None
    return Tenant(row.name, row.created_at, row.key_created_at)


class KeyCache:
    """The tenant whose key this is, or None; each valid key trusted for `ttl` seconds after the database said so.

    Unknown keys are not remembered (they are asked about every time), so the cache holds at
    most one entry per tenant key in use, and a new tenant's key works at once.

        keys = KeyCache(database)
        tenant = await keys.authenticate(key)     # the database at most once a second per key
    """

    def __init__(self, database: AsyncEngine, ttl: float = KEY_CACHE_SECONDS) -> None:
        self.database = database
        self.ttl = ttl
        self._valid: dict[str, tuple[float, Tenant]] = {}
        self._asking: dict[str, asyncio.Future[Tenant | None]] = {}  # questions in flight
        self._rotations = _rotations

    async def authenticate(self, key: str) -> Tenant | None:
        digest = hash_key(key)
        now = time.monotonic()
        if self._rotations != _rotations:
            self._valid.clear()
            self._rotations = _rotations
        cached = self._valid.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        asking = self._asking.get(digest)
        if asking is None:  # one question per key at a time, however many requests wait for it
            asking = self._asking[digest] = asyncio.ensure_future(self._ask(digest))
            asking.add_done_callback(
                lambda done: (self._asking.pop(digest, None), done.cancelled() or done.exception())
            )
        return await asyncio.shield(asking)

    def knows(self, key: str) -> bool:
        """Whether `authenticate(key)` answers without the database (a valid key checked within `ttl`)."""
        cached = self._valid.get(hash_key(key))
        return self._rotations == _rotations and cached is not None and cached[0] > time.monotonic()

    async def _ask(self, digest: str) -> Tenant | None:
        tenant = await _tenant_of(self.database, digest)
        now = time.monotonic()
        if tenant is None:
            self._valid.pop(digest, None)
        else:
            if len(self._valid) > 10_000:  # keys rotate; do not keep the old ones forever
                self._valid = {d: entry for d, entry in self._valid.items() if entry[0] > now}
            self._valid[digest] = (now + self.ttl, tenant)
        return tenant


async def ensure_first_tenant(database: AsyncEngine, name: str = "default") -> str | None:
    """On a database with no tenant, create `name` and return its key; otherwise None."""
    async with database.connect() as conn:
        if (await conn.execute(sa.select(sa.func.count()).select_from(_tenants))).scalar_one():
            return None
    try:
        return await add_tenant(database, name)
    except TenantExists:  # another process created it first
        return None
