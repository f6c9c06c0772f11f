"""XEP-0114 external components over real sockets: raw XML for the protocol and its bad input, slixmpp's
``ComponentXMPP`` as an independent implementation, and XEP-0100 subscriptions to a transport."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
import slixmpp
from xmpp_helpers import STREAM_NS, RawClient, drain, error_condition, eventually, slix_client, tls_login

from rookery.streams.component import handshake_digest
from rookery.testing import RunningServer

ACCEPT = "jabber:component:accept"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
ROSTER = "jabber:iq:roster"
SECRETS = {"irc.localhost": "s3cret", "gw.localhost": "other", "bots.example.net": "bots", "c1.localhost": "one",
           "c2.localhost": "two", "c3.localhost": "three", "c4.localhost": "four", "c5.localhost": "five",
           "slix.localhost": "slix", "sub.localhost": "sub"}
C_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>")


@pytest.fixture(scope="module")
def server():
    d = tempfile.mkdtemp(prefix="rookery-test-")
    s = RunningServer({"components": {"secrets": SECRETS}}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def _tag(el, name: str, ns: str = ACCEPT) -> bool:
    return el.tag == "{%s}%s" % (ns, name)


async def component(server, domain: str, secret: str | None = None) -> RawClient:
    """A raw component connection past the handshake (once an earlier one for the domain is gone)."""
    await gone(server, domain)
    c = await RawClient().connect(server.component_port)
    c.send(C_HEADER.format(to=domain))
    await _header(c)
    c.send(f"<handshake>{handshake_digest(c.header.get('id'), secret or SECRETS[domain])}</handshake>")
    el = await c.recv()
    assert _tag(el, "handshake") and len(el) == 0 and not (el.text or "").strip(), el.tag
    return c


async def gone(server, domain: str) -> None:  # noqa: ANN001
    """Until the server has seen the component of ``domain`` go."""
    await eventually(lambda: domain not in server.server.components.connected, timeout=10)


async def _header(c: RawClient) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while c.header is None:
        await c._fill(max(0.01, end - loop.time()))


async def _stanza(c: RawClient, pred=lambda e: True, timeout: float = 5.0):  # noqa: ANN001
    return await c.recv_until(lambda e: e.tag.split("}")[-1] in ("message", "presence", "iq") and pred(e), timeout)


# -- the handshake and the header ---------------------------------------------------------------
def test_handshake_digest_is_the_xep_example():
    # XEP-0114 §3: stream id 3BF96D32, secret "test"
    assert handshake_digest("3BF96D32", "test") == "aaee83c26aeeafcbabeabfcbcd50df997e0a2a1e"


async def test_handshake_with_the_secret_is_answered_with_an_empty_handshake(server):
    c = await RawClient().connect(server.component_port)
    c.send(C_HEADER.format(to="c1.localhost"))
    await _header(c)
    assert c.header.get("from") == "c1.localhost" and c.header.get("id")
    assert c.header.tag == "{%s}stream" % STREAM_NS
    # no stream features (XEP-0114 predates them): the handshake is answered directly
    digest = hashlib.sha1((c.header.get("id") + "one").encode()).hexdigest().upper()  # case does not matter
    c.send(f"<handshake>{digest}</handshake>")
    el = await c.recv()
    assert _tag(el, "handshake"), el.tag
    await c.close()


async def test_wrong_secret_is_not_authorized(server):
    c = await RawClient().connect(server.component_port)
    c.send(C_HEADER.format(to="c2.localhost"))
    await _header(c)
    c.send(f"<handshake>{handshake_digest(c.header.get('id'), 'wrong')}</handshake>")
    assert await c.stream_error() == "not-authorized"
    # the domain stays free: the right secret works afterwards
    c2 = await component(server, "c2.localhost")
    await c2.close()


async def test_unknown_domain_is_host_unknown(server):
    c = await RawClient().connect(server.component_port)
    c.send(C_HEADER.format(to="nope.localhost"))
    assert await c.stream_error() == "host-unknown"
    await c.close()
    c = await RawClient().connect(server.component_port)  # a served account domain is not a component
    c.send(C_HEADER.format(to="localhost"))
    assert await c.stream_error() == "host-unknown"
    await c.close()


async def test_header_without_to_is_improper_addressing(server):
    c = await RawClient().connect(server.component_port)
    c.send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>")
    assert await c.stream_error() == "improper-addressing"
    await c.close()


async def test_client_namespace_on_the_component_port_is_invalid_namespace(server):
    c = await RawClient().connect(server.component_port)
    c.send(C_HEADER.format(to="c3.localhost").replace("jabber:component:accept", "jabber:client"))
    assert await c.stream_error() == "invalid-namespace"
    await c.close()


async def test_second_connection_for_the_same_domain_is_conflict(server):
    first = await component(server, "c4.localhost")
    second = await RawClient().connect(server.component_port)
    second.send(C_HEADER.format(to="c4.localhost"))
    await _header(second)
    second.send(f"<handshake>{handshake_digest(second.header.get('id'), 'four')}</handshake>")
    assert await second.stream_error() == "conflict"
    # the first one still serves the domain
    jid, pw = server.make_user()
    u = await tls_login(server, jid, pw)
    u.send("<message to='x@c4.localhost' id='m1'><body>still there?</body></message>")
    m = await _stanza(first)
    assert m.get("id") == "m1"
    await first.close()
    await u.close()


async def test_stanza_before_the_handshake_is_not_authorized(server):
    c = await RawClient().connect(server.component_port)
    c.send(C_HEADER.format(to="c5.localhost"))
    await _header(c)
    c.send("<message from='c5.localhost' to='someone@localhost'><body>hi</body></message>")
    assert await c.stream_error() == "not-authorized"
    await c.close()


async def test_handshake_with_child_elements_is_not_authorized(server):
    c = await RawClient().connect(server.component_port)
    c.send(C_HEADER.format(to="c5.localhost"))
    await _header(c)
    c.send("<handshake><x/></handshake>")
    assert await c.stream_error() == "not-authorized"
    await c.close()


@pytest.mark.parametrize("frm", ["someone@localhost", "localhost", "a@sub.c5.localhost", "c5.localhost.evil"])
async def test_from_outside_the_component_domain_is_invalid_from(server, frm):
    c = await component(server, "c5.localhost")
    c.send(f"<message from='{frm}' to='someone@localhost'><body>spoof</body></message>")
    assert await c.stream_error() == "invalid-from"
    await c.close()


@pytest.mark.parametrize("attrs", ["to='someone@localhost'", "from='c5.localhost'",
                                   "from='c5.localhost' to='@@bad'", "from='a@@c5.localhost' to='x@localhost'"])
async def test_missing_or_malformed_addresses_are_improper_addressing(server, attrs):
    c = await component(server, "c5.localhost")
    c.send(f"<message {attrs}><body>x</body></message>")
    assert await c.stream_error() == "improper-addressing"
    await c.close()


async def test_garbage_xml_is_not_well_formed_and_the_domain_is_freed(server):
    c = await component(server, "c5.localhost")
    c.send("<message from='c5.localhost' to='a@localhost'><body>x</bod></message>")
    assert await c.stream_error() == "not-well-formed"
    await c.close()
    c = await component(server, "c5.localhost")  # reconnecting works: the route was released
    await c.close()


async def test_unknown_element_after_the_handshake_is_unsupported_stanza_type(server):
    c = await component(server, "c5.localhost")
    c.send("<foo xmlns='urn:example'/>")
    assert await c.stream_error() == "unsupported-stanza-type"
    await c.close()


# -- routing ------------------------------------------------------------------------------------
async def test_messages_and_iqs_route_both_ways(server):
    comp = await component(server, "gw.localhost")
    jid, pw = server.make_user()
    u = await tls_login(server, jid, pw, presence=True)
    # user -> any JID at the component's domain, and to the domain itself
    u.send("<message to='alice@gw.localhost/res' id='u1' type='chat'><body>hello alice</body></message>")
    m = await _stanza(comp)
    assert m.get("from") == u.jid and m.get("to") == "alice@gw.localhost/res"
    assert m.find("{%s}body" % ACCEPT).text == "hello alice"
    u.send("<iq to='gw.localhost' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
    iq = await _stanza(comp)
    assert iq.get("id") == "v1" and iq.get("from") == u.jid
    # component -> user: from any JID at its domain, reply and new messages
    comp.send(f"<iq from='gw.localhost' to='{u.jid}' type='result' id='v1'>"
              "<query xmlns='jabber:iq:version'><name>gw</name></query></iq>")
    r = await u.recv_until(lambda e: e.get("id") == "v1")
    assert r.get("type") == "result" and r.get("from") == "gw.localhost"
    comp.send(f"<message from='alice@gw.localhost/res' to='{jid}' type='chat' id='c1'><body>hi back</body></message>")
    m = await u.recv_until(lambda e: e.get("id") == "c1")
    assert m.find("{jabber:client}body").text == "hi back" and m.get("from") == "alice@gw.localhost/res"
    # stanzas written with xmlns='jabber:client' (some component libraries do) are accepted too
    comp.send(f"<message xmlns='jabber:client' from='bob@gw.localhost' to='{jid}' type='chat' id='c2'>"
              "<body>client ns</body></message>")
    m = await u.recv_until(lambda e: e.get("id") == "c2")
    assert m.find("{jabber:client}body").text == "client ns"
    await comp.close()
    await u.close()


async def test_component_queries_the_server_and_gets_the_reply(server):
    comp = await component(server, "gw.localhost")
    comp.send("<iq from='gw.localhost' to='localhost' type='get' id='d1'>"
              "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    r = await _stanza(comp, lambda e: e.get("id") == "d1")
    assert r.get("type") == "result" and r.get("from") == "localhost" and r.get("to") == "gw.localhost"
    # an error to a missing account comes back to the component, not lost
    comp.send("<message from='x@gw.localhost' to='nobody-here@localhost' type='chat' id='n1'><body>?</body></message>")
    e = await _stanza(comp, lambda e: e.get("id") == "n1")
    assert e.get("type") == "error"
    assert e.find("{%s}error/{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable" % ACCEPT) is not None
    await comp.close()


async def test_disco_items_lists_connected_components(server):
    jid, pw = server.make_user()
    u = await tls_login(server, jid, pw)

    async def items() -> set[str]:
        r = await u.iq(f"<iq to='localhost' type='get' id='i{len(seen)}'><query xmlns='{DISCO_ITEMS}'/></iq>")
        seen.append(r)
        return {i.get("jid") for i in r.iter("{%s}item" % DISCO_ITEMS)}

    seen: list = []
    assert "sub.localhost" not in await items()
    comp = await component(server, "sub.localhost")
    bots = await component(server, "bots.example.net")  # a subdomain of no served domain: listed too
    got = await items()
    assert {"sub.localhost", "bots.example.net"} <= got
    await comp.close()
    await bots.close()
    await gone(server, "sub.localhost")
    assert "sub.localhost" not in await items()
    await u.close()


async def test_stanzas_to_a_disconnected_component_bounce_with_service_unavailable(server):
    comp = await component(server, "gw.localhost")
    await comp.close()
    await gone(server, "gw.localhost")
    jid, pw = server.make_user()
    u = await tls_login(server, jid, pw)
    u.send("<message to='alice@gw.localhost' type='chat' id='b1'><body>anyone?</body></message>")
    e = await u.recv_until(lambda e: e.get("id") == "b1")
    assert e.get("type") == "error" and error_condition(e) == "service-unavailable"
    assert e.find("{jabber:client}error").get("type") == "wait"
    r = await u.iq("<iq to='gw.localhost' type='get' id='b2'><query xmlns='jabber:iq:version'/></iq>")
    assert r.get("type") == "error" and error_condition(r) == "service-unavailable"
    # no error in reply to an error, nor to unavailable presence
    u.send("<message to='alice@gw.localhost' type='error' id='b3'/>")
    u.send("<presence to='alice@gw.localhost' type='unavailable' id='b4'/>")
    assert not [e for e in await drain(u) if e.get("id") in ("b3", "b4")]
    await u.close()


async def test_component_reconnects_after_disconnect_and_gets_stanzas_again(server):
    comp = await component(server, "gw.localhost")
    await comp.close()
    comp = await component(server, "gw.localhost")  # (it waits for the first one to be gone)
    jid, pw = server.make_user()
    u = await tls_login(server, jid, pw)
    u.send("<message to='gw.localhost' id='r1'><body>back?</body></message>")
    assert (await _stanza(comp)).get("id") == "r1"
    await comp.close()
    await u.close()


# -- XEP-0100: subscriptions to the transport and to its contacts --------------------------------
async def test_user_subscribes_to_the_transport_and_to_a_gateway_contact(server):
    comp = await component(server, "irc.localhost")
    jid, pw = server.make_user()
    u = await tls_login(server, jid, pw, presence=True)
    u.send(f"<iq type='get' id='r0'><query xmlns='{ROSTER}'/></iq>")  # an interested resource (roster pushes)
    await u.recv_until(lambda e: e.get("id") == "r0")

    # XEP-0100 §4.1.1 step: the user subscribes to the transport; the transport approves and subscribes back
    u.send("<presence to='irc.localhost' type='subscribe'/>")
    p = await _stanza(comp, lambda e: e.get("type") == "subscribe")
    assert p.get("from") == jid and p.get("to") == "irc.localhost"
    comp.send(f"<presence from='irc.localhost' to='{jid}' type='subscribed'/>")
    comp.send(f"<presence from='irc.localhost' to='{jid}'/>")
    pushed = await u.recv_until(lambda e: e.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item[@subscription='to']") is not None)
    assert pushed.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item").get("jid") == "irc.localhost"
    pres = await u.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == "irc.localhost"
                              and e.get("type") is None)
    assert pres.get("to") in (jid, u.jid)
    comp.send(f"<presence from='irc.localhost' to='{jid}' type='subscribe'/>")
    await u.recv_until(lambda e: e.get("type") == "subscribe" and e.get("from") == "irc.localhost")
    u.send("<presence to='irc.localhost' type='subscribed'/>")
    await _stanza(comp, lambda e: e.get("type") == "subscribed" and e.get("from") == jid)
    # "both": the user's presence now reaches the transport
    await _stanza(comp, lambda e: e.tag == "{%s}presence" % ACCEPT and e.get("type") is None and e.get("from") == u.jid)

    # a gateway contact (legacy user) asks to subscribe; the user approves and subscribes back
    legacy = "bob%example.org@irc.localhost"
    comp.send(f"<presence from='{legacy}' to='{jid}' type='subscribe'/>")
    await u.recv_until(lambda e: e.get("type") == "subscribe" and e.get("from") == legacy)
    u.send(f"<presence to='{legacy}' type='subscribed'/>")
    u.send(f"<presence to='{legacy}' type='subscribe'/>")
    await _stanza(comp, lambda e: e.get("type") == "subscribed" and e.get("to") == legacy)
    await _stanza(comp, lambda e: e.get("type") == "subscribe" and e.get("to") == legacy)
    comp.send(f"<presence from='{legacy}' to='{jid}' type='subscribed'/>")
    comp.send(f"<presence from='{legacy}/irc' to='{jid}'><show>away</show></presence>")
    await u.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == f"{legacy}/irc")
    r = await u.iq(f"<iq type='get' id='r1'><query xmlns='{ROSTER}'/></iq>")
    subs = {i.get("jid"): i.get("subscription") for i in r.iter(f"{{{ROSTER}}}item")}
    assert subs == {"irc.localhost": "both", legacy: "both"}
    # the transport probes the user (RFC 6121 §4.3.2): it has a "from" subscription, so it gets presence
    comp.send(f"<presence from='irc.localhost' to='{jid}' type='probe' id='pr1'/>")
    await _stanza(comp, lambda e: e.tag == "{%s}presence" % ACCEPT and e.get("from") == u.jid
                  and e.get("to") == "irc.localhost" and e.get("type") is None)
    # a JID at the gateway without a subscription learns nothing
    comp.send(f"<presence from='stranger@irc.localhost' to='{jid}' type='probe'/>")
    await _stanza(comp, lambda e: e.get("to") == "stranger@irc.localhost" and e.get("type") == "unsubscribed")
    full = u.jid
    await u.close()
    # the session ends: unavailable presence to the transport and the contact (RFC 6121 §4.5.3)
    gone = await comp.collect_until(lambda got: {"irc.localhost", legacy} <= {
        e.get("to") for e in got if e.get("type") == "unavailable" and e.get("from") == full})
    assert gone

    # at the next login the server probes the transport and its contacts (RFC 6121 §4.3.1)
    u = await tls_login(server, jid, pw, presence=True)
    probes = {e.get("to") for e in await comp.collect_until(
        lambda got: {"irc.localhost", legacy} <= {e.get("to") for e in got if e.get("type") == "probe"})
        if e.get("type") == "probe"}
    assert probes == {"irc.localhost", legacy}
    await u.close()
    await comp.close()


async def test_gateway_registration_and_jabber_iq_gateway_pass_through_unchanged(server):
    """XEP-0100 §4.1.1 registration (XEP-0077 to the gateway) and §6 jabber:iq:gateway: iqs the
    server routes to the component and whose answers it routes back."""
    gw = await component(server, "gw.localhost")
    jid, pw = server.make_user()
    u = await tls_login(server, jid, pw)
    u.send("<iq to='gw.localhost' type='get' id='reg1'><query xmlns='jabber:iq:register'/></iq>")
    q = await _stanza(gw, lambda e: e.get("id") == "reg1")
    assert q.get("from") == u.jid and q.find("{jabber:iq:register}query") is not None
    gw.send(f"<iq from='gw.localhost' to='{u.jid}' type='result' id='reg1'><query xmlns='jabber:iq:register'>"
            "<instructions>Your legacy name and password</instructions><username/><password/></query></iq>")
    r = await u.recv_until(lambda e: e.get("id") == "reg1")
    assert r.get("type") == "result" and r.find("{jabber:iq:register}query/{jabber:iq:register}username") is not None
    u.send("<iq to='gw.localhost' type='set' id='reg2'><query xmlns='jabber:iq:register'>"
           "<username>romeo</username><password>legacy</password></query></iq>")
    q = await _stanza(gw, lambda e: e.get("id") == "reg2")
    assert q.find("{jabber:iq:register}query/{jabber:iq:register}username").text == "romeo"
    gw.send(f"<iq from='gw.localhost' to='{u.jid}' type='result' id='reg2'/>")
    assert (await u.recv_until(lambda e: e.get("id") == "reg2")).get("type") == "result"
    # §6: jabber:iq:gateway turns a legacy address into a JID at the gateway
    u.send("<iq to='gw.localhost' type='set' id='g1'><query xmlns='jabber:iq:gateway'>"
           "<prompt>juliet@legacy.example</prompt></query></iq>")
    q = await _stanza(gw, lambda e: e.get("id") == "g1")
    assert q.find("{jabber:iq:gateway}query/{jabber:iq:gateway}prompt").text == "juliet@legacy.example"
    gw.send(f"<iq from='gw.localhost' to='{u.jid}' type='result' id='g1'><query xmlns='jabber:iq:gateway'>"
            "<jid>juliet%legacy.example@gw.localhost</jid></query></iq>")
    r = await u.recv_until(lambda e: e.get("id") == "g1")
    assert r.find("{jabber:iq:gateway}query/{jabber:iq:gateway}jid").text == "juliet%legacy.example@gw.localhost"
    await gw.close()
    await u.close()


# -- slixmpp's ComponentXMPP --------------------------------------------------------------------
async def test_slixmpp_component_exchanges_messages_with_a_slixmpp_client(server):
    comp = slixmpp.ComponentXMPP("slix.localhost", "slix", "127.0.0.1", server.component_port)
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    got: asyncio.Queue = asyncio.Queue()
    comp.add_event_handler("session_start", lambda _e: started.done() or started.set_result(True))

    def echo(msg) -> None:  # noqa: ANN001
        got.put_nowait(msg)
        msg.reply(f"echo: {msg['body']}").send()

    comp.add_event_handler("message", echo)
    comp.connect("127.0.0.1", server.component_port)
    await asyncio.wait_for(started, 10)

    jid, pw = server.make_user()
    c = await slix_client(server, jid, pw)
    replies: asyncio.Queue = asyncio.Queue()
    c.add_event_handler("message", lambda m: replies.put_nowait(m))
    c.send_message(mto="bot@slix.localhost", mbody="ping", mtype="chat")
    m = await asyncio.wait_for(got.get(), 5)
    assert str(m["from"].bare) == jid and m["body"] == "ping"
    r = await asyncio.wait_for(replies.get(), 5)
    assert str(r["from"]) == "bot@slix.localhost" and r["body"] == "echo: ping"
    # and the component sends on its own initiative, from any JID at its domain
    comp.send_message(mto=jid, mfrom="news@slix.localhost", mbody="headline!", mtype="chat")
    r = await asyncio.wait_for(replies.get(), 5)
    assert str(r["from"]) == "news@slix.localhost" and r["body"] == "headline!"
    assert "slix.localhost" in [x["domain"] for x in server.call_sync(server.server.connected_components)]
    for x in (c, comp):
        try:
            await asyncio.wait_for(x.disconnect(), 5)
        except Exception:
            pass


# -- limits and life cycle ----------------------------------------------------------------------
async def test_oversized_stanza_from_a_component_is_policy_violation(server):
    c = await component(server, "c5.localhost")
    c.send("<message from='c5.localhost' to='a@localhost'><body>" + "x" * 300_000 + "</body></message>")
    assert await c.stream_error() == "policy-violation"
    await c.close()


async def test_component_that_never_completes_the_handshake_is_timed_out(rookery_server_factory):
    s = rookery_server_factory(components={"secrets": {"slow.localhost": "x"}}, c2s={"handshake_timeout": 0.5})
    c = await RawClient().connect(s.component_port)
    c.send(C_HEADER.format(to="slow.localhost"))
    assert await c.stream_error(timeout=5) == "connection-timeout"
    await c.close()


async def test_repeated_failed_handshakes_from_one_address_are_refused_for_a_while(rookery_server_factory):
    s = rookery_server_factory(components={"secrets": {"guess.localhost": "right"}},
                               c2s={"max_auth_failures_per_ip": 2})
    for _ in range(2):
        c = await RawClient().connect(s.component_port)
        c.send(C_HEADER.format(to="guess.localhost"))
        await _header(c)
        c.send(f"<handshake>{handshake_digest(c.header.get('id'), 'wrong')}</handshake>")
        assert await c.stream_error() == "not-authorized"
        await c.close()
    c = await RawClient().connect(s.component_port)  # even the right secret, for now
    c.send(C_HEADER.format(to="guess.localhost"))
    await _header(c)
    c.send(f"<handshake>{handshake_digest(c.header.get('id'), 'right')}</handshake>")
    assert await c.stream_error() == "policy-violation"
    await c.close()


async def test_no_component_port_without_configured_components(rookery_server_factory):
    s = rookery_server_factory()
    assert "component" not in s.server.addresses


async def test_server_shutdown_closes_component_streams_with_system_shutdown():
    d = tempfile.mkdtemp(prefix="rookery-test-")
    s = RunningServer({"components": {"secrets": {"bye.localhost": "x"}}}, Path(d)).start()
    try:
        c = await component(s, "bye.localhost", "x")
        await asyncio.to_thread(s.stop)
        assert await c.stream_error() == "system-shutdown"
        await c.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
