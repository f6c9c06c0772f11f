"""XEP-0357 Push Notifications against a real server on loopback, with raw XML clients: the App
Server's XMPP Push Service is a local raw client (no federation), reached through the normal routing
path."""

from __future__ import annotations

import asyncio
from xml.etree.ElementTree import Element

from xmpp_helpers import error_condition, eventually
from xmpp_helpers import tls_login as login

from rookery.jid import JID
from rookery.testing import RunningServer

PUSH = "urn:xmpp:push:0"
PUBSUB = "{http://jabber.org/protocol/pubsub}"
XDATA = "{jabber:x:data}"
SM = "urn:xmpp:sm:3"
C = "{jabber:client}"
T = 3.0

OPTIONS = ("<x xmlns='jabber:x:data' type='submit'>"
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
           "<field var='secret'><value>s3cr3t</value></field></x>")


def is_push(el: Element) -> bool:
    return el.tag == C + "iq" and el.find(f"{PUBSUB}pubsub/{PUBSUB}publish") is not None


def summary(iq: Element) -> dict[str, str]:
    x = iq.find(f"{PUBSUB}pubsub/{PUBSUB}publish/{PUBSUB}item/{{{PUSH}}}notification/{XDATA}x")
    assert x is not None
    return {f.get("var", ""): f.findtext(f"{XDATA}value") or "" for f in x.findall(f"{XDATA}field")}


async def setup(s: RunningServer):
    """An app server (raw client), a user with push enabled on it, and a sender."""
    app_jid, app_pw = s.make_user()
    user, upw = s.make_user()
    other, opw = s.make_user()
    app = await login(s, app_jid, app_pw, resource="srv")
    u = await login(s, user, upw, resource="phone")
    b = await login(s, other, opw)
    r = await u.iq(f"<iq type='set' id='e1'><enable xmlns='{PUSH}' jid='{app.jid}' node='n1'>{OPTIONS}"
                   f"</enable></iq>", T)
    assert r.get("type") == "result", r.attrib
    return app, u, b, user, upw


async def test_account_advertises_push_and_bad_enable_requests_are_refused(rookery_server):
    s = rookery_server
    jid, pw = s.make_user()
    other, _ = s.make_user()
    c = await login(s, jid, pw)
    try:
        r = await c.iq(f"<iq type='get' id='d1' to='{jid}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", T)
        assert PUSH in {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
        r = await c.iq(f"<iq type='set' id='b1'><enable xmlns='{PUSH}' node='n'/></iq>", T)
        assert error_condition(r) == "bad-request"
        r = await c.iq(f"<iq type='set' id='b2'><enable xmlns='{PUSH}' jid='a@@b' node='n'/></iq>", T)
        assert error_condition(r) == "jid-malformed"
        r = await c.iq(f"<iq type='set' id='b3' to='{other}'><enable xmlns='{PUSH}' jid='push.example' node='n'/></iq>", T)
        assert error_condition(r) == "forbidden"
        r = await c.iq(f"<iq type='set' id='b4'><enable xmlns='{PUSH}' jid='push.example' node='n'>"
                       "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value>"
                       "</field></x></enable></iq>", T)
        assert error_condition(r) == "bad-request"
        r = await c.iq(f"<iq type='set' id='b5'><disable xmlns='{PUSH}'/></iq>", T)
        assert error_condition(r) == "bad-request"
    finally:
        await c.close()


async def test_offline_message_publishes_a_summary_without_body(rookery_server):
    s = rookery_server
    app, u, b, user, upw = await setup(s)
    try:
        u.send("</stream:stream>")  # the user goes offline
        await eventually(lambda: s.call_sync(lambda: len(s.server.sessions.resources(user))) == 0)
        b.send(f"<message to='{user}' type='chat' id='o1'><body>secret words</body></message>")
        iq = await app.recv_until(is_push, T)
        assert iq.get("from") == user and iq.get("type") == "set"
        assert iq.find(f"{PUBSUB}pubsub/{PUBSUB}publish").get("node") == "n1"
        sm = summary(iq)
        assert sm["FORM_TYPE"] == "urn:xmpp:push:summary"
        assert sm["message-count"] == "1" and sm["last-message-sender"] == b.jid
        assert "last-message-body" not in sm
        po = iq.find(f"{PUBSUB}pubsub/{PUBSUB}publish-options/{XDATA}x")
        assert po is not None and "s3cr3t" in {v.text for v in po.iter(f"{XDATA}value")}
        app.send(f"<iq type='result' id='{iq.get('id')}' to='{user}'/>")
        b.send(f"<message to='{user}' type='chat' id='o2'><body>more</body></message>")
        iq = await app.recv_until(is_push, T)
        assert summary(iq)["message-count"] == "2"
        # a chat state alone is neither stored nor pushed
        b.send(f"<message to='{user}' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
        await app.expect_nothing(0.3)
    finally:
        for c in (app, u, b):
            await c.close()


async def test_detached_stream_management_resource_is_pushed(rookery_server):
    s = rookery_server
    app, u, b, user, upw = await setup(s)
    try:
        u.send(f"<enable xmlns='{SM}' resume='true'/>")
        await u.recv_until(lambda e: e.tag == f"{{{SM}}}enabled", T)
        ref = s.call_sync(lambda: s.server.sessions.get(JID.parse(u.jid)))
        b.send(f"<message to='{u.jid}' type='chat' id='a1'><body>while online</body></message>")
        await u.recv_until(lambda e: e.get("id") == "a1", T)
        await app.expect_nothing(0.2)  # attached: no push
        u.writer.transport.abort()
        await eventually(lambda: s.call_sync(lambda: not ref.attached))
        b.send(f"<message to='{u.jid}' type='chat' id='a2'><body>while away</body></message>")
        iq = await app.recv_until(is_push, T)
        assert summary(iq)["last-message-sender"] == b.jid
        # disabled: no more notifications
        u2 = await login(s, user, upw, resource="laptop")
        r = await u2.iq(f"<iq type='set' id='d1'><disable xmlns='{PUSH}' jid='{app.jid}'/></iq>", T)
        assert r.get("type") == "result"
        b.send(f"<message to='{u.jid}' type='chat' id='a3'><body>again</body></message>")
        await app.expect_nothing(0.3)
        await u2.close()
    finally:
        for c in (app, u, b):
            await c.close()


async def test_include_body_and_publish_error_disables(rookery_server_factory):
    s = rookery_server_factory(modules={"push": {"include_body": True}})
    app, u, b, user, upw = await setup(s)
    try:
        u.send("</stream:stream>")
        await eventually(lambda: s.call_sync(lambda: len(s.server.sessions.resources(user))) == 0)
        b.send(f"<message to='{user}' type='chat' id='i1'><body>hello there</body></message>")
        iq = await app.recv_until(is_push, T)
        assert summary(iq)["last-message-body"] == "hello there"
        # §7.1: an error answer disables the registration
        app.send(f"<iq type='error' id='{iq.get('id')}' to='{user}'><error type='cancel'>"
                 "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        await asyncio.sleep(0.3)
        b.send(f"<message to='{user}' type='chat' id='i2'><body>again</body></message>")
        await app.expect_nothing(0.4)
    finally:
        for c in (app, u, b):
            await c.close()
