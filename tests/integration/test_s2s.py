"""Federation between two Rookery servers on loopback (RFC 6120, XEP-0220, XEP-0178, RFC 6121 §3-§5
across domains): real servers, real slixmpp clients."""

from __future__ import annotations

import asyncio

from s2s_helpers import federated_pair
from xmpp_helpers import disconnect, slix_client


async def _wait(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def subscribe_and_chat(sa, a_jid: str, a_pw: str, sb, b_jid: str, b_pw: str) -> None:
    """Two users of two servers subscribe to each other, see presence, chat both ways, see logout."""
    a = await slix_client(sa, a_jid, a_pw)
    b = await slix_client(sb, b_jid, b_pw)
    try:
        got_a: list[str] = []
        got_b: list[str] = []
        a.add_event_handler("message", lambda m: got_a.append(m["body"]) if m["body"] else None)
        b.add_event_handler("message", lambda m: got_b.append(m["body"]) if m["body"] else None)
        for c in (a, b):
            c.auto_authorize = True
            c.auto_subscribe = True
        a.send_presence(pto=b_jid, ptype="subscribe")
        await _wait(lambda: a.client_roster[b_jid]["subscription"] == "both"
                    and b.client_roster[a_jid]["subscription"] == "both", 20)
        await _wait(lambda: bool(a.client_roster[b_jid].resources) and bool(b.client_roster[a_jid].resources))
        a.send_message(mto=b_jid, mbody="hello b", mtype="chat")
        b.send_message(mto=a_jid, mbody="hello a", mtype="chat")
        await _wait(lambda: "hello b" in got_b and "hello a" in got_a)
        b_res = str(b.boundjid.resource)
        await disconnect(b)
        await _wait(lambda: b_res not in a.client_roster[b_jid].resources)
    finally:
        await disconnect(a, b)


async def test_users_of_two_servers_subscribe_see_presence_and_chat_over_dialback(rookery_server_factory):
    sa, sb = federated_pair(rookery_server_factory)
    a_jid, a_pw = sa.make_user()
    b_jid, b_pw = sb.make_user()
    await subscribe_and_chat(sa, a_jid, a_pw, sb, b_jid, b_pw)
    links = sa.call_sync(sa.server.s2s.describe)
    assert {(d["direction"], d["auth"]) for d in links} >= {("out", "dialback"), ("in", "dialback")}
