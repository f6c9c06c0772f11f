"""Whitespace keepalives (RFC 6120 §4.6.1) go out ``KEEPALIVE_BATCH`` streams at a time, spaced out, so
that a pass over many connections never holds the event loop for long."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rookery import server as server_mod
from rookery.config import Config
from rookery.server import Server


class _Stream:
    def __init__(self, sent: list[int], i: int) -> None:
        self.sent, self.i = sent, i

    def keepalive(self) -> None:
        self.sent.append(self.i)


async def test_keepalives_are_spread_over_loop_turns(tmp_path: Path) -> None:
    srv = Server(Config.model_validate({"data_dir": str(tmp_path)}))
    sent: list[int] = []
    n = 2 * server_mod.KEEPALIVE_BATCH + 7
    streams: list[Any] = [_Stream(sent, i) for i in range(n)]
    srv._keepalive_batch(streams, 0)
    assert sent == list(range(server_mod.KEEPALIVE_BATCH))  # the first batch at once, the rest later
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == list(range(n))  # every stream once, in order
    sent.clear()
    srv._keepalive_batch(streams, 0, 0.05)  # batches 50 ms apart
    await asyncio.sleep(0.02)
    assert len(sent) == server_mod.KEEPALIVE_BATCH
    await asyncio.sleep(0.2)
    assert sent == list(range(n))
