"""Modules across workers (issue 12) where a parametrized module test does not reach: XEP-0198 §5
resumption onto another worker: the supervisor hands consecutive connections
to the workers in turn, so a client that reconnects right after losing its connection lands on the
other worker, which takes the detached session over from its holder (the ``smacks.handover`` cluster
call) — its counters, unacknowledged stanzas, presence and published state — and resumes it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_stream_management import (
    SM,
    N,
    T,
    burst,
    close_all,
    collect_numbers,
    drain,
    enable,
    failed_condition,
    handle_until_cut,
    is_msg,
    number,
)
from xmpp_helpers import RawClient, eventually
from xmpp_helpers import tls_login as login

from rookery.control import request
from rookery.testing import ProcessServer


@pytest.fixture(scope="module")
def workers() -> Iterator[ProcessServer]:
    d = tempfile.mkdtemp(prefix="rookery-resume-")
    s = ProcessServer({"workers": 2, "c2s": {"resume_timeout": 30}}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def per_worker(s: ProcessServer) -> dict[str, int]:
    return dict(request(s.data_dir, {"op": "status"}, timeout=10)["workers"]["sessions"])


async def test_cut_in_a_burst_then_resumed_on_the_other_worker_delivers_every_message_once(workers):
    s = workers
    jid, pw = s.make_user()
    other, opw = s.make_user()
    b = await login(s, other, opw)
    a = await login(s, jid, pw, resource="phone")  # the next worker: not b's
    a2 = RawClient()
    try:
        smid = (await enable(a)).get("id")
        await eventually(lambda: sorted(per_worker(s).values()) == [1, 1], T)
        sender = asyncio.create_task(burst(b, a.jid))
        handled = await handle_until_cut(a, 50, ack_at=20)
        a.writer.transport.abort()
        await asyncio.wait_for(sender, T)
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)  # the worker after a's: b's
        a2.send(f"<resume xmlns='{SM}' previd='{smid}' h='{len(handled)}'/>")
        r = await a2.recv(T)
        assert r.tag == f"{{{SM}}}resumed" and r.get("previd") == smid, r.tag
        rest = await collect_numbers(a2, set(range(1, N + 1)) - set(handled))
        rest += [number(e) for e in await drain(a2) if is_msg(e)]
        assert handled + rest == list(range(1, N + 1))  # every message, once, in order
        await eventually(lambda: sorted(per_worker(s).values()) == [0, 2], T)  # it moved to b's worker
        # the resumed session is live: it sends, it receives, its counters carry on
        a2.send(f"<message to='{b.jid}' type='chat' id='back'><body>back</body></message>")
        m = await b.recv_until(lambda e: is_msg(e) and e.get("id") == "back", T)
        assert m.get("from") == a.jid
        b.send(f"<message to='{a.jid}' type='chat' id='again'><body>{N + 1}</body></message>")
        assert number(await a2.recv_until(lambda e: is_msg(e) and e.get("id") == "again", T)) == N + 1
        a2.send(f"<r xmlns='{SM}'/>")
        ack = await a2.recv_until(lambda e: e.tag == f"{{{SM}}}a", T)
        assert ack.get("h") == "1"  # the message sent since <enable/>: counted on from the holder's count
    finally:
        await close_all(a, a2, b)


async def test_resume_on_the_other_worker_while_the_old_connection_is_open(workers):
    s = workers
    jid, pw = s.make_user()
    a = await login(s, jid, pw)
    a2 = RawClient()
    try:
        smid = (await enable(a)).get("id")
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<resume xmlns='{SM}' previd='{smid}' h='0'/>")
        assert await a.stream_error(T) == "conflict"
        r = await a2.recv(T)
        assert (r.tag, r.get("h")) == (f"{{{SM}}}resumed", "0")
        # a second hand-over, back to the first worker, with the same SM-ID
        a2.writer.transport.abort()
        a3 = RawClient()
        await a3.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a3.send(f"<resume xmlns='{SM}' previd='{smid}' h='0'/>")
        r = await a3.recv(T)
        assert (r.tag, r.get("previd")) == (f"{{{SM}}}resumed", smid)
        await close_all(a3)
    finally:
        await close_all(a, a2)


async def test_unknown_or_foreign_id_fails_on_any_worker(workers):
    s = workers
    jid, pw = s.make_user()
    mallory, mpw = s.make_user()
    a = await login(s, jid, pw)
    m = RawClient()
    try:
        smid = (await enable(a)).get("id")
        a.writer.transport.abort()
        await m.authenticate(s.direct_tls_port, mallory, mpw, tls=True)
        m.send(f"<resume xmlns='{SM}' previd='{smid}' h='0'/>")
        assert failed_condition(await m.recv(T)) == "item-not-found"
        m.send(f"<resume xmlns='{SM}' previd='no-such-id' h='0'/>")
        assert failed_condition(await m.recv(T)) == "item-not-found"
    finally:
        await close_all(a, m)


async def test_detached_push_enabled_session_on_the_other_worker_is_pushed(workers):
    """XEP-0357 §7 for a session kept detached (XEP-0198) on one worker, messaged from the other."""
    from test_push import PUSH, is_push, setup, summary

    s = workers
    app, u, b, user, upw = await setup(s)  # three connections: u on another worker than app and b
    try:
        u.send(f"<enable xmlns='{SM}' resume='true'/>")
        await u.recv_until(lambda e: e.tag == f"{{{SM}}}enabled", T)
        u.writer.transport.abort()
        await asyncio.sleep(0.5)  # the holder sees the connection lost: detached
        b.send(f"<message to='{u.jid}' type='chat' id='a2'><body>while away</body></message>")
        iq = await app.recv_until(is_push, T)
        assert summary(iq)["last-message-sender"] == b.jid
        # disabled from a resource on the other worker: no more notifications
        pad = await login(s, *s.make_user())  # on u's worker: u2 lands on the other one
        u2 = await login(s, user, upw, resource="laptop")
        r = await u2.iq(f"<iq type='set' id='d1'><disable xmlns='{PUSH}' jid='{app.jid}'/></iq>", T)
        assert r.get("type") == "result"
        b.send(f"<message to='{u.jid}' type='chat' id='a3'><body>again</body></message>")
        await app.expect_nothing(0.5)
        await u2.close()
        await pad.close()
    finally:
        for c in (app, u, b):
            await c.close()
