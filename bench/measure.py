"""Measurements, the figures table and the targets of issue 4, all from one run."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: The scenario of the engine's figures measured beside dlt's (see bench/peer.py).
BESIDE = "pipeline, beside dlt"


@dataclass
class Measurement:
    """One row of the table: a scenario's case, timed `len(seconds)` times on `records` records.

    `value` replaces records/s for rows that measure something else (peak RSS in MB).
    """

    scenario: str
    database: str
    case: str
    batch: int | None
    records: int
    seconds: list[float] = field(default_factory=list)
    value: float | None = None
    unit: str = "rec/s"
    note: str = ""

    @property
    def rates(self) -> list[float]:
        return [self.records / s for s in self.seconds if s > 0]

    @property
    def median(self) -> float:
        if self.value is not None:
            return self.value
        return statistics.median(self.rates) if self.rates else float("nan")

    @property
    def low(self) -> float:
        return min(self.rates) if self.value is None and self.rates else self.median

    @property
    def high(self) -> float:
        return max(self.rates) if self.value is None and self.rates else self.median

    @property
    def key(self) -> tuple[str, str, str, int | None]:
        return (self.scenario, self.database, self.case, self.batch)


COLUMNS = ("scenario", "database", "case", "batch", "records", "runs", "median", "min", "max", "unit", "note")


def figures_table(measurements: Iterable[Measurement]) -> str:
    rows = [
        (
            m.scenario,
            m.database,
            m.case,
            "-" if m.batch is None else f"{m.batch:,}",
            f"{m.records:,}",
            str(len(m.seconds) or 1),
            _number(m.median),
            _number(m.low),
            _number(m.high),
            m.unit,
            m.note,
        )
        for m in measurements
    ]
    return _markdown(COLUMNS, rows)


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    goal: float
    at_most: bool = False
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.measured != self.measured:
            return None
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal


def targets(measurements: Iterable[Measurement]) -> list[Target]:
    """The targets of issue 4 that this harness measures, as ratios of figures from this run."""
    measurements = list(measurements)
    by_key = {m.key: m.median for m in measurements}
    scale = [m for m in measurements if m.scenario == "scale" and m.seconds]

    def get(scenario: str, database: str, case: str, batch: int | None) -> float | None:
        return by_key.get((scenario, database, case, batch))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    pg_new = get("pipeline", "postgresql", "NEW", 1000)
    pg_unchanged = get("pipeline", "postgresql", "UNCHANGED", 1000)
    # The peer ratios take the engine's figures measured beside dlt's (bench/peer.py).
    beside_new = get(BESIDE, "postgresql", "NEW", 1000)
    beside_unchanged = get(BESIDE, "postgresql", "UNCHANGED", 1000)
    beside_new_100 = get(BESIDE, "postgresql", "NEW", 100)
    return [
        Target(
            "pipeline PG NEW, batches of 1,000 / naive ORM NEW",
            ratio(pg_new, get("naive ORM", "postgresql", "NEW", 100)),
            40,
        ),
        Target(
            "pipeline PG NEW, batches of 1,000 / raw unnest NEW",
            ratio(pg_new, get("raw unnest", "postgresql", "NEW", 1000)),
            0.5,
        ),
        Target("pipeline PG UNCHANGED / NEW, batches of 1,000", ratio(pg_unchanged, pg_new), 2),
        Target("SQLite pipeline NEW, batches of 1,000", get("pipeline", "sqlite", "NEW", 1000), 15_000, unit="rec/s"),
        Target(
            f"scale: NEW into {scale[-1].case[9:]} rows / into {scale[0].case[9:]}",
            ratio(scale[-1].median, scale[0].median),
            0.8,
        )
        if len(scale) > 1
        else Target("scale: NEW into 1,000,000 rows / into 10,000", None, 0.8),
        Target(
            "memory: peak RSS of the file load",
            get("memory", "postgresql", "file load", 1000),
            300,
            at_most=True,
            unit="MB",
        ),
        Target(
            "pipeline beside dlt, NEW, batches of 1,000 / dlt merge, NEW",
            ratio(beside_new, get("dlt merge", "postgresql", "NEW", None)),
            5,
        ),
        Target(
            "pipeline beside dlt, UNCHANGED, batches of 1,000 / dlt merge, repeated",
            ratio(beside_unchanged, get("dlt merge", "postgresql", "repeated", None)),
            5,
        ),
        Target(
            "pipeline beside dlt, 100-record syncs / dlt 100-record loads",
            ratio(beside_new_100, get("dlt merge", "postgresql", "100-record loads", 100)),
            50,
        ),
    ]


def targets_table(items: Iterable[Target]) -> str:
    rows = []
    for target in items:
        goal = f"{'<=' if target.at_most else '>='} {_number(target.goal)} {target.unit}"
        measured = "not measured" if target.measured is None else f"{_number(target.measured)} {target.unit}"
        met = {True: "met", False: "MISSED", None: "-"}[target.met]
        rows.append((target.name, measured, goal, met))
    return _markdown(("target", "measured", "goal", "result"), rows)


def _number(value: float) -> str:
    if value != value:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _markdown(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [
        max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(len(header))
    ]
    numeric = {
        i for i, name in enumerate(header) if name in ("batch", "records", "runs", "median", "min", "max", "measured")
    }

    def line(cells: tuple[str, ...]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
