"""Export files read as a stream of records, and loaded through the pipeline in batches.

    for item in ExportReader(Path(f"{entity.name}.ndjson")):   # reader.done: bytes read so far
        item.line, item.record or item.error

Formats, told by the file's start (and `.csv`):
- a JSON array of records, `[{...}, {...}]`, on one line or many;
- Zoho's pages, `{"data": [...], "info": {...}}`: one, several one after another, or one per line;
- NDJSON: a record (or a page) per line;
- Zoho's CSV export, its header row of API names (`Id` or `id` is the record's id; `Owner.id`
  style columns are the lookup's id; an empty cell is an empty value).

Only one record (or, for a page on one line, one page) is held at a time. A line that holds no
record (malformed JSON, a CSV row of the wrong width) is an item with an error and its line number,
and reading goes on; a JSON array or page broken in its structure (a missing `]`) ends the file
there, with an error at the line where the broken value started.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from syncengine.backfill import Listener, Tally
from syncengine.engine import SyncEngine
from syncengine.parsing import decode_json

#: Records per sync of a file load.
BATCH_RECORDS = 1000
CHUNK = 1 << 20  # bytes read at a time
_STRUCTURE = re.compile(rb'["{}\[\]]')  # outside strings: what changes the depth or opens a string
_STRING_END = re.compile(rb'["\\]')
_SPACE = re.compile(rb"[ \t\r\n,]*")  # between values (commas too, between an array's records)
_ENVELOPE = re.compile(rb'\{\s*"data"\s*:\s*\[')


@dataclass(frozen=True)
class Item:
    """One record of the file (`record`), or what is wrong with a line that holds none (`error`)."""

    line: int
    record: Any = None
    error: str | None = None


class ExportReader:
    """Iterates over a file's records; `done` is the bytes read so far, `size` the file's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.done = 0

    def __iter__(self) -> Iterator[Item]:
        with self.path.open("rb") as file:
            head = file.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
            file.seek(0)
            if self.path.suffix.lower() == ".csv" or not head.startswith((b"{", b"[")):
                yield from self._csv(file)
            elif head.startswith(b"{") and _complete(file.readline()):
                file.seek(0)
                yield from self._lines(file)
            else:
                file.seek(0)
                yield from self._stream(file)

    # NDJSON: a record or a page a line

    def _lines(self, file: IO[bytes]) -> Iterator[Item]:
        for number, line in enumerate(file, 1):
            self.done += len(line)
            if not line.strip():
                continue
            try:
                values = [decode_json(line)]
            except msgspec.DecodeError as error:  # pages one after another on a line, or a bad line
                try:
                    values = [decode_json(raw) for raw in _values(line)]
                except (msgspec.DecodeError, ValueError):
                    yield Item(number, error=f"malformed JSON: {error}")
                    continue
            for value in values:
                yield from _records(value, number)

    # JSON arrays and pages, over as many lines as they take

    def _stream(self, file: IO[bytes]) -> Iterator[Item]:
        stream = _Stream(file, self)
        while True:
            stream.skip()
            if stream.at_end():
                return
            opener = stream.peek(1)
            page = opener == b"{" and stream.page_starts()
            if opener == b"[" or page:  # its records one at a time
                stream.open_array()
                while True:
                    stream.skip()
                    if stream.at_end():
                        yield Item(stream.line, error="unterminated JSON array: a missing ] at the end of the file")
                        return
                    if stream.peek(1) == b"]":
                        stream.start += 1
                        break
                    if stream.peek(1) != b"{":
                        yield Item(stream.line, error=f"expected a record (a JSON object), found {stream.peek(20)!r}")
                        return
                    found = stream.value()
                    if isinstance(found, Item):
                        yield found
                        return
                    yield _record(*found)
                if page and not stream.close_page():
                    yield Item(stream.line, error="unterminated JSON page: a missing } at the end of the file")
                    return
            elif opener == b"{":
                found = stream.value()
                if isinstance(found, Item):
                    yield found
                    return
                first, raw = found
                try:
                    yield from _records(decode_json(raw), first)
                except msgspec.DecodeError as error:
                    yield Item(first, error=f"malformed JSON: {error}")
            else:
                yield Item(stream.line, error=f"expected a JSON object or array, found {stream.peek(20)!r}")
                return

    # Zoho's CSV export

    def _csv(self, file: IO[bytes]) -> Iterator[Item]:
        text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="")
        rows = csv.reader(text)
        try:
            header = next(rows)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as error:
            yield Item(1, error=f"unreadable CSV header: {error}")
            return
        columns = [_column(name) for name in header]
        if "id" not in columns:
            yield Item(1, error=f"the CSV header has no Id column (it has: {', '.join(header[:10])})")
            return
        while True:
            first = rows.line_num + 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as error:
                yield Item(first, error=f"unreadable CSV: {error}")
                continue
            self.done = file.tell()
            if not any(row):
                continue
            if len(row) != len(columns):
                yield Item(first, error=f"{len(row)} values for the header's {len(columns)} columns")
                continue
            yield Item(first, {name: cell or None for name, cell in zip(columns, row, strict=True) if name})


def _column(name: str) -> str | None:
    """A CSV header's record key: `Id` is `id`; `Owner.id` is the lookup `Owner`; `Owner.name`: none."""
    name = name.strip()
    if name.lower() == "id":
        return "id"
    if "." in name:
        field, _, part = name.rpartition(".")
        return field if part.lower() == "id" else None
    return name


def _complete(line: bytes) -> bool:
    """Whether a line is one whole JSON value (then the file is read a line at a time)."""
    try:
        decode_json(line)
    except msgspec.DecodeError:
        return False
    return True


def _records(value: Any, line: int) -> Iterator[Item]:
    """A decoded value's records: a page's `data`, or the value as one record."""
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        for record in value["data"]:
            yield (
                Item(line, record) if isinstance(record, dict) else Item(line, error="a page's data holds a non-record")
            )
    elif isinstance(value, dict):
        yield Item(line, value)
    elif isinstance(value, list):
        for record in value:
            yield Item(line, record) if isinstance(record, dict) else Item(line, error="an array holds a non-record")
    else:
        yield Item(line, error=f"expected a record (a JSON object), found {type(value).__name__}")


def _record(line: int, raw: bytes) -> Item:
    """One record's JSON text, checked as JSON and handed on undecoded (the pipeline decodes it
    straight into the entity's Struct)."""
    try:
        msgspec.json.decode(raw, type=msgspec.Raw)
    except msgspec.DecodeError as error:
        return Item(line, error=f"malformed JSON: {error}")
    return Item(line, msgspec.Raw(raw))


class _Stream:
    """A file's bytes as a buffer read on demand: the unread part starts at `start`, on `line`."""

    def __init__(self, file: IO[bytes], reader: ExportReader) -> None:
        self.file, self.reader = file, reader
        self.buffer, self.start, self.line = b"", 0, 1

    def more(self) -> bool:
        """Read on (the part already read is dropped); False at the end of the file."""
        chunk = self.file.read(CHUNK)
        self.reader.done += len(chunk)
        self.buffer = self.buffer[self.start :] + chunk
        self.start = 0
        return bool(chunk)

    def at_end(self) -> bool:
        return self.start >= len(self.buffer) and not self.more()

    def peek(self, size: int) -> bytes:
        return self.buffer[self.start : self.start + size]

    def move(self, end: int) -> None:
        self.line += self.buffer.count(b"\n", self.start, end)
        self.start = end

    def skip(self) -> None:
        """Past spaces, newlines and commas."""
        while True:
            match = _SPACE.match(self.buffer, self.start)
            self.move(match.end() if match else self.start)
            if self.start < len(self.buffer) or not self.more():
                return

    def page_starts(self) -> bool:
        """Whether the object here is a page whose first key is `data` (its records are streamed)."""
        while len(self.buffer) - self.start < 4096 and self.more():
            pass
        return _ENVELOPE.match(self.buffer, self.start) is not None

    def open_array(self) -> None:
        """Into the array here, or the `data` array of the page here."""
        match = _ENVELOPE.match(self.buffer, self.start)
        self.move(match.end() if match else self.start + 1)

    def close_page(self) -> bool:
        """Past the rest of a page after its `data` (`"info": {...}}`); False if it never ends."""
        while True:
            end = _scan(self.buffer, self.start, 1)
            if end is not None:
                self.move(end)
                return True
            if not self.more():
                return False

    def value(self) -> tuple[int, bytes] | Item:
        """The whole object or array here, with the line it starts on; an Item if it never ends."""
        first = self.line
        while True:
            end = _scan(self.buffer, self.start, 0)
            if end is not None:
                raw = self.buffer[self.start : end]
                self.move(end)
                return first, raw
            if not self.more():
                return Item(first, error="unterminated JSON value: a missing } or ] (the rest of the file is not read)")


def _scan(buffer: bytes, start: int, depth: int) -> int | None:
    """Scanning from `start` at `depth`, just past the bracket that closes back to depth 0; None if
    the buffer ends first. Strings are skipped whole, escapes and all."""
    position = start
    find, string_end = _STRUCTURE.search, _STRING_END.search
    while True:
        found = find(buffer, position)
        if found is None:
            return None
        char, position = found.group(), found.end()
        if char == b'"':
            while True:
                quote = string_end(buffer, position)
                if quote is None:
                    return None
                if quote.group() == b"\\":
                    position = quote.end() + 1
                    continue
                position = quote.end()
                break
        elif char in (b"{", b"["):
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return position


def _values(line: bytes) -> Iterator[bytes]:
    """The JSON values written one after another on a line (`{...}{...}`); ValueError if it is not that."""
    start = _SPACE.match(line, 0)
    position = start.end() if start else 0
    while position < len(line.rstrip()):
        end = _scan(line, position, 0)
        if end is None:
            raise ValueError("not whole JSON values")
        yield line[position:end]
        space = _SPACE.match(line, end)
        position = space.end() if space else end


async def load_file(engine: SyncEngine, tenant: str, entity: str, reader: ExportReader, listener: Listener) -> Tally:
    """Sync every record of `reader` into `entity`, `BATCH_RECORDS` a transaction; bad lines are
    counted and shown, not synced."""
    name = engine.catalog.entity(entity).name
    tally = Tally(name)
    started = time.perf_counter()
    listener.begin(name, 0, reader.size)
    batch: list[Any] = []
    lines: list[int] = []
    shown = 0

    async def flush() -> None:
        nonlocal shown
        if batch:
            tally.add(await engine.sync(tenant, name, batch), lines)
        listener.advance(name, len(batch), reader.done - shown)
        shown = reader.done
        batch.clear()
        lines.clear()

    for item in reader:
        if item.error is not None:
            tally.bad_line(item.line, item.error)
            listener.say(f"{reader.path}:{item.line}: {item.error}; skipped")
            continue
        batch.append(item.record)
        lines.append(item.line)
        if len(batch) >= BATCH_RECORDS:
            await flush()
    await flush()
    tally.seconds = time.perf_counter() - started
    return tally
