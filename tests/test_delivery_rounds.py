"""What one delivery round costs and shares: its transactions, its Moodle client, the calls that
records of several entities share, the stages the targets go in, and the claim of the newest rows.
Against the Moodle fake over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from syncengine.delivery import Policy, Worker, delivery_stages
from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from syncengine.sites import save_site
from tests import records
from tests.moodle_fake import MoodleFake
from tests.test_delivery import FAST, connected, drain, link_ids, moodle, school, states

__all__ = ["moodle"]  # the fixture, shared with test_delivery


def test_targets_go_in_stages_that_follow_the_moodle_ids_they_use(catalog: Catalog) -> None:
    stages = [[f"{entity.name}.{target.name}" for entity, target in stage] for stage in delivery_stages(catalog)]
    assert stages == [
        ["programs.category", "teachers.user", "students.user"],
        ["classes.course"],  # {program.moodle_id}
        ["classes.teacher", "enrollments.enrolment"],  # {moodle_id} and {teacher.moodle_id}; the class's course
    ]


async def test_a_round_commits_a_few_transactions_whatever_its_size(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await engine.sync("school", "students", [records.student(str(3000 + i)) for i in range(40)])
    commits: list[int] = []
    sa.event.listen(engine.database.sync_engine, "commit", lambda *_: commits.append(1))
    counts = await Worker(engine.catalog, engine.database, FAST).deliver_once()
    assert counts.delivered == 40
    # the claim, the lease renewed before the calls, the links, the settlement: not one per record
    assert len(commits) <= 5, f"{len(commits)} commits for a round of 40 records"
    assert await states(engine) == {"done": 40}


async def test_teachers_and_students_share_their_calls_and_so_do_all_enrolments(
    engine: SyncEngine, moodle: MoodleFake
) -> None:
    await connected(engine, moodle)
    await school(engine)  # a program, a teacher, two students, a class with that teacher, two enrollments
    await Worker(engine.catalog, engine.database, FAST).deliver_once()
    assert await states(engine) == {"done": 7}
    (created,) = moodle.called("core_user_create_users")
    assert sorted(u["idnumber"] for u in created.params["users"].values()) == ["2001", "3001", "3002"]
    fields = [c.params["field"] for c in moodle.called("core_user_get_users_by_field")]
    assert (fields[0], sorted(fields[1:])) == ("idnumber", ["email", "username"])  # one call a field for all
    (enrolled,) = moodle.called("enrol_manual_enrol_users")  # the class's teacher and the two students
    assert sorted(e["roleid"] for e in enrolled.params["enrolments"].values()) == ["3", "5", "5"]


async def test_the_moodle_client_is_kept_between_rounds_and_replaced_with_the_token(
    engine: SyncEngine, moodle: MoodleFake
) -> None:
    await connected(engine, moodle)
    worker = Worker(engine.catalog, engine.database, FAST)
    await engine.sync("school", "teachers", [records.teacher("2001")])
    await drain(worker)
    (site, first), *_ = worker._clients.values()
    await engine.sync("school", "teachers", [records.teacher("2002")])
    await drain(worker)
    assert worker._clients["school"][1] is first  # one client, its connection pool, for both rounds
    assert "token" not in repr(site) and moodle.token not in repr(first)
    moodle.token = "a-new-token-0123456789"  # the site's token is replaced: the old one is refused
    await save_site(engine.database, "school", moodle.url, moodle.token)
    await engine.sync("school", "teachers", [records.teacher("2003")])
    await drain(worker)
    assert await states(engine) == {"done": 3}
    assert first._http.is_closed
    replaced = worker._clients["school"][1]
    assert replaced is not first
    await worker.aclose()
    assert replaced._http.is_closed and not worker._clients


async def test_a_claim_takes_the_newest_due_rows_beside_the_oldest(engine: SyncEngine, moodle: MoodleFake) -> None:
    await connected(engine, moodle)
    await engine.sync("school", "teachers", [records.teacher(str(2000 + i)) for i in range(100)])
    worker = Worker(engine.catalog, engine.database, Policy(batch=40, newest=2))
    rows: list[Any] = await worker.claim()
    ids = sorted(int(r.id) for r in rows)
    async with engine.database.connect() as conn:
        every = [
            int(i) for i in (await conn.execute(sa.text("SELECT id FROM syncengine_outbox ORDER BY id"))).scalars()
        ]
    assert ids == every[:38] + every[-2:]


async def test_a_moodle_user_whose_email_differs_only_in_case_is_linked(engine: SyncEngine, moodle: MoodleFake) -> None:
    """Moodle refuses a second account with an email in another case, while its look-up by email
    compares exactly: the user is found through core_user_get_users and linked."""
    await connected(engine, moodle)
    existing = moodle.add_user(username="ayse.by.hand", email="S3001@School.EDU")
    await school(engine)
    await drain(Worker(engine.catalog, engine.database, FAST))
    assert await states(engine) == {"done": 7}
    assert [u["id"] for u in moodle.users.values() if u["email"].lower() == "s3001@school.edu"] == [existing]
    assert moodle.users[existing]["idnumber"] == "3001"  # brought to the record's state
    assert (await link_ids(engine, "students"))["3001"] == existing
    assert any(userid == existing for _, userid in moodle.enrolments)
