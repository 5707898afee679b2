"""Logging: syncengine's logs as one JSON object per line on standard error.

    {"time": "2026-11-26T13:50:01.123Z", "level": "INFO", "logger": "syncengine.http",
     "message": "request", "request_id": "5f0c...", "tenant": "school", "entity": "<entity>",
     "status": 200, "records": 2, "counts": {"NEW": 2}, "duration_ms": 12.4}

Fields come from `extra={"fields": {...}}`. Record contents and keys are never passed in.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


def configure_logging(level: str = "INFO") -> None:
    """Send syncengine's logs to standard error as JSON lines (once per process)."""
    logger = logging.getLogger("syncengine")
    logger.setLevel(level)
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
