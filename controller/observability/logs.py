"""Structured logs for the controller and the agent: one line per event, text or JSON.

`--log-format text` (the default) keeps the familiar
`2026-01-01 12:00:00,000 INFO lepton.controller: message` lines and appends
any context fields as ` key=value`; `--log-format json` writes one JSON object
per line: ts (RFC 3339, UTC), level, logger, msg, then the context fields and,
for errors, exc (the traceback as one string, so a line stays a line).

Context fields come from two places:
* `extra={"node_id": ..., "task_id": ..., "job_id": ..., "term": ...}` on a
  log call (the names in CONTEXT_FIELDS are the ones the code uses);
* a `ContextFilter` installed by the process, which stamps every record with
  static fields (the controller id, the agent's node id) and values read when
  the record is made (the controller's current Raft term).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from collections.abc import Callable

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Record attributes that are context, in the order they are printed.
CONTEXT_FIELDS = ("controller", "node_id", "job_id", "task_id", "attempt", "term", "index", "peer")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _context(record: logging.LogRecord) -> dict:
    out = {}
    for k in CONTEXT_FIELDS:
        v = record.__dict__.get(k)
        if v not in (None, ""):
            out[k] = v
    # Any other extra= field is kept too, after the known ones.
    for k, v in record.__dict__.items():
        if k not in _STANDARD and k not in out and k not in CONTEXT_FIELDS and not k.startswith("_"):
            out[k] = v
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in _context(record).items():
            doc[k] = v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        ctx = _context(record)
        # The controller id is on every line of a controller; in text it is noise.
        ctx.pop("controller", None)
        if ctx:
            line += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return line


class ContextFilter(logging.Filter):
    """Stamps every record with static fields and with dynamic ones computed per record."""

    def __init__(self, static: dict | None = None, dynamic: dict[str, Callable[[], object]] | None = None):
        super().__init__()
        self.static = dict(static or {})
        self.dynamic = dict(dynamic or {})

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in self.static.items():
            if k not in record.__dict__:
                setattr(record, k, v)
        for k, fn in self.dynamic.items():
            if k not in record.__dict__:
                try:
                    setattr(record, k, fn())
                except Exception:  # a context value must never cost the log line
                    pass
        return True


def setup(level: str = "INFO", fmt: str = "text", stream=None) -> logging.Handler:
    """Configures the root logger with one stderr handler in `fmt`; returns the handler.

    Callers add a ContextFilter to the handler once they know their ids.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    logging.getLogger("grpc").setLevel(logging.WARNING)
    return handler


def add_context(static: dict | None = None, dynamic: dict[str, Callable[[], object]] | None = None) -> None:
    """Adds a ContextFilter to every handler of the root logger."""
    f = ContextFilter(static, dynamic)
    for h in logging.getLogger().handlers:
        h.addFilter(f)
