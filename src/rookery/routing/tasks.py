"""Background work the router and modules start (a stanza's asynchronous handling, a broadcast):
kept referenced until done, failures logged, waited for at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)


class Tasks:
    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: set[asyncio.Future[Any]] = set()

    def spawn(self, aw: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``aw`` in the background, logging its failure."""
        task = asyncio.ensure_future(aw)
        self.pending.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def wait(self, timeout: float) -> None:
        """Until nothing is pending or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
