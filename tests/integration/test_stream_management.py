"""XEP-0198 Stream Management against a real server on loopback: raw XML clients over real sockets
(and slixmpp's xep_0198 plugin).  The connection-cut tests abort the client's TCP connection (no
closing handshake) in the middle of a burst of 200 numbered messages and check that every message
arrives exactly once: after resumption, or (not resumed in time) at another resource or from
offline storage."""

from __future__ import annotations

import asyncio
import time
from xml.etree.ElementTree import Element

import slixmpp
from xmpp_helpers import STREAM_NS, RawClient, disconnect, eventually, insecure_context
from xmpp_helpers import tls_login as login

from rookery.jid import JID
from rookery.testing import RunningServer

SM = "urn:xmpp:sm:3"
C = "{jabber:client}"
STANZA_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
DELAY = "{urn:xmpp:delay}delay"
T = 3.0  # every wait for the server is bounded by this many seconds
N = 200  # messages in a burst


# -- helpers --------------------------------------------------------------------------------------
async def enable(c: RawClient, resume: bool = True) -> Element:
    c.send(f"<enable xmlns='{SM}'{' resume=' + chr(39) + 'true' + chr(39) if resume else ''}/>")
    r = await c.recv_until(lambda e: e.tag in (f"{{{SM}}}enabled", f"{{{SM}}}failed"), T)
    assert r.tag == f"{{{SM}}}enabled", r.tag
    return r


def failed_condition(el: Element) -> str | None:
    assert el.tag == f"{{{SM}}}failed", el.tag
    for child in el:
        if child.tag.startswith(f"{{{STANZA_ERR}}}"):
            return child.tag.split("}")[1]
    return None


def is_msg(el: Element) -> bool:
    return el.tag == C + "message"


def number(el: Element) -> int:
    return int(el.findtext(C + "body") or "-1")


def session_of(s: RunningServer, full: str):
    return s.call_sync(lambda: s.server.sessions.get(JID.parse(full)))


async def close_all(*clients: RawClient) -> None:
    for c in clients:
        await c.close()


async def burst(sender: RawClient, to: str, n: int = N) -> None:
    """``n`` numbered chat messages, in chunks, so that a cut falls in the middle of it."""
    for i in range(1, n + 1):
        sender.send(f"<message to='{to}' type='chat' id='m{i}'><body>{i}</body></message>")
        if i % 10 == 0:
            await sender.writer.drain()
            await asyncio.sleep(0.005)
    await sender.writer.drain()


async def handle_until_cut(c: RawClient, cut_after: int, ack_at: int | None = None) -> list[int]:
    """Handle ``cut_after`` messages (like a client: each one processed as it is read), acking
    ``ack_at`` of them on the way; return their numbers.  Whatever is read after that is never
    handled: the connection is about to be cut."""
    handled: list[int] = []
    while len(handled) < cut_after:
        el = await c.recv(T)
        if is_msg(el):
            handled.append(number(el))
            if ack_at is not None and len(handled) == ack_at:
                c.send(f"<a xmlns='{SM}' h='{ack_at}'/>")
    return handled


async def collect_numbers(c: RawClient, want: set[int], timeout: float = T) -> list[int]:
    """Messages read until every number of ``want`` was seen (a list: duplicates show)."""
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while not want <= set(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"missing {sorted(want - set(got))[:10]}...")
        el = await c.recv(left)
        if is_msg(el):
            got.append(number(el))
    return got


async def drain(c: RawClient, quiet: float = 0.4) -> list[Element]:
    out = []
    try:
        while True:
            out.append(await c.recv(quiet))
    except (TimeoutError, ConnectionError):
        return out


# -- enabling, acks -------------------------------------------------------------------------------
async def test_sm_feature_after_auth_and_enable_with_resume(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    a = await login(s, jid, pw)
    b = await login(s, jid, pw, resource="other")
    try:
        assert a.features is not None and a.features.find(f"{{{SM}}}sm") is not None
        e1 = await enable(a)
        e2 = await enable(b)
        assert e1.get("resume") == "true" and e1.get("max") == "300"
        assert len(e1.get("id", "")) >= 24 and e1.get("id") != e2.get("id")
        assert session_of(s, a.jid).ext["smacks"].id == e1.get("id")
    finally:
        await close_all(a, b)


async def test_enable_without_resume_acks_both_ways(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    a = await login(s, jid, pw)
    try:
        e = await enable(a, resume=False)
        assert e.get("id") is None and e.get("resume") is None
        a.send(f"<r xmlns='{SM}'/>")
        r = await a.recv(T)
        assert (r.tag, r.get("h")) == (f"{{{SM}}}a", "0")
        for i in range(6):
            a.send(f"<iq type='get' id='p{i}'><ping xmlns='urn:xmpp:ping'/></iq>")
        got = await a.collect_until(
            lambda g: sum(e.tag == C + "iq" for e in g) == 6 and any(e.tag == f"{{{SM}}}r" for e in g), T)
        assert [e.get("id") for e in got if e.tag == C + "iq"] == [f"p{i}" for i in range(6)]
        # the server asked for an ack (after request_ack_after = 5 stanzas) ...
        a.send(f"<r xmlns='{SM}'/>")
        r = await a.recv_until(lambda e: e.tag == f"{{{SM}}}a", T)
        assert r.get("h") == "6"  # ... and counts what it received: six iqs, no nonzas
        st = session_of(s, a.jid).ext["smacks"]
        assert s.call_sync(lambda: (st.out, len(st.unacked))) == (6, 6)
        a.send(f"<a xmlns='{SM}' h='4'/>")
        await eventually(lambda: s.call_sync(lambda: (st.acked, len(st.unacked))) == (4, 2))
        a.send(f"<a xmlns='{SM}' h='6'/>")
        await eventually(lambda: s.call_sync(lambda: len(st.unacked)) == 0)
        # an enable without resume: a lost connection ends the session at once
        a.writer.transport.abort()
        await eventually(lambda: session_of(s, a.jid) is None)
    finally:
        await close_all(a)


# -- bad input ------------------------------------------------------------------------------------
async def test_enable_before_bind_and_twice_is_unexpected_request(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    c = RawClient()
    try:
        await c.authenticate(s.direct_tls_port, jid, pw, tls=True)
        c.send(f"<enable xmlns='{SM}' resume='true'/>")
        assert failed_condition(await c.recv(T)) == "unexpected-request"
        c.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        r = await c.recv(T)
        assert r.get("type") == "result"
        await enable(c)
        c.send(f"<enable xmlns='{SM}' resume='true'/>")
        assert failed_condition(await c.recv(T)) == "unexpected-request"
        # still usable
        c.send(f"<r xmlns='{SM}'/>")
        assert (await c.recv(T)).tag == f"{{{SM}}}a"
    finally:
        await close_all(c)


async def test_ack_and_request_before_enable_are_stream_errors(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    a = await login(s, jid, pw)
    try:
        a.send(f"<r xmlns='{SM}'/>")
        assert await a.stream_error(T) == "unsupported-stanza-type"
    finally:
        await close_all(a)


async def test_ack_with_non_numeric_h_is_invalid_xml(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    for bad in ("x", "-1", "4294967296", ""):
        a = await login(s, jid, pw)
        try:
            await enable(a)
            a.send(f"<a xmlns='{SM}' h='{bad}'/>")
            assert await a.stream_error(T) == "invalid-xml"
        finally:
            await close_all(a)
    # the session is not kept for resumption after a stream error
    await eventually(lambda: s.call_sync(lambda: len(s.server.sessions.resources(jid))) == 0)


async def test_ack_of_more_than_was_sent_is_handled_count_too_high(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    a = await login(s, jid, pw)
    try:
        await enable(a)
        a.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        await a.recv_until(lambda e: e.get("id") == "p1", T)
        a.send(f"<a xmlns='{SM}' h='3'/>")
        err = await a.recv_until(lambda e: e.tag == f"{{{STREAM_NS}}}error", T)
        assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}undefined-condition") is not None
        hc = err.find(f"{{{SM}}}handled-count-too-high")
        assert hc is not None and (hc.get("h"), hc.get("send-count")) == ("3", "1")
    finally:
        await close_all(a)


async def test_resume_with_unknown_id_bad_h_or_after_bind_fails(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    c = RawClient()
    try:
        await c.authenticate(s.direct_tls_port, jid, pw, tls=True)
        c.send(f"<resume xmlns='{SM}' previd='no-such-id' h='0'/>")
        assert failed_condition(await c.recv(T)) == "item-not-found"
        c.send(f"<resume xmlns='{SM}' previd='no-such-id' h='zero'/>")
        assert failed_condition(await c.recv(T)) == "bad-request"
        # §5: after a failed resumption the client may still bind
        c.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        assert (await c.recv(T)).get("type") == "result"
        c.send(f"<resume xmlns='{SM}' previd='no-such-id' h='0'/>")
        assert failed_condition(await c.recv(T)) == "unexpected-request"
    finally:
        await close_all(c)


async def test_resume_of_another_users_session_is_refused(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    mallory, mpw = s.make_user()
    a = await login(s, jid, pw)
    m = RawClient()
    try:
        smid = (await enable(a)).get("id")
        ref = session_of(s, a.jid)
        a.writer.transport.abort()
        await eventually(lambda: s.call_sync(lambda: not ref.attached))
        await m.authenticate(s.direct_tls_port, mallory, mpw, tls=True)
        m.send(f"<resume xmlns='{SM}' previd='{smid}' h='0'/>")
        assert failed_condition(await m.recv(T)) == "item-not-found"
        assert session_of(s, a.jid) is ref and not s.call_sync(lambda: ref.attached)  # still waiting for its owner
        a2 = RawClient()
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<resume xmlns='{SM}' previd='{smid}' h='0'/>")
        r = await a2.recv(T)
        assert (r.tag, r.get("previd"), r.get("h")) == (f"{{{SM}}}resumed", smid, "0")
        await close_all(a2)
    finally:
        await close_all(a, m)


# -- resumption -----------------------------------------------------------------------------------
async def test_resume_while_old_connection_is_open_closes_it_with_conflict(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    other, opw = s.make_user()
    a = await login(s, jid, pw)
    b = await login(s, other, opw)
    a2 = RawClient()
    try:
        smid = (await enable(a)).get("id")
        first = id(session_of(s, a.jid))
        b.send(f"<message to='{a.jid}' type='chat' id='x1'><body>1</body></message>")
        assert number(await a.recv_until(is_msg, T)) == 1  # read, never acknowledged
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<resume xmlns='{SM}' previd='{smid}' h='0'/>")
        assert await a.stream_error(T) == "conflict"
        got = await a2.collect_until(lambda g: any(is_msg(e) for e in g), T)
        assert got[0].tag == f"{{{SM}}}resumed" and got[0].get("h") == "0"
        assert [number(e) for e in got if is_msg(e)] == [1]  # unacknowledged: sent again
        assert id(session_of(s, a.jid)) == first
        # the resumed session is live and counts on from where it was
        a2.send(f"<message to='{b.jid}' type='chat' id='y1'><body>back</body></message>")
        m = await b.recv_until(is_msg, T)
        assert m.get("from") == a.jid
        a2.send(f"<r xmlns='{SM}'/>")
        r = await a2.recv_until(lambda e: e.tag == f"{{{SM}}}a", T)
        assert r.get("h") == "1"
    finally:
        await close_all(a, a2, b)


async def test_cut_in_a_burst_then_resumed_delivers_every_message_exactly_once(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    other, opw = s.make_user()
    a = await login(s, jid, pw, resource="phone")
    b = await login(s, other, opw)
    a2 = RawClient()
    try:
        smid = (await enable(a)).get("id")
        sender = asyncio.create_task(burst(b, a.jid))
        handled = await handle_until_cut(a, 50, ack_at=20)
        a.writer.transport.abort()  # mid-burst: some written to the dead socket, some still to come
        await asyncio.wait_for(sender, T)
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<resume xmlns='{SM}' previd='{smid}' h='{len(handled)}'/>")
        r = await a2.recv(T)
        assert r.tag == f"{{{SM}}}resumed", r.tag
        rest = await collect_numbers(a2, set(range(1, N + 1)) - set(handled))
        rest += [number(e) for e in await drain(a2) if is_msg(e)]
        assert sorted(handled + rest) == list(range(1, N + 1))  # all of them, none twice
        assert handled + rest == list(range(1, N + 1))  # and in order
    finally:
        await close_all(a, a2, b)


async def test_cut_in_a_burst_not_resumed_goes_to_offline_storage_exactly_once(rookery_server_factory):
    s = rookery_server_factory(c2s={"resume_timeout": 1})
    jid, pw = s.make_user()
    other, opw = s.make_user()
    a = await login(s, jid, pw, resource="phone")
    b = await login(s, other, opw)
    a2 = None
    try:
        e = await enable(a)
        assert e.get("max") == "1"
        sender = asyncio.create_task(burst(b, a.jid))
        handled = await handle_until_cut(a, 50, ack_at=50)
        # the last ack reached the server once it answers a request sent after it
        a.send(f"<r xmlns='{SM}'/>")
        await a.recv_until(lambda el: el.tag == f"{{{SM}}}a", T)
        a.writer.transport.abort()
        await asyncio.wait_for(sender, T)
        await eventually(lambda: session_of(s, a.jid) is None)  # not resumed within 1 s
        a2 = await login(s, jid, pw, resource="laptop")
        a2.send("<presence/>")
        rest_els = []
        want = set(range(1, N + 1)) - set(handled)
        deadline = time.monotonic() + T
        while not want <= {number(el) for el in rest_els}:
            el = await a2.recv(max(0.01, deadline - time.monotonic()))
            if is_msg(el):
                rest_els.append(el)
        rest_els += [el for el in await drain(a2) if is_msg(el)]
        rest = [number(el) for el in rest_els]
        assert sorted(handled + rest) == list(range(1, N + 1))  # all of them, none twice
        assert all(el.find(DELAY) is not None for el in rest_els)  # XEP-0203 stamps
        assert all(el.get("from") == b.jid for el in rest_els)
    finally:
        await close_all(a, b, *([a2] if a2 else []))


async def test_cut_in_a_burst_not_resumed_goes_to_another_resource_exactly_once(rookery_server_factory):
    s = rookery_server_factory(c2s={"resume_timeout": 1})
    jid, pw = s.make_user()
    other, opw = s.make_user()
    a = await login(s, jid, pw, resource="phone")
    desk = await login(s, jid, pw, resource="desk")
    b = await login(s, other, opw)
    try:
        desk.send("<presence/>")
        await drain(desk, 0.2)
        await enable(a)
        sender = asyncio.create_task(burst(b, a.jid))
        handled = await handle_until_cut(a, 50, ack_at=50)
        a.send(f"<r xmlns='{SM}'/>")
        await a.recv_until(lambda el: el.tag == f"{{{SM}}}a", T)
        a.writer.transport.abort()
        await asyncio.wait_for(sender, T)
        want = set(range(1, N + 1)) - set(handled)
        rest = await collect_numbers(desk, want, T + 2)
        rest += [number(el) for el in await drain(desk) if is_msg(el)]
        assert sorted(handled + rest) == list(range(1, N + 1))
        assert session_of(s, a.jid) is None
    finally:
        await close_all(a, desk, b)


async def test_closing_the_stream_ends_the_session_and_reroutes_unacked(rookery_server):
    """A closing handshake is not an outage: no resumption, the unacknowledged go offline."""
    s = rookery_server
    jid, pw = s.make_user()
    other, opw = s.make_user()
    a = await login(s, jid, pw, resource="phone")
    b = await login(s, other, opw)
    a2 = None
    try:
        smid = (await enable(a)).get("id")
        for i in (1, 2, 3):
            b.send(f"<message to='{a.jid}' type='chat' id='c{i}'><body>{i}</body></message>")
        await a.collect_until(lambda g: sum(map(is_msg, g)) == 3, T)
        a.send("</stream:stream>")
        await eventually(lambda: session_of(s, a.jid) is None)
        a2 = RawClient()
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<resume xmlns='{SM}' previd='{smid}' h='0'/>")
        assert failed_condition(await a2.recv(T)) == "item-not-found"
        await a2.close()
        a2 = await login(s, jid, pw, resource="laptop")
        a2.send("<presence/>")
        got = await collect_numbers(a2, {1, 2, 3})
        assert sorted(got) == [1, 2, 3]
    finally:
        await close_all(a, b, *([a2] if a2 else []))


# -- a real independent client --------------------------------------------------------------------
async def test_slixmpp_xep_0198_enables_acks_and_resumes(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    other, opw = s.make_user()
    c = slixmpp.ClientXMPP(jid + "/slix", pw)
    c.ssl_context = insecure_context()
    c.enable_plaintext = False
    c.enable_direct_tls = True
    c.enable_starttls = False
    c.register_plugin("xep_0198")
    enabled: asyncio.Future = asyncio.get_running_loop().create_future()
    resumed: asyncio.Future = asyncio.get_running_loop().create_future()
    c.add_event_handler("sm_enabled", lambda _e: enabled.done() or enabled.set_result(True))
    c.add_event_handler("session_resumed", lambda _e: resumed.done() or resumed.set_result(True))
    got: list[int] = []
    c.add_event_handler("message", lambda m: got.append(int(m["body"])))
    c.connect("127.0.0.1", s.direct_tls_port)
    b = await login(s, other, opw)
    try:
        await asyncio.wait_for(enabled, T)
        full = c.boundjid.full
        ref = session_of(s, full)
        st = ref.ext["smacks"]
        assert st.id is not None and c.plugin["xep_0198"].sm_id == st.id
        for i in range(1, 13):
            b.send(f"<message to='{full}' type='chat' id='s{i}'><body>{i}</body></message>")
        await eventually(lambda: len(got) == 12)
        # slixmpp answered the server's <r/>: what it acknowledged is no longer kept
        await eventually(lambda: s.call_sync(lambda: len(st.unacked)) < 12)
        # cut the connection; slixmpp reconnects and resumes, nothing is lost or repeated
        c.transport.abort()
        await eventually(lambda: s.call_sync(lambda: not ref.attached))
        for i in range(13, 21):
            b.send(f"<message to='{full}' type='chat' id='s{i}'><body>{i}</body></message>")
        c.connect("127.0.0.1", s.direct_tls_port)
        await asyncio.wait_for(resumed, T)
        await eventually(lambda: len(got) >= 20)
        await asyncio.sleep(0.2)
        assert sorted(got) == list(range(1, 21))
        assert session_of(s, full) is ref
    finally:
        await disconnect(c)
        await close_all(b)


async def test_too_many_unacknowledged_stanzas_end_the_session_and_nothing_is_lost(rookery_server_factory):
    s = rookery_server_factory(modules={"smacks": {"max_unacked_stanzas": 10}})
    jid, pw = s.make_user()
    other, opw = s.make_user()
    a = await login(s, jid, pw, resource="phone")
    b = await login(s, other, opw)
    a2 = None
    try:
        await enable(a)
        for i in range(1, 16):
            b.send(f"<message to='{a.jid}' type='chat' id='o{i}'><body>{i}</body></message>")
        assert await a.stream_error(T) == "policy-violation"  # never acknowledged: over the limit
        await eventually(lambda: session_of(s, a.jid) is None)
        a2 = await login(s, jid, pw, resource="laptop")
        a2.send("<presence/>")
        got = await collect_numbers(a2, set(range(1, 16)))
        got += [number(el) for el in await drain(a2) if is_msg(el)]
        assert sorted(got) == list(range(1, 16))  # the unacknowledged ones, each once, from storage
    finally:
        await close_all(a, b, *([a2] if a2 else []))


async def test_counting_filter_is_installed_only_while_a_session_has_sm(rookery_server_factory):
    """Clients without stream management pay nothing on the message path."""
    s = rookery_server_factory()
    jid, pw = s.make_user()
    filters = s.server.events.filters
    a = await login(s, jid, pw)
    try:
        assert s.call_sync(lambda: len(filters)) == 0
        await enable(a)
        assert s.call_sync(lambda: len(filters)) == 1
        a.send("</stream:stream>")  # a closing handshake ends the session
        await eventually(lambda: s.call_sync(lambda: len(filters)) == 0)
    finally:
        await close_all(a)


async def test_unacked_message_to_bare_jid_is_not_duplicated_at_a_resource_that_had_it(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    other, opw = s.make_user()
    phone = await login(s, jid, pw, resource="phone")
    desk = await login(s, jid, pw, resource="desk")
    b = await login(s, other, opw)
    try:
        await enable(phone)
        for c in (phone, desk):
            c.send("<presence/>")
        await drain(desk, 0.3)
        await drain(phone, 0.3)
        for i in (1, 2, 3):
            b.send(f"<message to='{jid}' type='chat' id='d{i}'><body>{i}</body></message>")
        assert sorted(await collect_numbers(desk, {1, 2, 3})) == [1, 2, 3]
        assert sorted(await collect_numbers(phone, {1, 2, 3})) == [1, 2, 3]  # never acknowledged
        phone.send("</stream:stream>")
        await eventually(lambda: session_of(s, phone.jid) is None)
        assert [e for e in await drain(desk, 0.4) if is_msg(e)] == []  # desk had them already
    finally:
        await close_all(phone, desk, b)


# -- offline messages and acknowledgements (issue F5 with XEP-0198) ----------------------------
async def store_offline(sender: RawClient, to: str, n: int) -> None:
    sender.send("".join(f"<message to='{to}' type='chat' id='o{i}'><body>{i}</body></message>"
                        for i in range(1, n + 1)))
    r = await sender.iq("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>", timeout=T)
    assert r.get("type") == "result"  # processed in order: all stored


def stored_count(s: RunningServer, jid: str) -> int:
    j = JID.parse(jid)
    return len(s.call(s.server.storage.offline.peek, j.domain, j.local, 10_000))


async def test_offline_messages_are_removed_once_acknowledged(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    other, opw = s.make_user()
    b = await login(s, other, opw)
    await store_offline(b, jid, 30)
    a = await login(s, jid, pw, resource="phone")
    try:
        await enable(a, resume=False)
        a.send("<presence/>")
        got = await collect_numbers(a, set(range(1, 31)))
        assert sorted(got) == list(range(1, 31))
        await asyncio.sleep(0.3)
        assert stored_count(s, jid) == 30  # handed over, not acknowledged: still stored
        # the server asks (<r/>); the client acknowledges everything it received
        rest = await drain(a)
        assert [el.tag for el in rest if el.tag != f"{{{SM}}}r"] == [], [el.tag for el in rest]
        sent = session_of(s, a.jid).ext["smacks"].out
        a.send(f"<a xmlns='{SM}' h='{sent}'/>")
        await eventually(lambda: stored_count(s, jid) == 0)
    finally:
        await close_all(a, b)


async def test_offline_messages_not_acknowledged_stay_stored_once_when_the_session_ends(rookery_server):
    """Closed without acknowledging: the messages stay in offline storage, and stream management does
    not store them a second time (one copy each on the next login)."""
    s = rookery_server
    jid, pw = s.make_user()
    other, opw = s.make_user()
    b = await login(s, other, opw)
    await store_offline(b, jid, 12)
    a = await login(s, jid, pw, resource="phone")
    a2 = None
    try:
        await enable(a, resume=False)
        a.send("<presence/>")
        await collect_numbers(a, set(range(1, 13)))
        a.send("</stream:stream>")
        await eventually(lambda: session_of(s, a.jid) is None)
        a2 = await login(s, jid, pw, resource="laptop")
        a2.send("<presence/>")
        got = await collect_numbers(a2, set(range(1, 13)))
        got += [number(el) for el in await drain(a2) if is_msg(el)]
        assert sorted(got) == list(range(1, 13))  # each exactly once
        await eventually(lambda: stored_count(s, jid) == 0)  # no SM here: removed once handed over
    finally:
        await close_all(a, b, *([a2] if a2 else []))
