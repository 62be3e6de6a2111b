"""Log set-up: text for people, one JSON object per line for machines.

Structured fields travel as ``extra={"fields": {...}}`` so both formats show them.

A log line names outside values (mount paths, label values, container names, engine
errors): the text format escapes their control characters, so a newline cannot forge a
line nor an ESC drive the reader's terminal (JSON escapes them by itself), and both formats
cut a message and each field to a length, so a huge label cannot flood the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from kegpackd.shown import cut, one_line

# A log line's message, and each field, is cut to this many characters.
LINE_LIMIT = 4000
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": cut(record.getMessage(), LINE_LIMIT),
        }
        entry.update(_cut_fields(getattr(record, "fields", {})))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _cut_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: cut(v, LINE_LIMIT) if isinstance(v, str) else v for k, v in fields.items()}


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without its traceback (which ``format`` appends on lines of its own):
        the message and the fields, cut and escaped."""
        record.message = cut(record.message, LINE_LIMIT)
        line = super().formatMessage(record)
        fields = getattr(record, "fields", {})
        if fields:
            line += " " + " ".join(f"{k}={cut(str(v), LINE_LIMIT)}" for k, v in fields.items())
        return one_line(line)


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter(_TEXT_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").setLevel(logging.WARNING)
