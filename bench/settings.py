"""How big a benchmark run is: the full run of issue 4, or the smoke run CI uses."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bench.records import World


@dataclass(frozen=True)
class Sizes:
    """Record counts per scenario. Batch size 1 and the naive baseline use fewer records: their
    records/s does not depend on the count, and 100,000 single-record transactions take minutes."""

    records: int = 100_000
    single: int = 2_000
    naive: int = 10_000
    batches: tuple[int, ...] = (1, 100, 1_000, 5_000)
    dialects: tuple[str, ...] = ("postgresql", "sqlite")
    repeats: int = 3
    scale_existing: tuple[int, ...] = (10_000, 1_000_000)
    scale_records: int = 100_000
    memory_records: int = 1_000_000
    memory_batch: int = 1_000
    dlt_records: int = 100_000
    dlt_loads: int = 10
    world: World = field(default_factory=World)
    timeout: float = 3_600.0


FULL = Sizes()

SMOKE = Sizes(
    records=1_000,
    single=20,
    naive=200,
    batches=(1, 100, 1_000),
    repeats=1,
    scale_existing=(100, 1_000),
    scale_records=1_000,
    memory_records=2_000,
    dlt_records=200,
    dlt_loads=1,
    world=World(students=200, classes=20, programs=3),
    timeout=120.0,
)


def sized(base: Sizes, **overrides: Any) -> Sizes:
    return replace(base, **{name: value for name, value in overrides.items() if value is not None})
