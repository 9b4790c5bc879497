"""Structured logs: one JSON object per line on stdout (journald keeps it)."""

from __future__ import annotations

import json
import logging
import sys
import time

from coordinator.bounded import DETAIL_LIMIT, bounded

# LogRecord attributes that are not caller-supplied `extra` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                # Fields often carry what a caller or the gateway sent.
                entry[key] = bounded(value, DETAIL_LIMIT) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # ovsdbapp and the OVS IDL are chatty at INFO.
    for noisy in ("ovsdbapp", "ovs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
