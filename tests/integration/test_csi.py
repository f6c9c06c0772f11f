"""XEP-0352 Client State Indication against a running server, over raw XML: the stream feature,
presence and chat states held back (latest per sender) while inactive, urgent stanzas and <active/>
flushing in order, the bounded queue, and <inactive/> before binding."""

from __future__ import annotations

import asyncio
from functools import partial

from xmpp_helpers import RawClient, befriend, drain, one_and_two_workers, tls_login

rookery_server = one_and_two_workers("rookery-csi-")


NS = "urn:xmpp:csi:0"
C = "{jabber:client}"
CHATSTATES = "http://jabber.org/protocol/chatstates"


login = partial(tls_login, presence=True)  # available after login


async def ping_server(c: RawClient, id: str) -> list:
    """Everything up to and including the answer to a ping (which is urgent: it flushes)."""
    c.send(f"<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")
    return await c.collect_until(lambda got: bool(got) and got[-1].get("id") == id)


async def test_csi_stream_feature_after_authentication(rookery_server):
    jid, pw = rookery_server.make_user()
    c = RawClient()
    try:
        feats = await c.authenticate(rookery_server.direct_tls_port, jid, pw, tls=True)
        assert feats.find(f"{{{NS}}}csi") is not None
    finally:
        await c.close()
    c = RawClient()
    try:
        await c.connect(rookery_server.direct_tls_port, tls=True)
        feats = await c.open_stream()
        assert feats.find(f"{{{NS}}}csi") is None  # not before authentication
    finally:
        await c.close()


async def test_presence_is_coalesced_while_inactive_and_a_chat_message_flushes_in_order(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    befriend(rookery_server, alice, bob)
    phone = await login(rookery_server, alice, apw, "phone")
    desk = await login(rookery_server, alice, apw, "desk")
    b = await login(rookery_server, bob, bpw, "pc")
    try:
        await drain(phone)
        phone.send(f"<inactive xmlns='{NS}'/>")
        # the ping answer shows the element was processed (and nothing was held yet)
        assert [e.get("id") for e in await ping_server(phone, "p0")] == ["p0"]
        for show in ("away", "xa", "dnd"):
            desk.send(f"<presence><show>{show}</show></presence>")
            b.send(f"<presence><show>{show}</show><status>{show}</status></presence>")
        b.send(f"<message to='{phone.jid}' type='chat' id='cs1'><composing xmlns='{CHATSTATES}'/></message>")
        b.send(f"<message to='{phone.jid}' type='chat' id='cs2'><paused xmlns='{CHATSTATES}'/></message>")
        await asyncio.sleep(0.5)
        assert await drain(phone, 0.2) == []  # all held back
        b.send(f"<message to='{phone.jid}' type='chat' id='m1'><body>wake up</body></message>")
        got = await phone.collect_until(lambda g: bool(g) and g[-1].get("id") == "m1")
        pres = [(e.get("from"), e.findtext(f"{C}show")) for e in got if e.tag == f"{C}presence"]
        # the latest presence of each sender, once
        assert sorted(pres) == sorted([(desk.jid, "dnd"), (b.jid, "dnd")])
        msgs = [e.get("id") for e in got if e.tag == f"{C}message"]
        assert msgs == ["cs2", "m1"]  # the latest chat state, before the message
        assert got[-1].get("id") == "m1"
        assert await drain(phone, 0.2) == []
    finally:
        for c in (phone, desk, b):
            await c.close()


async def test_active_flushes_and_stops_holding(rookery_server):
    alice, apw = rookery_server.make_user()
    phone = await login(rookery_server, alice, apw, "phone")
    desk = await login(rookery_server, alice, apw, "desk")
    try:
        await drain(phone)
        phone.send(f"<inactive xmlns='{NS}'/>")
        await ping_server(phone, "p0")
        desk.send("<presence><show>away</show></presence>")
        desk.send("<presence><show>chat</show></presence>")
        await asyncio.sleep(0.3)
        assert await drain(phone, 0.1) == []
        # §6.1: <active/> flushes before the ping that follows it is answered
        phone.send(f"<active xmlns='{NS}'/>")
        got = await ping_server(phone, "p1")
        assert [(e.tag, e.findtext(f"{C}show") or e.get("id")) for e in got] == [
            (f"{C}presence", "chat"), (f"{C}iq", "p1")]
        desk.send("<presence><show>xa</show></presence>")
        el = await phone.recv_until(lambda e: e.tag == f"{C}presence")
        assert el.findtext(f"{C}show") == "xa"
    finally:
        for c in (phone, desk):
            await c.close()


async def test_iq_and_subscription_requests_are_urgent(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    phone = await login(rookery_server, alice, apw, "phone")
    desk = await login(rookery_server, alice, apw, "desk")
    b = await login(rookery_server, bob, bpw, "pc", presence=False)
    try:
        await drain(phone)
        phone.send(f"<inactive xmlns='{NS}'/>")
        await ping_server(phone, "p0")
        desk.send("<presence><show>away</show></presence>")
        await asyncio.sleep(0.2)
        b.send(f"<iq to='{phone.jid}' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
        got = await phone.collect_until(lambda g: bool(g) and g[-1].tag == f"{C}iq")
        assert [e.tag for e in got] == [f"{C}presence", f"{C}iq"]
        desk.send("<presence><show>dnd</show></presence>")
        await asyncio.sleep(0.2)
        b.send(f"<presence to='{alice}' type='subscribe'/>")
        got = await phone.collect_until(lambda g: bool(g) and g[-1].get("type") == "subscribe")
        assert got[0].findtext(f"{C}show") == "dnd"
    finally:
        for c in (phone, desk, b):
            await c.close()


async def test_queue_is_bounded(rookery_server_factory):
    server = rookery_server_factory(modules={"csi": {"max_queue": 3}})
    alice, apw = server.make_user()
    bob, bpw = server.make_user()
    phone = await login(server, alice, apw, "phone")
    bobs = [await login(server, bob, bpw, f"r{i}", presence=False) for i in range(4)]
    try:
        await drain(phone)
        phone.send(f"<inactive xmlns='{NS}'/>")
        await ping_server(phone, "p0")
        for i, b in enumerate(bobs[:3]):
            b.send(f"<message to='{phone.jid}' type='chat' id='cs{i}'><active xmlns='{CHATSTATES}'/></message>")
        await asyncio.sleep(0.3)
        assert await drain(phone, 0.1) == []  # three held: at the limit
        bobs[3].send(f"<message to='{phone.jid}' type='chat' id='cs3'><active xmlns='{CHATSTATES}'/></message>")
        got = await phone.collect_until(lambda g: len(g) == 4)
        assert [e.get("id") for e in got] == ["cs0", "cs1", "cs2", "cs3"]
    finally:
        for c in (phone, *bobs):
            await c.close()


async def test_csi_before_binding_is_a_stream_error(rookery_server):
    jid, pw = rookery_server.make_user()
    c = RawClient()
    try:
        await c.authenticate(rookery_server.direct_tls_port, jid, pw, tls=True)
        c.send(f"<inactive xmlns='{NS}'/>")
        assert await c.stream_error() == "not-authorized"
    finally:
        await c.close()


async def test_filter_is_installed_only_while_a_client_is_inactive(rookery_server_factory):
    server = rookery_server_factory()
    filters = server.server.events.filters
    assert filters == []
    alice, apw = server.make_user()
    phone = await login(server, alice, apw, "phone")
    try:
        phone.send(f"<inactive xmlns='{NS}'/>")
        await ping_server(phone, "p0")
        assert len(filters) == 1
        phone.send(f"<active xmlns='{NS}'/>")
        await ping_server(phone, "p1")
        assert filters == []
        phone.send(f"<inactive xmlns='{NS}'/>")
        await ping_server(phone, "p2")
        assert len(filters) == 1
    finally:
        await phone.close()
    for _ in range(100):
        if not filters:
            break
        await asyncio.sleep(0.02)
    assert filters == []  # the session ended
