"""An HTTP fake's server thread: the Moodle and Zoho fakes serve on 127.0.0.1 for a block."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import HTTPServer


@contextmanager
def serving(server: HTTPServer, name: str) -> Iterator[None]:
    """`server` answers in a thread of its own until the block ends; then it is shut and closed."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
