"""Zoho notification channels: subscribing and renewing them, and taking in the callbacks Zoho sends.

    watched = await watch_tenant(catalog, database, "school", "https://sync.example.edu")  # `zoho watch`
    renewed = await renew_channels(catalog, database)       # every channel expiring within a day
    notification = parse_notification(body)                 # InvalidNotification: what and where
    accepted = await accept_notification(catalog, database, notification)   # queued for the intake worker

A tenant's entity has one channel (Zoho's Notifications API, reference §1.2): its `channel_id` is
ours to pick, Zoho POSTs `{ids, module, operation, channel_id, token, ...}` to the notify URL and
echoes the channel's token, which is random, at most 50 characters, and stored only as its
SHA-256. A callback is taken when its channel is known and its token matches (compared in
constant time; the token before the last renewal is still accepted, so a callback that crosses
a renewal is not lost) and its module is the channel's entity's `source`; its ids are queued
(intake.py) and the answer goes back at once. Channels expire after at most a week: they are
renewed (a new token and expiry, PUT on Zoho's side) when they expire within a day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.descriptors import Catalog, Entity
from syncengine.exceptions import BadInput, SyncEngineError
from syncengine.fieldtypes import utc_now
from syncengine.intake import OPERATIONS, queue_ids
from syncengine.tables import ZOHO_CHANNELS, engine_table
from syncengine.zoho import ZOHO_ID, ZohoClient, ZohoError
from syncengine.zoho_sites import open_zoho, zoho_tenants

log = logging.getLogger(__name__)

CHANNELS = engine_table(ZOHO_CHANNELS)
NOTIFY_PATH = "/v1/zoho/notifications"
#: A week is Zoho's maximum (more, or none, gives one hour): a little less, for clocks that differ.
LIFETIME = dt.timedelta(days=7) - dt.timedelta(minutes=10)
RENEW_WITHIN = dt.timedelta(days=1)
MAX_IDS = 10_000  # per callback: far above what Zoho batches, a bound on what one request queues
WATCH = "`syncengine zoho watch --tenant TENANT --url PUBLIC_BASE_URL`"


class ChannelRefused(SyncEngineError):
    """A callback whose channel is unknown or whose token does not match: nothing is queued."""

    code = "channel_refused"


class InvalidNotification(BadInput):
    """A callback body that is not Zoho's notification shape; the message says what and where."""

    code = "invalid_notification"


class UnknownModule(BadInput):
    """A callback for a module that no entity's `source` names, or not the module of its channel."""

    code = "unknown_module"


@dataclass(frozen=True)
class Notification:
    """What a callback says (reference §1.2); the other keys Zoho sends are not needed."""

    channel_id: int
    token: str | None
    module: str
    operation: str
    ids: list[str]


def parse_notification(body: bytes) -> Notification:
    """The notification in a callback body, or InvalidNotification saying what is wrong where."""
    shape = 'Zoho\'s callback: {"channel_id": ..., "token": ..., "module": ..., "operation": ..., "ids": [...]}'
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise InvalidNotification(f"the body is not JSON ({error}); send {shape}") from None
    if not isinstance(document, dict):
        raise InvalidNotification(f"the body is JSON but not an object; send {shape}")
    missing = [key for key in ("channel_id", "module", "operation", "ids") if key not in document]
    if missing:
        raise InvalidNotification(f"the body has no {', '.join(repr(k) for k in missing)}; send {shape}")
    channel_id, token, module = document["channel_id"], document.get("token"), document["module"]
    operation, ids = document["operation"], document["ids"]
    if isinstance(channel_id, str) and ZOHO_ID.fullmatch(channel_id):
        channel_id = int(channel_id)
    if not isinstance(channel_id, int) or isinstance(channel_id, bool) or not 0 < channel_id < 2**63:
        raise InvalidNotification(f'"channel_id" must be a whole number, got {_shown(channel_id)}')
    if token is not None and not isinstance(token, str):
        raise InvalidNotification(f'"token" must be text, got {_shown(token)}')
    if not isinstance(module, str) or not module:
        raise InvalidNotification(f'"module" must be a module\'s API name, got {_shown(module)}')
    if not isinstance(operation, str) or operation.lower() not in OPERATIONS:
        raise InvalidNotification(f'"operation" must be one of {", ".join(OPERATIONS)}, got {_shown(operation)}')
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_IDS:
        raise InvalidNotification(f'"ids" must be a list of 1 to {MAX_IDS} record ids, got {_shown(ids)}')
    for index, zoho_id in enumerate(ids):
        if isinstance(zoho_id, int) and not isinstance(zoho_id, bool) and zoho_id > 0:
            zoho_id = ids[index] = str(zoho_id)
        if not isinstance(zoho_id, str) or not ZOHO_ID.fullmatch(zoho_id):
            raise InvalidNotification(f'"ids"[{index}] must be a Zoho record id (digits), got {_shown(zoho_id)}')
    return Notification(channel_id, token, module, operation.lower(), ids)


@dataclass(frozen=True)
class Accepted:
    tenant: str
    entity: str
    queued: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _matches(token: str | None, *stored: str | None) -> bool:
    """Whether `token` is one of the stored tokens: every comparison made, each in constant time."""
    digest = _digest(token or "")
    found = False
    for candidate in stored:
        found |= hmac.compare_digest(digest, candidate or "!" * 64) and token is not None
    return found


async def accept_notification(catalog: Catalog, database: AsyncEngine, notification: Notification) -> Accepted:
    """Queue a callback's ids for its channel's tenant and entity, in one transaction; ChannelRefused
    (nothing queued) for an unknown channel or a wrong token, UnknownModule for a module that is
    not the channel's."""
    c = CHANNELS
    async with database.connect() as conn:
        row = (await conn.execute(sa.select(c).where(c.c.channel_id == notification.channel_id))).first()
    stored = (row.token_hash, row.previous_token_hash) if row is not None else (None, None)
    if not _matches(notification.token, *stored) or row is None:  # the same work for an unknown channel
        raise ChannelRefused(
            f"the callback's channel_id {notification.channel_id} and token match no channel of this service: "
            f"a callback is taken only from a channel that {WATCH} subscribed, with the token it was given"
        )
    entity = catalog.entities.get(row.entity)
    sources = {e.source: e for e in catalog}
    if notification.module not in sources:
        raise UnknownModule(
            f'"module": no entity has the source {notification.module!r} (known: {", ".join(sources)}); '
            "add the module to entities.yaml, or stop its notifications"
        )
    if entity is None or sources[notification.module] is not entity:
        expected = entity.source if entity is not None else f"none (entity '{row.entity}' is gone)"
        raise UnknownModule(
            f'"module": channel {notification.channel_id} is for module {expected}, '
            f"not {notification.module!r}: run {WATCH} to subscribe each entity's own channel"
        )
    async with database.begin() as conn:
        queued = await queue_ids(
            conn, row.tenant_id, entity.name, notification.operation, notification.ids, channel_id=row.channel_id
        )
    return Accepted(row.tenant_id, entity.name, queued)


# Subscribing and renewing.


@dataclass(frozen=True)
class Watched:
    """What `watch_tenant` / `renew_channels` did for one entity: subscribed, renewed, or why not."""

    tenant: str
    entity: str
    channel_id: int | None
    action: str  # "subscribed", "renewed", "skipped" (another process renews it) or "failed"
    expires_at: dt.datetime | None = None
    error: str | None = None


def notify_url(base_url: str) -> str:
    """The callback address Zoho is given for `base_url` (where the service is reached from Zoho)."""
    if not base_url.startswith(("https://", "http://")):
        raise BadInput(f"the public URL must start with https:// (or http://), got {base_url!r}")
    return base_url.rstrip("/") + NOTIFY_PATH


async def watch_tenant(
    catalog: Catalog, database: AsyncEngine, tenant: str, base_url: str, **zoho_options: Any
) -> list[Watched]:
    """Subscribe (or renew) the channel of every entity of `tenant`, with callbacks to `base_url`."""
    url = notify_url(base_url)
    async with database.connect() as conn:
        rows = {r.entity: r for r in await conn.execute(sa.select(CHANNELS).where(CHANNELS.c.tenant_id == tenant))}
    async with await open_zoho(database, tenant, **zoho_options) as zoho:
        return [await _watch(database, zoho, tenant, entity, url, rows.get(entity.name)) for entity in catalog]


async def renew_channels(
    catalog: Catalog, database: AsyncEngine, within: dt.timedelta = RENEW_WITHIN, **zoho_options: Any
) -> list[Watched]:
    """Renew every channel that expires within `within`, at the notify URL it has."""
    c = CHANNELS
    async with database.connect() as conn:
        due = list(await conn.execute(sa.select(c).where(c.c.expires_at < utc_now() + within).order_by(c.c.id)))
        tenants = set(await zoho_tenants(conn))
    done: list[Watched] = []
    for tenant in sorted({r.tenant_id for r in due}):
        rows = [r for r in due if r.tenant_id == tenant and r.entity in catalog.entities]
        if tenant not in tenants or not rows:
            continue
        async with await open_zoho(database, tenant, **zoho_options) as zoho:
            for row in rows:
                done.append(await _watch(database, zoho, tenant, catalog.entities[row.entity], row.notify_url, row))
    return done


async def _watch(database: AsyncEngine, zoho: ZohoClient, tenant: str, entity: Entity, url: str, row: Any) -> Watched:
    """Subscribe `entity`'s channel, or renew `row`; a Zoho failure is this entity's result."""
    c, now = CHANNELS, utc_now()
    token = secrets.token_urlsafe(30)  # 40 characters: Zoho takes at most 50
    expiry = now + LIFETIME
    if row is None:
        channel_id = secrets.randbelow(2**53 - 10**12) + 10**12  # JavaScript-safe, as Zoho's own are
        values = {"tenant_id": tenant, "entity": entity.name, "channel_id": channel_id, "token_hash": _digest(token),
                  "notify_url": url, "expires_at": expiry, "updated_at": now}  # fmt: skip
        try:  # stored first (due for no renewal), so a callback that arrives before Zoho's answer is taken
            async with database.begin() as conn:
                await conn.execute(sa.insert(c).values(values))
        except IntegrityError:
            return Watched(tenant, entity.name, None, "skipped", error="another process subscribes it right now")
        undo: sa.Delete | sa.Update = sa.delete(c).where(c.c.channel_id == channel_id)
    else:
        channel_id = int(row.channel_id)
        async with database.begin() as conn:  # the renewal is this process's if the token is still the one read
            taken = await conn.execute(
                sa.update(c)
                .where(c.c.id == row.id, c.c.token_hash == row.token_hash)
                .values(token_hash=_digest(token), previous_token_hash=row.token_hash, notify_url=url, updated_at=now)
            )
        if taken.rowcount != 1:
            return Watched(tenant, entity.name, channel_id, "skipped", error="another process renews it right now")
        undo = (
            sa.update(c)
            .where(c.c.id == row.id, c.c.token_hash == _digest(token))
            .values(token_hash=row.token_hash, previous_token_hash=row.previous_token_hash, notify_url=row.notify_url)
        )
    events = [f"{entity.source}.all"]
    try:  # Zoho forgets an expired channel: it is subscribed again under its id
        renew = row is not None and row.expires_at > now
        expires = await zoho.watch(channel_id, events, url, token, expiry, renew=renew)
    except ZohoError as error:
        async with database.begin() as conn:
            await conn.execute(undo)
        log.warning("zoho watch failed", extra={"fields": {"tenant": tenant, "entity": entity.name}})
        return Watched(tenant, entity.name, channel_id, "failed", error=str(error))
    async with database.begin() as conn:
        await conn.execute(sa.update(c).where(c.c.channel_id == channel_id).values(expires_at=expires))
    return Watched(tenant, entity.name, channel_id, "renewed" if row is not None else "subscribed", expires)


def _shown(value: Any) -> str:
    """A value as JSON, cut short: for messages."""
    return msgspec.json.encode(value).decode()[:40]
