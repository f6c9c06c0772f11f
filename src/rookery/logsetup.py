"""Logging set-up from ``[log]``: stderr or a file, plain or JSON lines, reopened on SIGUSR1
(logrotate) and re-applied on ``rookery reload``.

The storage libraries (SQLAlchemy, aiosqlite, asyncpg, Alembic) log at warning and above only, even at
``level = "debug"``: debug is for what the server does.  ``rookery debug JID`` traces one account's
stanzas on the ``rookery.trace`` logger, whatever the level.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .config import Config

PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("sqlalchemy", "aiosqlite", "asyncpg", "alembic")
_HANDLER_NAME = "rookery"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Appends to ``path``; ``reopen()`` opens it again (after logrotate moved it away)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> Any:
        import os

        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            old.close()
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            try:
                self.stream.close()
            finally:
                super().close()
        finally:
            self.release()


def configure(cfg: Config) -> None:
    """Install the handler ``[log]`` describes on the root logger (replacing ours from before)."""
    root = logging.getLogger()
    handler: logging.Handler
    if cfg.log.file:
        handler = ReopenableFileHandler(cfg.log.file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JSONFormatter() if cfg.log.format == "json" else logging.Formatter(PLAIN))
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME or _is_default(old):
            root.removeHandler(old)
            if isinstance(old, ReopenableFileHandler):
                old.close()
    root.addHandler(handler)
    root.setLevel(cfg.effective_log_level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def _is_default(h: logging.Handler) -> bool:
    """A handler ``logging.basicConfig`` installed (replaced by ours)."""
    return type(h) is logging.StreamHandler and h.get_name() is None and getattr(h, "stream", None) is sys.stderr


def reopen() -> bool:
    """SIGUSR1: reopen the log file (True when there is one)."""
    done = False
    for h in logging.getLogger().handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()
            done = True
    return done
