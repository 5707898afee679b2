"""`syncengine moodle check` against the Moodle fake, the per-kind function list it holds a token's
service to, and the token encrypted at rest (SYNCENGINE_SECRET_KEY)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from syncengine.delivery import Worker
from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from syncengine.sites import mapped_functions, read_site, save_site
from syncengine.vault import SecretKeyError
from tests import records
from tests.conftest import ENTITIES
from tests.moodle_fake import running
from tests.test_delivery import FAST, class_, drain, school, states
from tests.test_delivery_cli import run

SITE_INFO_ONLY = {"core_webservice_get_site_info", "core_user_get_users_by_field", "core_user_create_users"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"SYNCENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "SYNCENGINE_ENTITIES": str(ENTITIES)}
    assert run("tenant", "add", "school", env=env).returncode == 0
    return env | extra


def _connect(env: dict[str, str], url: str, token: str) -> None:
    added = run("tenant", "moodle", "school", "--url", url, "--token-file", "-", env=env, stdin=token)
    assert added.returncode == 0, added.stderr


def test_a_service_lacking_functions_lists_the_names_to_add(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with running(functions=SITE_INFO_ONLY) as moodle:
        _connect(env, moodle.url, moodle.token)
        result = run("moodle", "check", env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"tenant 'school': {moodle.url}: Fake School, Moodle 4.5.11+ (Build: 20260501)"
    assert lines[1].startswith("  the token's service lacks 9 of the 12 functions the mappings need; add them")
    listed = {line.split()[0]: line.split("used by ")[1] for line in lines[2:]}
    assert listed == {
        "core_course_get_categories": "programs.category (category)",
        "core_course_create_categories": "programs.category (category)",
        "core_course_update_categories": "programs.category (category)",
        "core_user_get_users": "teachers.user (user), students.user (user)",
        "core_user_update_users": "teachers.user (user), students.user (user)",
        "core_course_get_courses_by_field": "classes.course (course)",
        "core_course_create_courses": "classes.course (course)",
        "core_course_update_courses": "classes.course (course)",
        "enrol_manual_enrol_users": "classes.teacher (enrolment), enrollments.enrolment (enrolment)",
    }
    assert moodle.token not in result.stdout + result.stderr


def test_a_complete_service_passes(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with running() as moodle:
        _connect(env, moodle.url, moodle.token)
        result = run("moodle", "check", "--tenant", "school", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "  the token's service has all 12 functions the mappings need"


def test_a_bad_token_or_url_says_what_to_check(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with running() as moodle:
        _connect(env, moodle.url, "not-the-token")
        refused = run("moodle", "check", env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"tenant 'school': {moodle.url}: core_webservice_get_site_info: invalidtoken: Invalid token - token not "
        "found; check the tenant's token (Site administration > Server > Web services > Manage tokens); "
        "`syncengine tenant moodle school --url URL --token-file FILE` stores another"
    )
    assert "not-the-token" not in refused.stdout + refused.stderr
    gone = run("moodle", "check", env=env)  # the fake has stopped: nothing listens there
    assert gone.returncode == 1
    assert "could not reach" in gone.stderr and "check the tenant's Moodle URL (the site's wwwroot" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_a_tenant_without_a_site_is_told_how_to_add_one(tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = run("moodle", "check", "--tenant", "school", env=env)
    assert result.returncode == 1
    expected = "tenant 'school': tenant 'school' has no Moodle site: `syncengine tenant moodle school --url URL --token-file FILE`"
    assert result.stderr.strip() == expected


async def test_the_functions_moodle_check_asks_for_are_enough_to_deliver_a_school(
    engine: SyncEngine, catalog: Catalog
) -> None:
    with running(functions=set(mapped_functions(catalog))) as moodle:
        await save_site(engine.database, "school", moodle.url, moodle.token)
        await school(engine)
        worker = Worker(engine.catalog, engine.database, FAST)
        await drain(worker)
        later = "2026-03-10T09:15:42+03:00"  # then every kind's update
        await engine.sync("school", "programs", [records.program("1001", Product_Name="Renamed")])
        await engine.sync("school", "students", [records.student("3001", First_Name="Renamed", Modified_Time=later)])
        await engine.sync("school", "classes", [class_("4001", Class_Name="Renamed", Modified_Time=later)])
        await drain(worker)
    assert await states(engine) == {"done": 10}
    assert {"core_course_update_categories", "core_user_update_users", "core_course_update_courses"} <= {
        call.function for call in moodle.calls
    }
    assert not [call for call in moodle.calls if call.outcome == "accessexception"]


# The token at rest.


async def stored_token(engine: SyncEngine) -> str:
    async with engine.database.connect() as conn:
        return str((await conn.execute(sa.text("SELECT token FROM syncengine_moodle_sites"))).scalar_one())


async def test_with_a_key_the_token_is_stored_encrypted(engine: SyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCENGINE_SECRET_KEY", Fernet.generate_key().decode())
    await save_site(engine.database, "school", "https://moodle.school.test", "secret-token-1234")
    stored = await stored_token(engine)
    assert stored.startswith("fernet:") and "secret-token-1234" not in stored
    async with engine.database.connect() as conn:
        site = await read_site(conn, "school")
    assert site is not None and site.token == "secret-token-1234"

    monkeypatch.setenv("SYNCENGINE_SECRET_KEY", Fernet.generate_key().decode())
    async with engine.database.connect() as conn:
        with pytest.raises(SecretKeyError) as wrong:
            await read_site(conn, "school")
    assert str(wrong.value) == (
        "SYNCENGINE_SECRET_KEY does not decrypt tenant 'school''s Moodle token: set SYNCENGINE_SECRET_KEY to the "
        "key it was stored with, or store the token again: "
        "`syncengine tenant moodle school --url URL --token-file FILE`"
    )
    monkeypatch.delenv("SYNCENGINE_SECRET_KEY")
    async with engine.database.connect() as conn:
        with pytest.raises(SecretKeyError) as missing:
            await read_site(conn, "school")
    assert str(missing.value).startswith(
        "tenant 'school''s Moodle token is stored encrypted and SYNCENGINE_SECRET_KEY is not set: "
    )


async def test_without_a_key_the_token_is_stored_as_given(engine: SyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNCENGINE_SECRET_KEY", raising=False)
    await save_site(engine.database, "school", "https://moodle.school.test", "secret-token-1234")
    assert await stored_token(engine) == "secret-token-1234"


def test_the_commands_say_which_variable_to_fix(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    env = _env(tmp_path, SYNCENGINE_SECRET_KEY=key)
    with running() as moodle:
        _connect(env, moodle.url, moodle.token)
        assert run("moodle", "check", env=env).returncode == 0  # decrypted with the key
        wrong = run("moodle", "check", env=env | {"SYNCENGINE_SECRET_KEY": Fernet.generate_key().decode()})
        bad = run("tenant", "moodle", "school", "--url", moodle.url, "--token-file", "-",
                  env=env | {"SYNCENGINE_SECRET_KEY": "short"}, stdin=moodle.token)  # fmt: skip
    assert wrong.returncode == 6 and "Traceback" not in wrong.stderr
    assert wrong.stderr.startswith("error: SYNCENGINE_SECRET_KEY does not decrypt tenant 'school''s Moodle token")
    assert bad.returncode == 6 and bad.stderr.startswith(
        "error: SYNCENGINE_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes): make one with python -c"
    )
    for result in (wrong, bad):
        assert moodle.token not in result.stdout + result.stderr


def test_the_mapping_functions_come_from_the_kinds(catalog: Catalog) -> None:
    from syncengine import targets

    needed = mapped_functions(catalog)
    kinds = (targets.USER, targets.CATEGORY, targets.COURSE)
    called = {name for kind in kinds for name in (kind.find, kind.create, kind.update)} | {targets.ENROL}
    called |= {targets.USER_SEARCH}  # a user's email in any letter case, after a refused create
    assert called | {targets.SITE_INFO} == set(needed)  # no mapping of entities.yaml unenrols
    assert targets.needed_functions("enrolment", "unenrol") == (targets.ENROL, targets.UNENROL)
