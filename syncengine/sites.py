"""Each tenant's Moodle site: its URL, its web-service token and its `max_input_vars` budget.

The token is written by `save_site` and read by `read_site` only (the delivery worker's): it is
never printed, logged or answered, and a `Site`'s repr leaves it out. Encryption at rest, should
it come, belongs in these two functions.

    await save_site(database, "default", "https://moodle.school.test", token, max_input_vars=1000)
    site = await read_site(conn, "default")     # Site(url=..., max_input_vars=1000), token hidden
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine.tables import engine_table

SITES = engine_table("syncengine_moodle_sites")
DEFAULT_MAX_INPUT_VARS = 1000


class SiteError(ValueError):
    """A Moodle site that cannot be stored as given."""


@dataclass(frozen=True)
class Site:
    tenant: str
    url: str
    token: str = field(repr=False)
    max_input_vars: int = DEFAULT_MAX_INPUT_VARS


def check_site(url: str, token: str, max_input_vars: int) -> None:
    """Refuse what would fail every call later: not an http(s) URL, an empty token, a tiny budget."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SiteError(
            f"the Moodle URL '{url}' is not an http(s) address: give the site's address, e.g. https://moodle.school.example"
        )
    if not token.strip() or any(c.isspace() for c in token.strip()):
        raise SiteError(
            "the token file holds no token (or one with spaces inside): put the web-service token alone in it"
        )
    if max_input_vars < 50:
        raise SiteError(
            f"--max-input-vars {max_input_vars} is too small to send one record: "
            "give the site's max_input_vars (PHP's default is 1000)"
        )


async def save_site(
    database: AsyncEngine, tenant: str, url: str, token: str, max_input_vars: int = DEFAULT_MAX_INPUT_VARS
) -> None:
    """Store (or replace) `tenant`'s Moodle site."""
    check_site(url, token, max_input_vars)
    values = {
        "url": url.rstrip("/"),
        "token": token.strip(),
        "max_input_vars": max_input_vars,
        "updated_at": dt.datetime.now(dt.UTC),
    }
    async with database.begin() as conn:
        changed = await conn.execute(sa.update(SITES).where(SITES.c.tenant_id == tenant).values(values))
        if changed.rowcount == 0:
            await conn.execute(sa.insert(SITES).values(tenant_id=tenant, **values))


async def read_site(conn: AsyncConnection, tenant: str) -> Site | None:
    """`tenant`'s Moodle site with its token, or None; for the delivery worker only."""
    row = (
        await conn.execute(
            sa.select(SITES.c.url, SITES.c.token, SITES.c.max_input_vars).where(SITES.c.tenant_id == tenant)
        )
    ).first()
    return None if row is None else Site(tenant, row.url, row.token, row.max_input_vars)
