"""Issue F2 (slow reader): a client that asks for large answers and never reads them.  What waits to be
sent to it is bounded by ``[limits] max_send_buffer`` (past it nothing more is read from that client),
it is cut after ``send_timeout``, and a bystander stays fast meanwhile.  Real sockets on loopback."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from xmpp_helpers import RawClient  # noqa: E402

LIMIT = 256 * 1024
PRIVATE = "jabber:iq:private"


def buffered(server) -> int:  # noqa: ANN001
    """The most bytes waiting in any client connection's send buffer (asyncio's, plus ours)."""
    most = 0
    for stream in list(server.server.streams):
        t = stream.transport
        if t.transport is not None:
            most = max(most, t.transport.get_write_buffer_size() + sum(map(len, t._out)))
    return most


async def test_a_client_that_never_reads_is_bounded_then_cut_and_others_stay_fast(rookery_server_factory):
    s = rookery_server_factory(limits={"max_send_buffer": LIMIT, "send_timeout": 2.0,
                                       "max_connections_per_ip": 0, "max_unauthenticated_per_ip": 0})
    jid, pw = s.make_user()
    attacker = await RawClient().login(s.c2s_port, jid, pw)
    blob = "x" * 200_000
    r = await attacker.iq(f"<iq type='set' id='store'><query xmlns='{PRIVATE}'>"
                          f"<big xmlns='urn:test:big'>{blob}</big></query></iq>", timeout=10)
    assert r.get("type") == "result"
    bystander = await RawClient().login(s.c2s_port, *s.make_user())
    # 80 requests for 200 KB answers each (16 MB), and never a byte read
    attacker.send("".join(f"<iq type='get' id='g{i}'><query xmlns='{PRIVATE}'><big xmlns='urn:test:big'/></query></iq>"
                          for i in range(80)))
    peak, rtts = 0, []
    start = time.monotonic()
    while time.monotonic() - start < 4.0:  # bounded: 2 s send_timeout, then the cut
        peak = max(peak, s.call_sync(buffered, s))
        t0 = time.monotonic()
        r = await bystander.iq(f"<iq type='get' id='p{len(rtts)}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        rtts.append(time.monotonic() - t0)
        assert r.get("type") == "result"
        await asyncio.sleep(0.05)
    # the answers already under way when the mark is crossed (about two of 200 KB) may go over it;
    # never the 16 MB asked for (11 MB and more without the limit)
    assert peak <= LIMIT + 2 * 210_000, peak
    assert max(rtts) < 0.5, max(rtts)
    # cut after send_timeout: its session is gone, the bystander's is not
    assert s.session_count() == 1
    assert s.call_sync(buffered, s) <= 250_000  # nothing of the attacker's left
    await bystander.close()
    attacker.writer.transport.abort()
