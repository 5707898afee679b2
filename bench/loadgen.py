"""A small HTTP/1.1 keep-alive load generator, run as a process of its own (not the server's).

    python -m bench.loadgen SPEC.json        # prints the result as one JSON object

The spec names the server (loopback only), the path, the headers, a file of request bodies (one
JSON document a line, each sent once, or over and over with `repeat`), how many connections, and
the mode:

- `closed`: every connection sends its next body as soon as its last answer is in (max rate);
- `open`: bodies are offered at `rate` per second on a fixed schedule, whatever the server
  does; a body waits for a free connection if all are busy. Latency is counted from the
  scheduled time, so a slow server is not hidden by a client that slows down with it.

Both stop by themselves after `max_requests` or `max_seconds`, whichever comes first, and
give up on answers still missing `grace` seconds later. Response bodies are not decoded: the
result counts the occurrences of each byte pattern of `count`, e.g. `"status":"NEW"`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Spec:
    port: int
    path: str
    bodies: str
    host: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 16
    mode: str = "closed"
    rate: float = 0.0
    max_requests: int | None = None
    max_seconds: float = 30.0
    grace: float = 30.0
    count: dict[str, str] = field(default_factory=dict)
    #: Send the bodies over and over (closed loop), until `max_requests` or `max_seconds`.
    repeat: bool = False

    def check(self) -> None:
        if self.host not in LOOPBACK:
            raise SystemExit(f"loadgen only sends to this machine; host {self.host!r} is not a loopback address")
        if self.mode not in ("closed", "open"):
            raise SystemExit(f"mode must be 'closed' or 'open', got {self.mode!r}")
        if self.mode == "open" and self.rate <= 0:
            raise SystemExit(f"an open-loop run needs a positive rate, got {self.rate!r}")


class Connection(asyncio.Protocol):
    """One keep-alive connection; `request()` sends a prepared request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.head_end = -1
        self.length = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # asyncio hands a stream its Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head_end < 0:
            self.head_end = self.buffer.find(b"\r\n\r\n")
            if self.head_end < 0:
                return
            head = bytes(self.buffer[: self.head_end]).lower()
            marker = head.find(b"\r\ncontent-length:")
            if marker < 0:
                self._fail("the response has no Content-Length (chunked responses are not supported)")
                return
            end = head.find(b"\r\n", marker + 2)
            self.length = int(head[marker + 17 : end if end > 0 else len(head)])
        total = self.head_end + 4 + self.length
        if len(self.buffer) >= total:
            status = int(self.buffer[9:12])
            body = bytes(self.buffer[self.head_end + 4 : total])
            del self.buffer[:total]
            self.head_end, self.length = -1, -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((status, body))

    def _fail(self, message: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(RuntimeError(message))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def prepare(spec: Spec) -> list[bytes]:
    """Every request as the bytes to write: the head, then the body."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in spec.headers.items())
    requests = []
    with open(spec.bodies, "rb") as lines:
        for line in lines:
            body = line.rstrip(b"\n")
            if not body:
                continue
            head = (
                f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            )
            requests.append(head.encode() + body)
            if spec.max_requests is not None and len(requests) >= spec.max_requests:
                break
    return requests


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    first_failure: str = ""
    last_done: float = 0.0

    def record(self, status: int, body: bytes, latency: float, patterns: dict[str, bytes]) -> None:
        self.statuses[status] += 1
        self.latencies.append(latency)
        self.last_done = time.perf_counter()
        for name, pattern in patterns.items():
            self.counts[name] += body.count(pattern)
        if status != 200 and not self.first_failure:
            self.first_failure = f"{status}: {body[:300].decode(errors='replace')}"

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"


async def run(spec: Spec) -> dict[str, Any]:
    spec.check()
    requests = prepare(spec)
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(spec.connections):
        _, protocol = await loop.create_connection(Connection, spec.host, spec.port)
        connections.append(protocol)
    patterns = {name: pattern.encode() for name, pattern in spec.count.items()}
    tally = Tally()
    queue: asyncio.Queue[tuple[bytes, float] | None] = asyncio.Queue()
    started = time.perf_counter()
    stop_at = started + spec.max_seconds
    sent = 0

    async def work(connection: Connection) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            data, scheduled = item
            try:
                status, body = await connection.request(data)
            except (ConnectionError, RuntimeError) as exc:
                tally.error(exc)
                return
            tally.record(status, body, time.perf_counter() - scheduled, patterns)

    async def closed_loop(connection: Connection) -> None:
        nonlocal sent
        total = (spec.max_requests or len(requests)) if spec.repeat else len(requests)
        while sent < total and time.perf_counter() < stop_at:
            data = requests[sent % len(requests)]
            sent += 1
            begun = time.perf_counter()
            try:
                status, body = await connection.request(data)
            except (ConnectionError, RuntimeError) as exc:
                tally.error(exc)
                return
            tally.record(status, body, time.perf_counter() - begun, patterns)

    async def open_loop() -> None:
        nonlocal sent
        workers = [asyncio.create_task(work(c)) for c in connections]
        interval = 1.0 / spec.rate
        for data in requests:
            scheduled = started + sent * interval
            if scheduled >= stop_at:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((data, scheduled))
            sent += 1
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)

    async def drive() -> None:
        if spec.mode == "closed":
            await asyncio.gather(*(closed_loop(c) for c in connections))
        else:
            await open_loop()

    try:
        await asyncio.wait_for(drive(), spec.max_seconds + spec.grace)
    except TimeoutError:
        tally.error(TimeoutError(f"answers still missing {spec.grace:.0f} s after the end of the run"))
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
    seconds = (tally.last_done or time.perf_counter()) - started
    latencies = sorted(tally.latencies)
    return {
        "mode": spec.mode,
        "connections": spec.connections,
        "rate": spec.rate,
        "sent": sent,
        "completed": len(latencies),
        "seconds": seconds,
        "statuses": {str(status): n for status, n in sorted(tally.statuses.items())},
        "counts": dict(tally.counts),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "first_failure": tally.first_failure,
        "latency_ms": {name: percentile(latencies, q) * 1000 for name, q in LATENCIES},
    }


LATENCIES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted values (nan for none)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.loadgen SPEC.json", file=sys.stderr)
        return 2
    spec = Spec(**json.loads(Path(argv[0]).read_text()))
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # a cheaper client leaves more of the two cores to the server

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(run(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
