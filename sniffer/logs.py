"""Structured logging: one JSON object per line, with the trace context of the caller.

Contract:
* Every record carries ``time``, ``level``, ``logger``, ``message``, any ``extra={...}``
  fields, and ``trace_id``/``span_id`` when emitted inside a recording span.
* Values that are not JSON-serialisable are rendered with ``str``; a log call never
  raises because of its arguments.
* Tokens must never be passed to a logger; as a second line of defence, any value of a
  field whose name contains "token", "secret" or "authorization" is redacted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SENSITIVE = ("token", "secret", "authorization", "password")


def is_sensitive(field: str) -> bool:
    """True iff a field of this name must be redacted (its name mentions a credential)."""
    lowered = field.lower()
    return any(s in lowered for s in _SENSITIVE)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = f"{span.trace_id:032x}"
            out["span_id"] = f"{span.span_id:016x}"
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            out[key] = "[redacted]" if is_sensitive(key) else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items()
                  if k not in _STANDARD and not k.startswith("_")}
        for key in extras:
            if is_sensitive(key):
                extras[key] = "[redacted]"
        line = f"{record.levelname[0]} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log and client chatter are noise at INFO.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
