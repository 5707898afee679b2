"""Each tenant's Zoho CRM credentials, and the access-token cache that every process of a tenant shares.

    await save_zoho(database, "school", Credentials("1000.ID", secret, refresh_token, dc="eu"))
    async with await open_zoho(database, "school") as zoho:   # NoZohoCredentials if none are stored
        found = await zoho.get_records(entity.source, ids)

The client secret, the refresh token and the access tokens are stored sealed (vault.py) and read
here only. Zoho grants 10 access tokens per refresh token per 10 minutes, so the token lives in
the database: a process that needs a new one takes a short lease on its row and refreshes, and
every other process (and task) waits for that token instead of minting its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine.exceptions import Misconfigured
from syncengine.fieldtypes import utc_now
from syncengine.tables import ZOHO_SITES, ZOHO_TOKENS, engine_table
from syncengine.vault import seal, unseal
from syncengine.zoho import AccessToken, Credentials, ZohoClient

SITES = engine_table(ZOHO_SITES)
TOKENS = engine_table(ZOHO_TOKENS)
LEASE = dt.timedelta(seconds=30)  # a refresh that takes longer is presumed dead and taken over
POLL = 0.05  # seconds between looks at a lease another process holds
CONFIGURE = (
    "`syncengine tenant zoho {tenant} --dc DC --client-id ID --client-secret-file FILE --refresh-token-file FILE`"
)


class NoZohoCredentials(Misconfigured):
    """A tenant that has no Zoho credentials was asked to read from Zoho."""

    code = "zoho_not_configured"

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(
            f"tenant '{tenant}' has no Zoho credentials: store them with {CONFIGURE.format(tenant=tenant)}"
        )


async def save_zoho(database: AsyncEngine, tenant: str, credentials: Credentials) -> None:
    """Store (or replace) `tenant`'s Zoho credentials."""
    values = {
        "dc": credentials.dc,
        "accounts_url": credentials.accounts_url,
        "api_url": credentials.api_url,
        "client_id": credentials.client_id,
        "client_secret": seal(credentials.client_secret),
        "refresh_token": seal(credentials.refresh_token),
        "updated_at": utc_now(),
    }
    async with database.begin() as conn:
        changed = await conn.execute(sa.update(SITES).where(SITES.c.tenant_id == tenant).values(values))
        if changed.rowcount == 0:
            await conn.execute(sa.insert(SITES).values(tenant_id=tenant, **values))


async def read_zoho(conn: AsyncConnection, tenant: str) -> Credentials | None:
    """`tenant`'s Zoho credentials, or None where it has none."""
    row = (await conn.execute(sa.select(SITES).where(SITES.c.tenant_id == tenant))).first()
    if row is None:
        return None
    again = f"store them again: {CONFIGURE.format(tenant=tenant)}"
    return Credentials(
        client_id=row.client_id,
        client_secret=unseal(row.client_secret, f"tenant '{tenant}''s Zoho client secret", again),
        refresh_token=unseal(row.refresh_token, f"tenant '{tenant}''s Zoho refresh token", again),
        dc=row.dc,
        accounts_url=row.accounts_url,
        api_url=row.api_url,
    )


async def zoho_tenants(conn: AsyncConnection) -> list[str]:
    """The tenants that have Zoho credentials, by name."""
    return [row[0] for row in await conn.execute(sa.select(SITES.c.tenant_id).order_by(SITES.c.tenant_id))]


async def open_zoho(database: AsyncEngine, tenant: str, **options: Any) -> ZohoClient:
    """A Zoho client for `tenant`, sharing its access token through the database; NoZohoCredentials
    where the tenant has none. `options` go to ZohoClient (sleep, max_attempts, http...)."""
    async with database.connect() as conn:
        credentials = await read_zoho(conn, tenant)
    if credentials is None:
        raise NoZohoCredentials(tenant)
    return ZohoClient(credentials, cache=DatabaseTokenCache(database), **options)


class DatabaseTokenCache:
    """Zoho's `TokenCache` in the database: one token per credential for every process that shares it."""

    def __init__(self, database: AsyncEngine) -> None:
        self.database = database
        self._locks: dict[str, asyncio.Lock] = {}  # tasks of this process queue here, not on the lease

    async def get(self, key: str) -> AccessToken | None:
        async with self.database.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(TOKENS.c.access_token, TOKENS.c.api_domain, TOKENS.c.expires_at).where(
                        TOKENS.c.cache_key == key
                    )
                )
            ).first()
        if row is None or row.access_token is None:
            return None
        again = "let the service fetch a new one: it does so by itself once the old one is unreadable"
        try:
            value = unseal(row.access_token, "a stored Zoho access token", again)
        except Misconfigured:
            return None  # a token sealed with another key is as good as none: a new one is fetched
        return AccessToken(value, row.api_domain, row.expires_at.timestamp())

    async def store(self, key: str, token: AccessToken) -> None:
        values = {
            "access_token": seal(token.value),
            "api_domain": token.api_domain,
            "expires_at": dt.datetime.fromtimestamp(token.expires_at, dt.UTC),
            "refreshing_until": None,
            "updated_at": utc_now(),
        }
        async with self.database.begin() as conn:
            await conn.execute(sa.update(TOKENS).where(TOKENS.c.cache_key == key).values(values))

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Held while this caller refreshes `key`'s token: across processes, by a lease on its row."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            await self._take_lease(key)
            try:
                yield
            finally:
                async with self.database.begin() as conn:
                    await conn.execute(sa.update(TOKENS).where(TOKENS.c.cache_key == key).values(refreshing_until=None))

    async def _take_lease(self, key: str) -> None:
        """Wait until this process holds the refresh lease of `key` (a lease older than LEASE is taken over)."""
        try:
            async with self.database.begin() as conn:
                await conn.execute(sa.insert(TOKENS).values(cache_key=key, updated_at=utc_now()))
        except IntegrityError:
            pass  # the row is there already
        while True:
            now = utc_now()
            async with self.database.begin() as conn:
                taken = await conn.execute(
                    sa.update(TOKENS)
                    .where(
                        TOKENS.c.cache_key == key,
                        sa.or_(TOKENS.c.refreshing_until.is_(None), TOKENS.c.refreshing_until < now),
                    )
                    .values(refreshing_until=now + LEASE)
                )
            if taken.rowcount == 1:
                return
            await asyncio.sleep(POLL)
