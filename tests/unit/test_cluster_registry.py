"""The cluster registry between two workers in one process (issue 12): RPC calls, the events for
other workers' sessions (announced, gone — not for a session handed over), and a worker's death."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from rookery.cluster.registry import ClusterSessionRegistry
from rookery.jid import JID
from rookery.routing.registry import LocalSessionRegistry


class FakeSession:
    def __init__(self, full: str) -> None:
        self.jid = JID.parse(full)
        self.priority = 0
        self.available = True
        self.presence = None
        self.interested = False
        self.where = "local"
        self.ext: dict[str, Any] = {}
        self.got: list[Any] = []

    def send(self, el: Any) -> None:
        self.got.append(el)


async def until(pred: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


@pytest.fixture
async def pair(tmp_path):
    regs = [ClusterSessionRegistry(LocalSessionRegistry(), i, 2, tmp_path) for i in range(2)]
    events: list[list[tuple[str, bool]]] = [[], []]
    for i, r in enumerate(regs):
        r.on_remote = lambda ref, gone, i=i: events[i].append((ref.jid.full, gone))
        await r.start()
    await until(lambda: all(r.peers() for r in regs))
    yield regs, events
    for r in regs:
        with contextlib.suppress(Exception):
            await r.shutdown()


async def test_rpc_call_answers_sync_and_async_handlers_and_errors(pair):
    (w0, w1), _ = pair

    async def later(p: Any) -> Any:
        await asyncio.sleep(0.01)
        return {"twice": p * 2}

    w1.serve("echo", lambda p: [p, "from 1"])
    w1.serve("later", later)
    w1.serve("boom", lambda p: 1 / 0)
    assert await w0.call(1, "echo", {"a": 1}) == [{"a": 1}, "from 1"]
    assert await w0.call(1, "later", 21) == {"twice": 42}
    with pytest.raises(RuntimeError):
        await w0.call(1, "boom", None)
    with pytest.raises(RuntimeError):
        await w0.call(1, "nobody", None)
    with pytest.raises(ConnectionError):
        await w0.call(5, "echo", None)
    w1.serve("echo", None)
    with pytest.raises(RuntimeError):
        await w0.call(1, "echo", None)


async def test_announced_gone_and_moved_sessions(pair):
    (w0, w1), events = pair
    s = FakeSession("u@example.org/phone")
    w0.add(s)
    w0.publish(s, "carbons", True)
    await until(lambda: ("u@example.org/phone", False) in events[1])
    ref = w1.get(s.jid)
    assert ref is not None and ref.ext == {"carbons": True} and ref.where == "worker 0"
    # handed over to worker 1: no "gone" anywhere for it
    assert w0.remove(s, moved=True)
    s1 = FakeSession("u@example.org/phone")
    w1.add(s1, moved=True)
    await until(lambda: w0.get(s1.jid) is not None)
    assert ("u@example.org/phone", True) not in events[0] + events[1]
    # ended: gone on the other worker
    w1.remove(s1)
    await until(lambda: ("u@example.org/phone", True) in events[0])
    assert w0.get(s1.jid) is None


async def test_a_dead_worker_s_sessions_are_gone_and_its_calls_fail(pair):
    (w0, w1), events = pair
    w0.add(FakeSession("v@example.org/a"))
    await until(lambda: events[1])

    async def never(p: Any) -> Any:
        await asyncio.sleep(60)

    w0.serve("never", never)
    call = asyncio.ensure_future(w1.call(0, "never", None, timeout=10))
    await asyncio.sleep(0.05)
    await w0.shutdown()
    with pytest.raises(ConnectionError):
        await call
    await until(lambda: ("v@example.org/a", True) in events[1])
    assert w1.get(JID.parse("v@example.org/a")) is None
