"""The HTTP benchmark still runs: `python -m bench.http --smoke` serves both apps for real and
prints every row of its table.

No timing is asserted: figures belong in bench/README.md, not in tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import POSTGRES_URL, ROOT
from tests.test_bench_smoke import table_rows

pytestmark = pytest.mark.postgres


def test_http_smoke_run_prints_every_row_and_target() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.http", "--smoke", "--postgres-url", POSTGRES_URL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = table_rows(run.stdout)
    expected = {
        (scenario, "postgresql", case, batch)
        for scenario in ("HTTP service", "HTTP minimal")
        for case in ("NEW", "UNCHANGED")
        for batch in ("100", "1,000")
    }
    expected |= {
        (scenario, "postgresql", case, "1")
        for scenario in ("webhook service", "webhook minimal")
        for case in ("max req/s", "p50 at half max", "p99 at half max")
    }
    assert expected <= rows, sorted(expected - rows)
    assert "| HTTP service / minimal endpoint, NEW, batches of 100" in run.stdout
    assert "| webhooks: service p99 at half its max rate" in run.stdout
