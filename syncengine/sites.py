"""Each tenant's Moodle site: its URL, its web-service token and its `max_input_vars` budget.

The token is written by `save_site` and read by `read_site` only (the delivery worker's): it is
never printed, logged or answered, and a `Site`'s repr leaves it out. With SYNCENGINE_SECRET_KEY
set (a Fernet key), `save_site` stores it encrypted (`fernet:...`) and `read_site` decrypts it;
without the key it is stored as given, for the service alone to read. `check_moodle` asks a site
which web-service functions its token may call and lists those the mappings need but lack.

    await save_site(database, "default", "https://moodle.school.test", token, max_input_vars=1000)
    site = await read_site(conn, "default")     # Site(url=..., max_input_vars=1000), token hidden
    report = await check_moodle(catalog, site)  # MoodleCheck(release="4.5.11+ ...", missing={...})
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine.descriptors import Catalog
from syncengine.exceptions import BadInput
from syncengine.moodle import MoodleClient
from syncengine.tables import engine_table
from syncengine.targets import SITE_INFO, needed_functions
from syncengine.vault import seal, unseal

SITES = engine_table("syncengine_moodle_sites")
DEFAULT_MAX_INPUT_VARS = 1000


class SiteError(BadInput):
    """A Moodle site that cannot be stored as given."""

    code = "invalid_moodle_site"


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
        "token": seal(token.strip()),
        "max_input_vars": max_input_vars,
        "updated_at": dt.datetime.now(dt.UTC),
    }
    async with database.begin() as conn:
        changed = await conn.execute(sa.update(SITES).where(SITES.c.tenant_id == tenant).values(values))
        if changed.rowcount == 0:
            await conn.execute(sa.insert(SITES).values(tenant_id=tenant, **values))


async def read_site(conn: AsyncConnection, tenant: str) -> Site | None:
    """`tenant`'s Moodle site with its token, or None; for the delivery worker only.

    A token stored encrypted needs the SYNCENGINE_SECRET_KEY it was stored with (SecretKeyError)."""
    row = (
        await conn.execute(
            sa.select(SITES.c.url, SITES.c.token, SITES.c.max_input_vars).where(SITES.c.tenant_id == tenant)
        )
    ).first()
    if row is None:
        return None
    again = f"store the token again: `syncengine tenant moodle {tenant} --url URL --token-file FILE`"
    token = unseal(row.token, f"tenant '{tenant}''s Moodle token", again)
    return Site(tenant, row.url, token, row.max_input_vars)


async def site_tenants(conn: AsyncConnection) -> list[str]:
    """The tenants that have a Moodle site, by name."""
    return [row[0] for row in await conn.execute(sa.select(SITES.c.tenant_id).order_by(SITES.c.tenant_id))]


@dataclass(frozen=True)
class MoodleCheck:
    """What `core_webservice_get_site_info` said of a site, and the functions the mappings need that
    the token's service lacks, each with the targets (`entity.target (kind)`) that call it."""

    sitename: str
    release: str
    needed: tuple[str, ...]
    missing: dict[str, list[str]]


def mapped_functions(catalog: Catalog) -> dict[str, list[str]]:
    """Every web-service function the catalog's mappings call, with the targets calling it."""
    needed: dict[str, list[str]] = {SITE_INFO: ["syncengine moodle check"]}
    for entity in catalog:
        for target in entity.moodle or ():
            for function in needed_functions(target.kind.name, target.leave):
                needed.setdefault(function, []).append(f"{entity.name}.{target.name} ({target.kind.name})")
    return needed


async def check_moodle(catalog: Catalog, site: Site) -> MoodleCheck:
    """Ask `site` what its token may call; MoodleError where the site or the token is wrong."""
    needed = mapped_functions(catalog)
    async with MoodleClient(site.url, site.token, timeout=15.0) as client:
        info = await client.site_info()
    missing = {name: users for name, users in needed.items() if name not in info.functions}
    return MoodleCheck(info.sitename, info.release, tuple(needed), missing)
