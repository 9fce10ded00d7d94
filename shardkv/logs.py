"""How node and router processes write their logs: plain text, or one JSON object a line.

``configure(level, log_format, fields=...)`` sets up the process's root
logger once, at start (``shardkv-node`` and ``shardkv-router`` call it); the
modules log through their own ``logging.getLogger(__name__)``.

- ``text``: ``<time> <LEVEL> <logger>: <message>``, for a terminal.
- ``json``: one object a line, for a log pipeline (Loki, Elasticsearch,
  CloudWatch): ``time`` (UTC, ISO 8601, milliseconds), ``level``,
  ``logger``, ``message``, then every field the call gave with
  ``extra=`` (``group_id``, ``node_id``, ``term``...), then the process's
  own ``fields`` (a node's ``node_id``) unless the call gave the same name,
  then ``exception`` (the formatted traceback) if there was one. A value
  JSON cannot hold is written as its ``str()``.

The identifiers in ``extra=`` are spelled out as everywhere in the code
(``group_id``, ``node_id``), so a query can filter one group's lines across
every node and router.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring); ``fields`` go on every line."""

    def __init__(self, fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in line:
                line[name] = value
        for name, value in self.fields.items():
            line.setdefault(name, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(
    level: str,
    log_format: str,
    *,
    fields: Mapping[str, object] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr) as asked.

    Replaces the root logger's handlers: a process configures its logs once,
    at its entry point. ``fields`` apply to the JSON format only (the text
    format's messages already name what they are about).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    formatter = JsonFormatter(fields) if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
