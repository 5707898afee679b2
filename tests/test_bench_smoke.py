"""The benchmark harness still runs: `python -m bench --smoke` prints every row of its table.

No timing is asserted: figures belong in bench/README.md, not in tests.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from syncengine.delivery import Policy
from tests.conftest import POSTGRES_URL, ROOT

pytestmark = pytest.mark.postgres


def table_rows(output: str) -> set[tuple[str, ...]]:
    """(scenario, database, case, batch) of every row of the Markdown tables."""
    rows = set()
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 4:
            rows.add(tuple(cells[:4]))
    return rows


def test_smoke_run_prints_every_scenario() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--postgres-url", POSTGRES_URL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,  # the delivery scenario starts two databases, two serves and three Moodle fakes; backfill a fake
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = table_rows(run.stdout)
    cases = ("NEW", "UNCHANGED", "10 % UPDATED", "10 % INVALID")
    expected = {
        ("pipeline", dialect, case, batch)
        for dialect, case, batch in itertools.product(("postgresql", "sqlite"), cases, ("1", "100", "1,000"))
    }
    expected |= {("naive ORM", "postgresql", "NEW", "100"), ("naive ORM", "postgresql", "UNCHANGED", "100")}
    expected |= {("raw unnest", "postgresql", case, "1,000") for case in cases[:3]}
    expected |= {("raw COPY", "postgresql", case, "10,000") for case in cases[:3]}
    expected |= {("scale", "postgresql", "NEW into 100", "1,000"), ("scale", "postgresql", "NEW into 1,000", "1,000")}
    expected |= {("memory", "postgresql", "file load", "1,000")}
    expected |= {
        ("flood", "postgresql", f"other's writes {quantile}, {case}", "1")
        for quantile in ("p50", "p99")
        for case in ("alone", "during the flood")
    }
    expected |= {
        ("delivery", "postgresql", case, batch)
        for case, batch in (
            ("worker, school of 68", f"{Policy().batch:,}"),
            ("naive, per record", "1"),
            ("worker, calls per 1,000 records", "-"),
            ("minimum, calls per 1,000 records", "-"),
            ("naive, calls per 1,000 records", "-"),
            ("webhook 200 -> Moodle call p50", "1"),
            ("webhook 200 -> Moodle call p99", "1"),
            ("serve peak RSS, school of 34", "-"),
            ("serve peak RSS, school of 68", "-"),
        )
    }
    expected |= {
        ("backfill", "postgresql", case, batch)
        for case, batch in (
            ("backfill, school of 478", "1,000"),
            ("pipeline, same records", "1,000"),
            ("Zoho API calls per 1,000 records", "-"),
            ("access tokens requested", "-"),
            ("backfill peak RSS", "-"),
        )
    }
    assert expected <= rows, sorted(expected - rows)
    peer = {row for row in rows if row[0] == "dlt merge"}
    assert peer in (
        {("dlt merge", "postgresql", "not installed", "-")},
        {
            ("dlt merge", "postgresql", "NEW", "-"),
            ("dlt merge", "postgresql", "repeated", "-"),
            ("dlt merge", "postgresql", "100-record loads", "100"),
        },
    ), peer
    if ("dlt merge", "postgresql", "NEW", "-") in peer:  # the engine's side of the peer ratios, beside dlt's
        beside = {
            ("pipeline, beside dlt", "postgresql", case, batch)
            for case, batch in (("NEW", "1,000"), ("UNCHANGED", "1,000"), ("NEW", "100"))
        }
        assert beside <= rows, sorted(beside - rows)
    for target in (
        "delivery: worker / naive, records/s",
        "delivery: worker's Moodle calls / the budget's minimum",
        "delivery: webhook 200 -> Moodle call, p99 at 50/s",
        "delivery: serve's peak RSS, whole school / half of it",
        "backfill: records/s / the pipeline's, same records",
        "backfill: Zoho API calls per 1,000 records",
        "backfill: access tokens requested",
        "backfill: peak RSS",
    ):
        assert f"| {target} " in run.stdout and "not measured" not in _target_line(run.stdout, target), target
    assert "| target" in run.stdout
    assert "MISSED" in run.stdout or "met" in run.stdout


def _target_line(output: str, target: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(f"| {target} "))
