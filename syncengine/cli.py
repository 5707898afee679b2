"""The `syncengine` command: check descriptors, dry-run payloads, migrate, manage tenants, serve HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from syncengine.config import Settings
from syncengine.descriptors import Catalog, DescriptorError, Entity, load_catalog
from syncengine.engine import SyncEngine
from syncengine.exceptions import (
    BadInput,
    Conflict,
    DatabaseBusy,
    DatabaseNotOpened,
    DatabaseUnavailable,
    Misconfigured,
    NotFound,
    SyncEngineError,
    Unavailable,
)
from syncengine.payloads import FORM_CONTENT_TYPE, PayloadError, parse_body
from syncengine.report import SyncReport
from syncengine.spec import json_schema
from syncengine.store import translate
from syncengine.zoho import DATA_CENTRES

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from syncengine.queues import Page

ENTITIES_OPTION = click.option(
    "--entities",
    type=click.Path(path_type=Path),
    help="The descriptor file (default: $SYNCENGINE_ENTITIES or ./entities.yaml).",
)


def _settings(entities: Path | None) -> Settings:
    settings = Settings.from_env()
    if entities is not None:
        settings = dataclasses.replace(settings, entities=entities)
    return settings


def _fail(message: str, kind: type[SyncEngineError] | int = SyncEngineError) -> None:
    """Stop the command: `message` on standard error, and the exit status of a failure of `kind`
    (or `kind` itself, a status of no failure of the engine's: 130 after Ctrl-C)."""
    click.echo(f"error: {_pasteable(message)}", err=True)
    sys.exit(kind if isinstance(kind, int) else exit_status(kind))


#: The one table from the engine's failures to exit statuses (README.md, "Exit statuses"): a
#: failure exits with the status of the first of its classes (its own, then its branch's) found
#: here. 2 is also click's own status for a usage error; a script may retry after a 5.
EXIT_STATUS: dict[type[SyncEngineError], int] = {
    SyncEngineError: 1,
    BadInput: 2,
    NotFound: 3,
    Conflict: 4,
    Unavailable: 5,
    Misconfigured: 6,
    DatabaseNotOpened: 6,  # a SQLite file whose folder is missing or not writable: no retry helps
}


def exit_status(kind: type[SyncEngineError]) -> int:
    """The exit status of a failure of class `kind`: see `EXIT_STATUS`."""
    return next(EXIT_STATUS[cls] for cls in kind.__mro__ if cls in EXIT_STATUS)


def _pasteable(message: str) -> str:
    """`message` with its `syncengine ...` hints (from any module) spelled as this shell can run them."""
    from syncengine.startup import command_name

    command = command_name()
    return message if command == "syncengine" else message.replace("`syncengine ", f"`{command} ")


def _prepare(settings: Settings) -> None:
    """Bring the schema up (SQLite, silently) or check it (PostgreSQL), as every command that
    needs it does; a problem stops the command with its message."""
    from syncengine import startup

    startup.prepare_schema(settings)


def _require_tenant(settings: Settings, name: str) -> None:
    from syncengine import startup

    known = startup.tenant_names(settings)
    if name not in known:
        _fail(startup.unknown_tenant_message(name, known), NotFound)


class _Commands(click.Group):
    """The one place where the engine's failures (and the database's, as the store translates
    them) end a command: one line, its message, and the status of `EXIT_STATUS`; no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            failure = translate(error)
            if failure is None:
                raise
            _fail(_failure_message(failure), type(failure))


def _failure_message(failure: SyncEngineError) -> str:
    """What a command says of a failure: its message, with the database's URL (without the
    password) and what to check where the database is the trouble."""
    from syncengine.config import DEFAULT_DATABASE_URL

    if isinstance(failure, DescriptorError):
        return f"the descriptor file has problems; run `syncengine check`:\n{failure}"
    url = _safe_url(os.environ.get("SYNCENGINE_DATABASE_URL") or DEFAULT_DATABASE_URL)
    check = "check that SYNCENGINE_DATABASE_URL is right"
    if isinstance(failure, DatabaseBusy):
        return f"the database at {url} is busy ({failure.reason}); try again, or raise SYNCENGINE_DB_LOCK_TIMEOUT"
    if isinstance(failure, DatabaseNotOpened):
        why = failure.reason
        return f"cannot open the database at {url} ({why}): {check}, and that its folder exists and is writable"
    if isinstance(failure, DatabaseUnavailable):
        reason = failure.reason
        return f"cannot reach the database at {url} ({reason}): {check}, and that it runs and accepts connections there"
    return str(failure)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """syncengine: Zoho CRM records in, validated and fingerprinted, out to Moodle."""


@main.command()
@ENTITIES_OPTION
def check(entities: Path | None) -> None:
    """Validate the descriptor file; report every problem as FILE:LINE:COL: message."""
    settings = _settings(entities)
    try:
        catalog = load_catalog(settings.entities)
    except DescriptorError as error:
        for problem in error.problems:
            click.echo(str(problem))
        count = len(error.problems)
        click.echo(f"{count} problem{'s' if count != 1 else ''} in {settings.entities}", err=True)
        sys.exit(1)
    fields = sum(len(entity.fields) for entity in catalog)
    click.echo(
        f"{settings.entities}: OK, {len(catalog.entities)} entities, {fields} fields ({', '.join(catalog.entities)})"
    )


@main.command()
def schema() -> None:
    """Print the JSON Schema of entities.yaml (for editors)."""
    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


#: A body that starts with `name=` is a form: no JSON text can (a bare JSON word is never followed by `=`).
_FORM_START = re.compile(rb"\s*[^\s{}\[\]\"=&]*=")


def read_records(file: Path, form: bool = False, entity: Entity | None = None) -> list[Any]:
    """The records of a payload file ("-": standard input), in any shape the HTTP endpoint takes:
    JSON (an envelope, an array, a record, a notification callback) or a form body, told by its
    content (it starts with `name=`) or by `form`. With `entity`, a form's keys are matched to its
    fields as the endpoint matches them (any case, aliases)."""
    try:
        body = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as error:
        _fail(f"cannot read {file}: {error.strerror}", BadInput)
    is_form = form or _FORM_START.match(body) is not None
    try:
        return parse_body(body, FORM_CONTENT_TYPE if is_form else "application/json", entity)
    except PayloadError as error:
        _fail(f"{file}: {error}", type(error))
    raise AssertionError("unreachable")  # _fail exits


@main.command("dry-run")
@click.argument("entity")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--tenant", default="default", show_default=True, help="The tenant whose data to compare with.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the HTTP endpoint returns.")
@click.option("--form", is_flag=True, help="Read FILE as a form body (one that starts with name= is one anyway).")
@ENTITIES_OPTION
def dry_run(entity: str, file: Path, tenant: str, as_json: bool, form: bool, entities: Path | None) -> None:
    """Show what syncing FILE into ENTITY would do, without writing anything.

    FILE holds any body POST /v1/sync/ENTITY takes: {"data": [...]}, a JSON array of records, one
    record, a notification callback, or a form body ("-" reads standard input).
    """
    settings = _settings(entities)
    records = read_records(file, form, _entity(settings, entity))
    _prepare(settings)
    _require_tenant(settings, tenant)
    (report,) = _sync(settings, tenant, [(entity, records)], dry_run=True)
    if as_json:
        click.echo(msgspec.json.encode(report.to_builtins()).decode())
    else:
        click.echo(render_table(report))


@main.command()
@click.argument("target", metavar="ENTITY FILE | FOLDER")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--tenant", default="default", show_default=True, help="The tenant to load into.")
@ENTITIES_OPTION
def load(target: str, file: Path | None, tenant: str, entities: Path | None) -> None:
    """Sync an export FILE into ENTITY, streaming; or each ENTITY.json of FOLDER, parents first.

    FILE is a JSON array of records, Zoho's {"data": [...]} pages (one, several, or one a line),
    NDJSON, or Zoho's CSV export with API-name headers. It is read a record at a time and synced
    1,000 records a transaction, with a progress bar; a line that holds no record is reported with
    its number and skipped. A summary per status ends it.

    FOLDER (`load samples`: a sample school): each file holds any JSON body POST /v1/sync/ENTITY
    takes, and every record's result is printed. A second load of the same files reports UNCHANGED.
    """
    settings = _settings(entities)
    if file is not None:
        _load_file(settings, target, file, tenant)
        return
    folder = Path(target)
    if not folder.is_dir():
        _fail(
            f"{folder} is not a folder: `syncengine load FOLDER` loads each ENTITY.json of a folder, "
            "`syncengine load ENTITY FILE` one export file"
        )
    catalog = _catalog(settings)
    files = {path.stem: path for path in sorted(folder.glob("*.json"))}
    unknown = sorted(set(files) - set(catalog.entities))
    if unknown:
        _fail(
            f"{files[unknown[0]]}: no entity '{unknown[0]}' (known: {', '.join(catalog.entities)}); "
            "name each file after the entity its records are for",
            NotFound,
        )
    if not files:
        example = folder / f"{next(iter(catalog.entities))}.json"
        _fail(f"no .json files in {folder}: name each file after its entity, e.g. {example}", BadInput)
    batches = [
        (name, read_records(files[name], entity=described))
        for name, described in catalog.entities.items()
        if name in files
    ]
    _prepare(settings)
    _require_tenant(settings, tenant)
    reports = _sync(settings, tenant, batches, dry_run=False)
    click.echo("\n\n".join(render_table(report, written=True) for report in reports))


def _load_file(settings: Settings, entity: str, file: Path, tenant: str) -> None:
    from syncengine.exports import ExportReader, load_file
    from syncengine.progress import Bar, summary

    name = _entity(settings, entity).name
    _prepare(settings)
    _require_tenant(settings, tenant)
    bar = Bar(of_bytes=True)

    async def run() -> None:
        engine = SyncEngine.open(settings)
        try:
            with bar.shown():
                tally = await load_file(engine, tenant, name, ExportReader(file), bar)
        finally:
            await engine.close()
        click.echo(summary([tally]))
        bad = tally.counts.get("bad lines", 0)
        click.echo(
            f"loaded {file} into {name}: {tally.records:,} records"
            + (f"; lines holding no record, skipped: {bad:,}" if bad else ""),
            err=True,
        )

    asyncio.run(run())


@main.command()
@click.argument("entity_names", nargs=-1, metavar="[ENTITY]...")
@click.option("--tenant", required=True, help="The tenant whose Zoho CRM to read (`syncengine tenant zoho`).")
@click.option(
    "--since", default=None, help="Only records changed after this ISO date-time (or date, UTC), and deletions."
)
@click.option("--restart", is_flag=True, help="Start over, leaving any interrupted backfill's cursor.")
@ENTITIES_OPTION
def backfill(
    entity_names: tuple[str, ...], tenant: str, since: str | None, restart: bool, entities: Path | None
) -> None:
    """Pull every record of ENTITY... (every entity, parents first, when none is named) from the
    tenant's Zoho CRM through the pipeline, 1,000 records a transaction, with a progress bar.

    Interrupted, it resumes where it stopped when run again (with the same --since); a finished
    one starts over. With --since, records deleted in Zoho since then are synced as deletions.
    """
    from syncengine.backfill import Backfill
    from syncengine.progress import Bar, summary
    from syncengine.zoho import ZohoError
    from syncengine.zoho_sites import open_zoho

    settings = _settings(entities)
    moment = _moment(since) if since is not None else None
    catalog = _catalog(settings)
    for name in entity_names:
        catalog.entity(name)  # an unknown name stops here, listing the known ones
    _prepare(settings)
    _require_tenant(settings, tenant)
    bar = Bar()

    async def run() -> None:
        engine = SyncEngine.open(settings)
        try:
            async with await open_zoho(engine.database, tenant) as zoho:
                work = Backfill(engine, zoho, tenant, since=moment, restart=restart, listener=bar)
                with bar.shown():
                    tallies = await work.run(work.order(entity_names))
        finally:
            await engine.close()
        click.echo(summary(tallies))
        click.echo(f"backfill of tenant '{tenant}' done: {sum(t.records for t in tallies):,} records", err=True)

    try:
        asyncio.run(run())
    except ZohoError as error:
        _fail(f"{error}; what was synced is kept: run the same command again to resume", type(error))
    except KeyboardInterrupt:
        _fail("interrupted; what was synced is kept: run the same command again to resume", 130)


def _moment(text: str) -> dt.datetime:
    """--since: an ISO date-time with its offset, or a date (00:00 UTC)."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        _fail(
            f"--since {text!r} is not an ISO date-time: write it as 2026-02-01T00:00:00+03:00 or 2026-02-01", BadInput
        )
    if moment.tzinfo is None:
        if len(text) > 10:
            _fail(f"--since {text!r} has no offset: add one, as in {text}+00:00", BadInput)
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


def _catalog(settings: Settings) -> Catalog:
    return load_catalog(settings.entities)


def _entity(settings: Settings, entity: str) -> Entity:
    return _catalog(settings).entity(entity)


def _sync(settings: Settings, tenant: str, batches: list[tuple[str, list[Any]]], *, dry_run: bool) -> list[SyncReport]:
    """Sync each (entity, records) in turn, in one engine; their reports."""

    async def run() -> list[SyncReport]:
        engine = SyncEngine.open(settings)
        try:
            return [await engine.sync(tenant, entity, records, dry_run=dry_run) for entity, records in batches]
        finally:
            await engine.close()

    return asyncio.run(run())


def render_table(report: SyncReport, *, written: bool = False) -> str:
    """A readable table of a report: one line per record, details indented under it."""
    id_width = max([len(report.id_key), *(len(r.zoho_id or "-") for r in report.results)])
    lines = [f"{'#':>4}  {report.id_key:<{id_width}}  {'STATUS':<9}  MESSAGE"]
    for number, result in enumerate(report.results, 1):
        lines.append(f"{number:>4}  {result.zoho_id or '-':<{id_width}}  {result.status:<9}  {result.message}")
        for name, (old, new) in (result.changes or {}).items():
            lines.append(f"{'':>{id_width + 18}}{name}: {_show(old)} -> {_show(new)}")
    summary = ", ".join(f"{status} {count}" for status, count in report.summary.items() if count)
    done = "synced" if written else "dry run of"
    nothing = "" if written else ", nothing written"
    lines.append(f"{done} {len(report.results)} {report.entity} records{nothing}: {summary or 'no records'}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return msgspec.json.encode(value).decode()


@main.group()
def db() -> None:
    """Database schema: apply and generate Alembic migrations."""


@db.command()
@click.option("--revision", default="head", show_default=True)
@ENTITIES_OPTION
def upgrade(revision: str, entities: Path | None) -> None:
    """Apply migrations to $SYNCENGINE_DATABASE_URL."""
    from syncengine import migrate

    settings = _settings(entities)
    click.echo(f"upgrading {_safe_url(settings.database_url)} to {revision} ...", err=True)
    applied = migrate.upgrade(settings, revision)
    for script in applied:
        click.echo(f"applied {script.revision}: {script.doc}", err=True)
    if applied:
        click.echo(f"database is now at {applied[-1].revision}", err=True)
    else:
        click.echo(f"database is up to date ({revision}): nothing to apply", err=True)


@db.command()
@click.option("-m", "--message", required=True, help="What the migration does.")
@ENTITIES_OPTION
def revision(message: str, entities: Path | None) -> None:
    """Generate a migration from the difference between entities.yaml and the database.

    The database must be at the latest revision first (`syncengine db upgrade`).
    """
    from syncengine import migrate

    settings = _settings(entities)
    _prepare(settings)
    try:
        path = migrate.revision(settings, message)
    except SyncEngineError:
        raise
    except Exception as error:  # alembic raises CommandError for "not up to date" and similar
        _fail(f"{error}; run `syncengine db upgrade` first if the database is behind", Misconfigured)
    if path is None:
        click.echo(f"nothing to do: the database already matches {settings.entities}; no migration written")
        return
    click.echo(_pasteable(f"wrote {path}; review it, then run `syncengine db upgrade`"))


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8000, type=click.IntRange(0, 65535), show_default=True)
@click.option("--workers", default=1, type=click.IntRange(min=1), show_default=True, help="Worker processes.")
@click.option(
    "--no-worker",
    is_flag=True,
    help="No delivery to Moodle, no Zoho intake and no channel renewal here: run `syncengine worker` apart.",
)
@ENTITIES_OPTION
def serve(host: str, port: int, workers: int, no_worker: bool, entities: Path | None) -> None:
    """Serve the HTTP API: POST /v1/sync/{entity} for every entity, OpenAPI at /schema.

    On SQLite the migrations are applied first; on PostgreSQL the schema must be current
    (`syncengine db upgrade`). With no tenant yet, `default` is created and its key printed once.
    """
    import uvicorn

    from syncengine import startup
    from syncengine.edge import HeaderTimeout

    settings = _settings(entities)
    catalog = _catalog(settings)
    busy = startup.port_problem(host, port)
    if busy is not None:  # before a first key is made and shown for a server that cannot start
        _fail(busy, BadInput)
    _prepare(settings)
    key = startup.first_tenant_key(settings)
    if key is not None:
        click.echo(startup.first_run_message(catalog, key, host, port))
    else:
        click.echo(startup.lost_key_hint(startup.tenant_names(settings)), err=True)
    click.echo(
        f"serving {len(catalog.entities)} entities on http://{host}:{port} ({_safe_url(settings.database_url)})",
        err=True,
    )
    os.environ["SYNCENGINE_ENTITIES"] = str(settings.entities)  # for the workers' app factory
    if no_worker:
        os.environ["SYNCENGINE_DELIVERY_WORKER"] = "0"
        os.environ["SYNCENGINE_INTAKE_WORKER"] = "0"
    uvicorn.run(
        "syncengine.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # the app logs one JSON line per request
        log_level="warning",
        timeout_keep_alive=settings.keep_alive_timeout,  # an idle connection holds nothing for long
        http=HeaderTimeout,  # nor one that trickles its headers (SYNCENGINE_HEADER_TIMEOUT)
    )


@main.group()
def tenant() -> None:
    """Tenants and their API keys (a key is printed once, on standard output)."""


def _run_tenant_command(entities: Path | None, command: Any) -> Any:
    """Bring the schema up (SQLite) or check it (PostgreSQL), then run `command(database)`."""
    from syncengine.store import open_database

    settings = _settings(entities)
    _prepare(settings)

    async def run() -> Any:
        database = open_database(settings.database_url, settings.database_timeouts)
        try:
            return await command(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


@tenant.command("add")
@click.argument("name")
@ENTITIES_OPTION
def tenant_add(name: str, entities: Path | None) -> None:
    """Create tenant NAME and print its API key (shown only this once)."""
    from syncengine.tenants import add_tenant

    key = _run_tenant_command(entities, lambda database: add_tenant(database, name))
    click.echo(f"created tenant '{name}'; its API key (shown only this once):", err=True)
    click.echo(key)


@tenant.command("key")
@click.argument("name")
@ENTITIES_OPTION
def tenant_key(name: str, entities: Path | None) -> None:
    """Give tenant NAME a new API key and print it; the old key stops working within a second."""
    from syncengine.tenants import rotate_key

    key = _run_tenant_command(entities, lambda database: rotate_key(database, name))
    click.echo(f"new API key for tenant '{name}' (the old one no longer works; shown only this once):", err=True)
    click.echo(key)


@tenant.command("list")
@ENTITIES_OPTION
def tenant_list(entities: Path | None) -> None:
    """List tenants with when they were created and when their key was issued."""
    from syncengine.tenants import list_tenants

    tenants = _run_tenant_command(entities, list_tenants)
    if not tenants:
        click.echo(_pasteable("no tenants yet: `syncengine tenant add NAME` creates one"), err=True)
        return
    width = max(len("NAME"), *(len(t.name) for t in tenants))
    click.echo(f"{'NAME':<{width}}  {'CREATED':<20}  KEY ISSUED")
    for t in tenants:
        created, issued = (value.strftime("%Y-%m-%d %H:%M:%SZ") for value in (t.created_at, t.key_created_at))
        click.echo(f"{t.name:<{width}}  {created:<20}  {issued}")


@tenant.command("moodle")
@click.argument("name")
@click.option("--url", required=True, help="The Moodle site's address (its wwwroot).")
@click.option(
    "--token-file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="A file holding the web-service token alone, or - for standard input.",
)
@click.option("--max-input-vars", default=1000, show_default=True, type=int, help="The site's PHP max_input_vars.")
@ENTITIES_OPTION
def tenant_moodle(name: str, url: str, token_file: Path, max_input_vars: int, entities: Path | None) -> None:
    """Store tenant NAME's Moodle site and token (the token is never printed)."""
    from syncengine.sites import save_site

    try:
        token = sys.stdin.read() if str(token_file) == "-" else token_file.read_text()
    except OSError as error:
        _fail(f"cannot read the token file {token_file} ({error.strerror}): check the path", BadInput)
    settings = _settings(entities)
    _require_tenant(settings, name)
    _run_tenant_command(entities, lambda database: save_site(database, name, url, token, max_input_vars))
    click.echo(f"tenant '{name}' delivers to {url.rstrip('/')} (max_input_vars {max_input_vars})", err=True)


def _read_secret(path: Path, what: str) -> str:
    """The secret alone in `path` (or standard input for -); one line saying what to fix otherwise."""
    try:
        secret = (sys.stdin.read() if str(path) == "-" else path.read_text()).strip()
    except OSError as error:
        _fail(f"cannot read the {what} file {path} ({error.strerror}): check the path", BadInput)
    if not secret or any(c.isspace() for c in secret):
        _fail(
            f"the {what} file {path} holds no {what} (or one with spaces inside): put the {what} alone in it", BadInput
        )
    return secret


SECRET_FILE = click.Path(path_type=Path, dir_okay=False, allow_dash=True)


@tenant.command("zoho")
@click.argument("name")
@click.option("--dc", required=True, type=click.Choice(sorted(DATA_CENTRES)), help="The Zoho data centre.")
@click.option("--client-id", required=True, help="The client id from api-console.zoho.com.")
@click.option("--client-secret-file", required=True, type=SECRET_FILE, help="A file holding the client secret alone.")
@click.option("--refresh-token-file", required=True, type=SECRET_FILE, help="A file holding the refresh token alone.")
@click.option("--accounts-url", default=None, help="Overrides the data centre's accounts host (sandboxes, tests).")
@click.option("--api-url", default=None, help="Overrides the API host Zoho names (sandboxes, tests).")
@click.option("--no-check", is_flag=True, help="Store without asking Zoho for an access token first.")
@ENTITIES_OPTION
def tenant_zoho(
    name: str,
    dc: str,
    client_id: str,
    client_secret_file: Path,
    refresh_token_file: Path,
    accounts_url: str | None,
    api_url: str | None,
    no_check: bool,
    entities: Path | None,
) -> None:
    """Store tenant NAME's Zoho CRM credentials (never printed); first check that Zoho grants a token."""
    from syncengine.zoho import Credentials, ZohoClient, ZohoError
    from syncengine.zoho_sites import DatabaseTokenCache, save_zoho

    secret = _read_secret(client_secret_file, "client secret")
    refresh = _read_secret(refresh_token_file, "refresh token")
    credentials = Credentials(client_id.strip(), secret, refresh, dc, accounts_url, api_url)
    settings = _settings(entities)
    _require_tenant(settings, name)

    async def store(database: AsyncEngine) -> str | None:
        where = None
        if not no_check:  # the token it fetches is cached, so the check spends none of Zoho's ten
            async with ZohoClient(credentials, cache=DatabaseTokenCache(database), max_attempts=2) as zoho:
                where = await zoho.api_domain()
        await save_zoho(database, name, credentials)
        return where

    try:
        where = _run_tenant_command(entities, store)
    except ZohoError as error:
        _fail(f"Zoho refused the credentials, nothing was stored: {error}", type(error))
    reads = f"; Zoho granted a token for {where}" if where else " (not checked)"
    click.echo(f"tenant '{name}' reads Zoho CRM ({dc}){reads}", err=True)


@main.command()
@click.option("--tenant", default=None, help="Deliver this tenant's changes only (default: every tenant).")
@ENTITIES_OPTION
def worker(tenant: str | None, entities: Path | None) -> None:
    """Deliver stored changes to each tenant's Moodle, and fetch and sync the ids Zoho notified
    (the intake queue), until Ctrl-C or SIGTERM."""
    import signal

    from syncengine.delivery import Worker
    from syncengine.intake import IntakeWorker
    from syncengine.store import open_database

    settings = _settings(entities)
    catalog = _catalog(settings)
    _prepare(settings)
    if tenant is not None:
        _require_tenant(settings, tenant)

    async def run() -> None:
        database = open_database(settings.database_url, settings.database_timeouts)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        progress = Worker(catalog, database, settings.delivery_policy, tenant=tenant)
        progress.on_round = lambda counts: click.echo(f"{counts} (total: {progress.totals})", err=True)
        engine = SyncEngine(catalog, database, max_version_skew=settings.max_version_skew)
        engine.on_commit = progress.wake  # what the intake syncs is delivered without waiting for a poll
        intake = IntakeWorker(engine, settings.intake_policy, tenant=tenant)
        intake.on_round = lambda counts: click.echo(f"{counts} (total: {intake.totals})", err=True)
        click.echo(f"delivering {'tenant ' + tenant if tenant else 'every tenant'}; Ctrl-C stops", err=True)
        try:
            await asyncio.gather(progress.run(stop), intake.run(stop))
        finally:
            await engine.close()

    asyncio.run(run())


@main.group()
def deliveries() -> None:
    """The outbox: what is on its way to Moodle, what is dead, and sending it again."""


@deliveries.command("list")
@click.option("--tenant", default=None, help="One tenant's deliveries (default: every tenant's).")
@click.option("--state", type=click.Choice(["pending", "working", "waiting", "done", "dead"]), default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Rows shown.")
@click.option("--after-id", default=None, type=click.IntRange(min=0), help="Rows after this id (the next page).")
@click.option("--json", "as_json", is_flag=True, help='Print {"counts": ..., "deliveries": [...]} as JSON.')
@ENTITIES_OPTION
def deliveries_list(
    tenant: str | None, state: str | None, limit: int, after_id: int | None, as_json: bool, entities: Path | None
) -> None:
    """List deliveries, oldest first, with counts per state."""
    from syncengine.deliveries import list_deliveries

    settings = _settings(entities)
    catalog = _catalog(settings)
    if tenant is not None:
        _require_tenant(settings, tenant)
    page = _run_tenant_command(
        entities,
        lambda database: list_deliveries(catalog, database, tenant=tenant, state=state, limit=limit, after_id=after_id),
    )
    head = ("ID", "TENANT", "ENTITY", "ZOHO ID", "OPERATION", "STATE", "ATTEMPTS", "MOODLE ID", "LAST ERROR")
    rows = [
        (str(d.id), d.tenant, d.entity, d.zoho_id, d.operation, d.state, str(d.attempts),
         "-" if d.moodle_id is None else str(d.moodle_id), d.last_error or "")
        for d in page.rows
    ]  # fmt: skip
    _show_page(page, "deliveries", head, rows, as_json)


@deliveries.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--all-dead", is_flag=True, help="Every dead delivery (of --tenant, if given).")
@click.option("--tenant", default=None, help="Only this tenant's deliveries.")
@ENTITIES_OPTION
def deliveries_retry(ids: tuple[int, ...], all_dead: bool, tenant: str | None, entities: Path | None) -> None:
    """Send deliveries ID... (or --all-dead) again: due now, attempts back to 0.

    A done delivery is sent again in full. A worker on PostgreSQL starts at once; a separate worker
    on SQLite within its poll interval (5 s).
    """
    from syncengine.deliveries import retry_deliveries

    if bool(ids) == all_dead:
        _fail(
            _pasteable("give delivery ids or --all-dead (not both): `syncengine deliveries list --state dead`"),
            BadInput,
        )
    settings = _settings(entities)
    if tenant is not None:
        _require_tenant(settings, tenant)
    retried = _run_tenant_command(
        entities, lambda database: retry_deliveries(database, tenant=tenant, ids=ids, all_dead=all_dead)
    )
    click.echo(f"requeued {len(retried.requeued)}: {' '.join(map(str, retried.requeued)) or '-'}")
    if retried.working:
        click.echo(f"a worker is delivering {' '.join(map(str, retried.working))} now: left alone", err=True)
    if retried.not_found:
        whose = f" of tenant '{tenant}'" if tenant else ""
        _fail(
            f"no delivery{whose} with id {', '.join(map(str, retried.not_found))}: "
            + _pasteable("`syncengine deliveries list` shows the ids"),
            NotFound,
        )


@main.group()
def intake() -> None:
    """The Zoho intake queue: ids Zoho notified, and what became of each."""


@intake.command("list")
@click.option("--tenant", default=None, help="One tenant's rows (default: every tenant's).")
@click.option("--state", type=click.Choice(["pending", "working", "done", "failed"]), default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Rows shown.")
@click.option("--after-id", default=None, type=click.IntRange(min=0), help="Rows after this id (the next page).")
@click.option("--json", "as_json", is_flag=True, help='Print {"counts": ..., "intake": [...]} as JSON.')
@ENTITIES_OPTION
def intake_list(
    tenant: str | None, state: str | None, limit: int, after_id: int | None, as_json: bool, entities: Path | None
) -> None:
    """List notified ids, oldest first, with counts per state and each record's outcome."""
    from syncengine.intake import list_intake

    settings = _settings(entities)
    if tenant is not None:
        _require_tenant(settings, tenant)
    page = _run_tenant_command(
        entities, lambda database: list_intake(database, tenant=tenant, state=state, limit=limit, after_id=after_id)
    )
    head = ("ID", "TENANT", "ENTITY", "ZOHO ID", "OPERATION", "STATE", "STATUS", "ATTEMPTS", "LAST ERROR")
    rows = [
        (str(r.id), r.tenant, r.entity, r.zoho_id, r.operation, r.state, r.status or "-", str(r.attempts),
         r.last_error or "")
        for r in page.rows
    ]  # fmt: skip
    _show_page(page, "intake", head, rows, as_json)


def _show_page(page: Page[Any], key: str, head: Sequence[str], rows: Sequence[Sequence[str]], as_json: bool) -> None:
    """A queue's page (`queues.Page`): as JSON (`{"counts", key: [...], "next_after_id"}`), or its
    counts and a table whose last column (the error) runs on unpadded; the next page's hint last."""
    if as_json:
        body = {"counts": page.counts, key: [row.to_builtins() for row in page.rows]}
        click.echo(msgspec.json.encode(body | {"next_after_id": page.next_after_id}).decode())
        return
    click.echo(", ".join(f"{name} {count}" for name, count in page.counts.items()))
    if rows:
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head) - 1)]
        for row in [head, *rows]:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    if page.next_after_id is not None:
        click.echo(f"more: --after-id {page.next_after_id}", err=True)


@main.group()
def zoho() -> None:
    """Zoho CRM: notification channels (credentials: `syncengine tenant zoho`)."""


@zoho.command("watch")
@click.option("--tenant", default=None, help="This tenant's entities (default: every tenant with Zoho credentials).")
@click.option("--url", default=None, help="The base URL Zoho reaches the service at (default: $SYNCENGINE_PUBLIC_URL).")
@ENTITIES_OPTION
def zoho_watch(tenant: str | None, url: str | None, entities: Path | None) -> None:
    """Subscribe (or renew) a Zoho notification channel for every entity: Zoho then POSTs each
    insert, update and delete to URL/v1/zoho/notifications. Channels last a week; `serve` renews
    them. Exits 1 if any entity could not be subscribed."""
    from syncengine.channels import notify_url, watch_tenant
    from syncengine.zoho_sites import NoZohoCredentials, zoho_tenants

    settings = _settings(entities)
    catalog = _catalog(settings)
    base = url or settings.public_url
    if base is None:
        _fail(
            "give the URL Zoho reaches this service at: --url https://sync.example.edu (or SYNCENGINE_PUBLIC_URL)",
            BadInput,
        )
    assert base is not None
    try:
        notify_url(base)
    except SyncEngineError as error:
        _fail(str(error), type(error))
    if tenant is not None:
        _require_tenant(settings, tenant)

    async def watch_all(database: AsyncEngine) -> list[Any]:
        async with database.connect() as conn:
            names = [tenant] if tenant is not None else await zoho_tenants(conn)
        if not names:
            _fail(
                _pasteable("no tenant has Zoho credentials: `syncengine tenant zoho NAME --dc DC ...` stores them"),
                Misconfigured,
            )
        done = []
        for name in names:
            click.echo(f"tenant '{name}': subscribing {len(catalog.entities)} entities ...", err=True)
            done += await watch_tenant(catalog, database, name, base)
        return done

    try:
        watched = _run_tenant_command(entities, watch_all)
    except NoZohoCredentials as error:
        _fail(_pasteable(str(error)), type(error))
    failed = False
    for w in watched:
        if w.action in ("subscribed", "renewed"):
            until = w.expires_at.strftime("%Y-%m-%d %H:%M:%SZ") if w.expires_at else "?"
            click.echo(f"tenant '{w.tenant}': {w.entity}: channel {w.channel_id} {w.action}, expires {until}")
        else:
            failed |= w.action == "failed"
            click.echo(f"tenant '{w.tenant}': {w.entity}: {w.action}: {w.error}", err=True)
    click.echo(f"callbacks go to {notify_url(base)}", err=True)
    sys.exit(1 if failed else 0)


@main.group()
def moodle() -> None:
    """Each tenant's Moodle site."""


@moodle.command("check")
@click.option("--tenant", default=None, help="Check this tenant's site (default: every tenant with one).")
@ENTITIES_OPTION
def moodle_check(tenant: str | None, entities: Path | None) -> None:
    """Ask each site for its release and list the web-service functions the mappings need that
    the token's service lacks; exit 1 if any is missing or a site cannot be reached."""
    from syncengine.moodle import MoodleError
    from syncengine.sites import MoodleCheck, check_moodle, read_site, site_tenants

    settings = _settings(entities)
    catalog = _catalog(settings)
    if tenant is not None:
        _require_tenant(settings, tenant)

    async def check_all(database: AsyncEngine) -> list[tuple[str, str, MoodleCheck | str]]:
        async with database.connect() as conn:
            names = [tenant] if tenant is not None else await site_tenants(conn)
            sites = {name: await read_site(conn, name) for name in names}
        results: list[tuple[str, str, MoodleCheck | str]] = []
        for name, site in sites.items():
            if site is None:
                results.append((name, "", _pasteable(
                    f"tenant '{name}' has no Moodle site: `syncengine tenant moodle {name} --url URL --token-file FILE`"
                )))  # fmt: skip
                continue
            try:
                results.append((name, site.url, await check_moodle(catalog, site)))
            except MoodleError as error:
                message = f"{error.function}: {error.errorcode}: {error.message}"
                results.append((name, site.url, f"{message}; {_site_hint(error.errorcode, name)}"))
        return results

    results = _run_tenant_command(entities, check_all)
    if not results:
        _fail(
            _pasteable("no tenant has a Moodle site: `syncengine tenant moodle NAME --url URL --token-file FILE`"),
            Misconfigured,
        )
    failed = False
    for name, url, result in results:
        if isinstance(result, str):
            click.echo(f"tenant '{name}': {url + ': ' if url else ''}{_pasteable(result)}", err=True)
            failed = True
            continue
        click.echo(f"tenant '{name}': {url}: {result.sitename}, Moodle {result.release}")
        if not result.missing:
            click.echo(f"  the token's service has all {len(result.needed)} functions the mappings need")
            continue
        failed = True
        click.echo(
            f"  the token's service lacks {len(result.missing)} of the {len(result.needed)} functions the mappings "
            "need; add them (Site administration > Server > Web services > External services > the service's "
            "Functions):"
        )
        width = max(map(len, result.missing))
        for function, users in result.missing.items():
            click.echo(f"    {function:<{width}}  used by {', '.join(users)}")
    sys.exit(1 if failed else 0)


def _site_hint(errorcode: str, tenant: str) -> str:
    """What to check when a site cannot tell what its token may call."""
    again = f"`syncengine tenant moodle {tenant} --url URL --token-file FILE` stores another"
    if errorcode in ("network", "timeout", "redirect", "notjson", "emptyanswer") or errorcode.startswith("http"):
        return f"check the tenant's Moodle URL (the site's wwwroot, with web services and REST enabled); {again}"
    if errorcode == "invalidtoken":
        return f"check the tenant's token (Site administration > Server > Web services > Manage tokens); {again}"
    if errorcode == "accessexception":
        return (
            "add core_webservice_get_site_info to the token's service, and check the token's user, "
            "IP restriction and expiry"
        )
    return f"check the tenant's Moodle URL and token; {again}"
