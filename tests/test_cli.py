"""The `syncengine` command as a person uses it: real processes, a real SQLite file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ENTITIES, FIXTURES, ROOT, Databases

#: The folder of `syncengine`, first on the PATH as in a shell where .venv is activated.
BIN = str(Path(sys.executable).parent)
ACTIVATED = {"PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        cwd=cwd,
        env={**os.environ, **ACTIVATED, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def database(tmp_path: Path) -> dict[str, str]:
    """A migrated SQLite file, as `syncengine db upgrade` leaves it, with the tenants default and north."""
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "SYNCENGINE_ENTITIES": str(ENTITIES)}
    upgraded = run("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    for name in ("default", "north"):
        assert run("tenant", "add", name, env=env).returncode == 0
    return env


def test_check_passes_on_the_school_entities() -> None:
    result = run("check")
    assert result.returncode == 0
    assert result.stdout == (
        "entities.yaml: OK, 9 entities, 63 fields (programs, teachers, students, units, classes, "
        "registrations, enrollments, payments, grades)\n"
    )


def test_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "version: 1\nentities:\n  x:\n    source: X\n    singular: x\n    fields:\n      a: {type: nope}\n      b: {type: lookup, entity: y}\n"
    )
    result = run("check", "--entities", str(broken))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{broken}:7:17: entities.x.fields.a.type: unknown type 'nope' (valid: string, text, email, integer, "
        "decimal, boolean, date, datetime, choice, multichoice, lookup)",
        f"{broken}:8:33: entities.x.fields.b.entity: unknown entity 'y' (known: x)",
    ]
    assert result.stderr == f"2 problems in {broken}\n"


def test_check_reports_form_keys_that_clash(tmp_path: Path) -> None:
    clashing = tmp_path / "clashing.yaml"
    clashing.write_text(
        ENTITIES.read_text().replace(
            "student_number: {from: Name, type: string, max_length: 50}",
            "student_number: {from: Name, type: string, max_length: 50, aliases: [email, modified_time]}",
        )
    )
    result = run("check", "--entities", str(clashing))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{clashing}:52:76: entities.students.fields.student_number.aliases.0: alias 'email' clashes with "
        "Zoho field 'Email' of field 'email' (form keys match in any case): remove it or choose another",
        f"{clashing}:52:83: entities.students.fields.student_number.aliases.1: alias 'modified_time' clashes "
        "with version_field 'Modified_Time' (form keys match in any case): remove it or choose another",
    ]


def test_dry_run_prints_a_table_and_writes_nothing(database: dict[str, str]) -> None:
    result = run("dry-run", "programs", str(FIXTURES / "products-record.json"), env=database)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "   #  zoho_program_id      STATUS     MESSAGE",
        "   1  6284103000001520043  NEW        created",
        "dry run of 1 programs records, nothing written: NEW 1",
    ]
    again = run("dry-run", "programs", str(FIXTURES / "products-record.json"), "--json", env=database)
    assert json.loads(again.stdout)["results"][0]["status"] == "NEW"  # the first run wrote nothing


def test_dry_run_json_is_the_http_response(database: dict[str, str]) -> None:
    payload = json.dumps(
        {"data": [{"id": "1", "Product_Name": "HND", "Status": "-None-"}, {"id": "2", "Status": "Live"}]}
    )
    result = run("dry-run", "programs", "-", "--json", "--tenant", "north", env=database, stdin=payload)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "status": "success",
        "entity": "programs",
        "dry_run": True,
        "results": [
            {"zoho_program_id": "1", "status": "NEW", "message": "created"},
            {
                "zoho_program_id": "2",
                "status": "INVALID",
                "message": "2 field errors: Product_Name is required; Status 'Live' is not one of 'Draft', 'Approved', 'Sent'",
                "errors": [
                    {"field": "Product_Name", "message": "is required"},
                    {"field": "Status", "message": "'Live' is not one of 'Draft', 'Approved', 'Sent'"},
                ],
            },
        ],
        "summary": {"NEW": 1, "UPDATED": 0, "UNCHANGED": 0, "INVALID": 1, "SKIPPED": 0, "DELETED": 0},
    }


@pytest.mark.parametrize(
    ("args", "stdin", "status", "message"),
    [
        (
            ("programs", "-"),
            '{"data": [\n  {"id": 1,}\n]}',
            2,
            "error: -: malformed JSON at line 2, column 12: trailing comma in object\n",
        ),
        (
            ("programs", "-"),
            '"just a string"',
            2,
            "error: -: expected a JSON object or array of records, got str; "
            'send {"data": [records]}, [records] or one record object\n',
        ),
        (("programs", "-"), '{"data": {"id": 1}}', 2, 'error: -: "data" must be a list of records\n'),
        (
            ("programmes", "-"),
            "[]",
            3,
            "error: unknown entity 'programmes' (known: programs, teachers, students, units, "
            "classes, registrations, enrollments, payments, grades)\n",
        ),
        (
            ("programs", "/nonexistent.json"),
            None,
            2,
            "error: cannot read /nonexistent.json: No such file or directory\n",
        ),
    ],
)
def test_dry_run_bad_input_says_what_and_where(
    database: dict[str, str], args: tuple[str, ...], stdin: str | None, status: int, message: str
) -> None:
    result = run("dry-run", *args, env=database, stdin=stdin)
    assert (result.returncode, result.stderr, result.stdout) == (status, message, "")


def test_dry_run_on_a_new_sqlite_file_migrates_it_as_tenant_commands_do(tmp_path: Path) -> None:
    """Item 6 of issue 14: no "run db upgrade first" on the embedded default; what is missing
    then is the tenant, and the error says how to make it."""
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = run("dry-run", "programs", str(FIXTURES / "products-record.json"), env=env)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == (
        "error: no tenant 'default': there are no tenants yet; `syncengine tenant add default` creates it "
        "(and `syncengine serve` creates 'default' on its first start)\n"
    )
    assert run("tenant", "add", "default", env=env).returncode == 0
    result = run("dry-run", "programs", str(FIXTURES / "products-record.json"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("dry run of 1 programs records, nothing written: NEW 1\n")


async def test_dry_run_on_a_postgresql_database_behind_says_to_upgrade(databases: Databases) -> None:
    env = {"SYNCENGINE_DATABASE_URL": await databases.fresh_url("postgresql")}
    result = run("dry-run", "programs", str(FIXTURES / "products-record.json"), env=env)
    assert result.returncode == 6
    assert "run `syncengine db upgrade` with the same SYNCENGINE_DATABASE_URL" in result.stderr


def test_dry_run_of_an_unknown_tenant_lists_the_known_ones(database: dict[str, str]) -> None:
    result = run("dry-run", "programs", str(FIXTURES / "products-record.json"), "--tenant", "nosuch", env=database)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == (
        "error: no tenant 'nosuch' (known: default, north): `syncengine tenant add nosuch` creates it, "
        "`syncengine tenant list` shows the tenants\n"
    )


@pytest.mark.parametrize(
    ("args", "body"),
    [
        ((), "zoho_id=7&Product_Name=HND+in+Computing&Status=Draft"),  # told by its content
        (("--form",), "{x}=1&zoho_id=7&Product_Name=HND+in+Computing&Status=Draft"),  # told by the flag
    ],
)
def test_dry_run_reads_a_form_body_as_the_endpoint_does(
    database: dict[str, str], args: tuple[str, ...], body: str
) -> None:
    result = run("dry-run", "programs", "-", "--json", *args, env=database, stdin=body)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"] == [{"zoho_program_id": "7", "status": "NEW", "message": "created"}]


def test_db_upgrade_names_the_migrations_it_applies(tmp_path: Path) -> None:
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}"}
    first = run("db", "upgrade", "--revision", "f854d54507b2", env=env)
    assert first.stderr.splitlines()[1:] == [
        "applied eaf15f9cb332: nine entities and the outbox",
        "applied f854d54507b2: tenants and idempotency keys",
        "database is now at f854d54507b2",
    ]
    second = run("db", "upgrade", env=env)
    assert second.stderr.splitlines()[1:] == [
        "applied 3c1d0e7a9b52: decimals exact on sqlite",
        "applied d170e84432d7: delivery state: Moodle links and sites",
        "applied 79054906e61e: zoho intake: credentials, shared tokens, channels, intake queue, backfill cursors",
        "database is now at 79054906e61e",
    ]
    third = run("db", "upgrade", env=env)
    assert third.stderr.splitlines()[1:] == ["database is up to date (head): nothing to apply"]


def test_db_revision_without_a_change_writes_nothing(tmp_path: Path, project_copy: Callable[[], Path]) -> None:
    entities = project_copy()
    versions = entities.parent / "migrations" / "versions"
    before = sorted(versions.iterdir())
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'same.db'}", "SYNCENGINE_ENTITIES": str(entities)}
    result = run("db", "revision", "-m", "nothing", env=env)
    assert (result.returncode, result.stdout) == (
        0,
        f"nothing to do: the database already matches {entities}; no migration written\n",
    )
    assert sorted(versions.iterdir()) == before


def test_load_samples_gives_new_then_unchanged_for_every_record(database: dict[str, str]) -> None:
    first = run("load", "samples", env=database)
    assert first.returncode == 0, first.stderr
    summaries = [line for line in first.stdout.splitlines() if line.startswith("synced")]
    assert summaries == [
        "synced 1 programs records: NEW 1",
        "synced 1 teachers records: NEW 1",
        "synced 2 students records: NEW 2",
        "synced 1 classes records: NEW 1",
        "synced 2 enrollments records: NEW 2",
    ]
    again = run("load", "samples", env=database)
    assert [line for line in again.stdout.splitlines() if line.startswith("synced")] == [
        line.replace("NEW", "UNCHANGED") for line in summaries
    ]


def test_load_refuses_a_file_that_names_no_entity(database: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "load"
    folder.mkdir()
    (folder / "programmes.json").write_text("[]")
    result = run("load", str(folder), env=database)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == (
        f"error: {folder / 'programmes.json'}: no entity 'programmes' (known: programs, teachers, students, units, "
        "classes, registrations, enrollments, payments, grades); name each file after the entity its records are for\n"
    )


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        (ACTIVATED["PATH"], "syncengine"),  # activated: the name alone
        (os.defpath, ".venv/bin/syncengine"),  # not on the PATH: the path, from the project folder
    ],
)
def test_hints_name_a_syncengine_that_runs_as_pasted(tmp_path: Path, path: str, hint: str) -> None:
    """Item 1 of issue 14: run as scripts/serve runs it (.venv/bin/syncengine from the project
    folder), a hint's command works in that folder, whether or not .venv is activated."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "migrations", project / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ENTITIES, project / "entities.yaml")
    (project / ".venv").symlink_to(Path(BIN).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCENGINE_")} | {"PATH": path}
    result = subprocess.run(
        [".venv/bin/syncengine", "tenant", "list"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stderr == f"no tenants yet: `{hint} tenant add NAME` creates one\n"
    pasted = subprocess.run(
        f"{hint} tenant add school", shell=True, cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.startswith("sk_")


def test_a_broken_descriptor_stops_dry_run_with_its_problems(database: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "e.yaml"
    broken.write_text("version: 1\nentities: [")
    result = run("dry-run", "programs", "-", "--entities", str(broken), env=database, stdin="[]")
    assert result.returncode == 6
    assert "the descriptor file has problems; run `syncengine check`" in result.stderr
    assert f"{broken}:2:12: invalid YAML" in result.stderr


def test_db_revision_writes_a_migration_for_a_new_entity(tmp_path: Path, project_copy: Callable[[], Path]) -> None:
    entities = project_copy()
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'rev.db'}", "SYNCENGINE_ENTITIES": str(entities)}
    assert run("db", "upgrade", env=env).returncode == 0
    entities.write_text(
        entities.read_text()
        + "  rooms:\n    source: Rooms\n    singular: room\n    fields:\n      name: {from: Name, type: string}\n"
    )
    result = run("db", "revision", "-m", "add rooms", env=env)
    assert result.returncode == 0, result.stderr
    written = Path(result.stdout.split()[1].rstrip(";"))
    assert written.parent == entities.parent / "migrations" / "versions"
    assert "op.create_table('rooms'" in written.read_text()
    assert run("db", "upgrade", env=env).returncode == 0
    assert run("tenant", "add", "default", env=env).returncode == 0
    record = '{"id": "1", "Name": "Lab 2"}'
    synced = run("dry-run", "rooms", "-", "--json", env=env, stdin=record)
    assert json.loads(synced.stdout)["results"] == [{"zoho_room_id": "1", "status": "NEW", "message": "created"}]
