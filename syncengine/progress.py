"""The progress bar of long commands (backfill, load), and the summary table they end with.

On a terminal it is a rich progress bar on standard error: per entity, the records done, their rate
and the time left. Zoho tells no total up front, so a backfill's total (and its time left) is the
count of the entity's records the tenant already has, where it has any; the first backfill of an
entity shows records and rate alone. A file load's bar is the file's bytes. Elsewhere (a log, a
pipe) it is a plain line per entity every `PLAIN_EVERY` seconds and when the entity ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from syncengine.backfill import Tally
from syncengine.report import STATUSES

PLAIN_EVERY = 10.0  # seconds between plain progress lines


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        records = int(task.fields.get("records", 0)) - int(task.fields.get("before", 0))
        rate = f"{records / elapsed:,.0f} rec/s" if elapsed > 0.5 else "- rec/s"
        return Text(f"{int(task.fields.get('records', 0)):,} records  {rate}")


class Bar:
    """A `Listener` (backfill.py) drawing the progress of each entity on standard error."""

    def __init__(self, console: Console | None = None, *, of_bytes: bool = False) -> None:
        """`of_bytes`: the bar counts a file's bytes (shown as done of the file's size), not records."""
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<14}"), BarColumn(), *([DownloadColumn()] if of_bytes else []), _Rate(),
            TextColumn("left"), TimeRemainingColumn(), console=self.console, disable=not self.console.is_terminal,
        )  # fmt: skip
        self.tasks: dict[str, TaskID] = {}
        self.plain: dict[str, tuple[int, float, float]] = {}  # entity -> (records, started, last line)

    @contextmanager
    def shown(self) -> Iterator[Bar]:
        with self.progress:
            yield self

    def say(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def begin(self, entity: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if entity in self.tasks:
            self.progress.reset(self.tasks[entity], total=total, completed=0, records=done, before=done)
        else:
            self.tasks[entity] = self.progress.add_task(entity, total=total, records=done, before=done)
        self.plain[entity] = (done, now, now)

    def advance(self, entity: str, records: int, amount: int) -> None:
        task = self.tasks[entity]
        done = int(self.progress.tasks[task].fields["records"]) + records
        completed = self.progress.tasks[task].completed + amount
        total = self.progress.tasks[task].total
        if total is not None and completed > total:  # more than the estimate: the bar grows
            self.progress.update(task, total=completed)
        self.progress.update(task, advance=amount, records=done)
        if self.progress.disable:
            before, started, last = self.plain[entity]
            now = time.monotonic()
            if now - last >= PLAIN_EVERY:
                rate = (done - before) / (now - started) if now > started else 0.0
                self.say(f"{entity}: {done:,} records, {rate:,.0f} rec/s")
                self.plain[entity] = (before, started, now)


def summary(tallies: Sequence[Tally]) -> str:
    """A table of each entity's records per status, then the records not applied, with why."""
    extra = ["bad lines"] if any(t.counts.get("bad lines") for t in tallies) else []
    head = ["ENTITY", *STATUSES, *(e.upper() for e in extra), "RECORDS", "SECONDS"]
    rows = []
    for tally in tallies:
        counts = [tally.counts.get(status, 0) for status in (*STATUSES, *extra)]
        rows.append([tally.entity, *(f"{n:,}" for n in counts), f"{tally.records:,}", f"{tally.seconds:.1f}"])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join([row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])
        for row in [head, *rows]
    ]
    for tally in tallies:
        if not tally.problems:
            continue
        lines.append(f"{tally.entity}: not applied:")
        for problem in sorted(tally.problems, key=lambda p: p.line or 0):
            where = f"line {problem.line}: " if problem.line is not None else ""
            record = f"{problem.zoho_id} " if problem.zoho_id is not None else ""
            lines.append(f"  {where}{record}{problem.status}: {problem.message}")
        if tally.unshown:
            lines.append(f"  ... and {tally.unshown:,} more")
    return "\n".join(lines)
