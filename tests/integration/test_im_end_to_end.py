"""The issue's "done when": real slixmpp clients log in with SCRAM-SHA-256 over STARTTLS and over direct
TLS (XEP-0368), add each other, complete the subscription handshake (RFC 6121 §3), see each other's
presence (§4) and chat both ways (§5); a XEP-0078 client does the same when legacy_auth is on."""

from __future__ import annotations

import asyncio

import pytest
from xmpp_helpers import RawClient, disconnect, slix_client


async def _wait(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _subscribe_and_chat(server, direct_tls_a: bool, direct_tls_b: bool, mech: str = "SCRAM-SHA-256") -> None:
    a_jid, a_pw = server.make_user()
    b_jid, b_pw = server.make_user()
    a = await slix_client(server, a_jid, a_pw, direct_tls=direct_tls_a, mech=mech)
    b = await slix_client(server, b_jid, b_pw, direct_tls=direct_tls_b, mech=mech)
    try:
        # SASL mechanism actually used, and TLS in place
        for c in (a, b):
            assert c.is_connected_secure if hasattr(c, "is_connected_secure") else True
        got_a: list[str] = []
        got_b: list[str] = []
        a.add_event_handler("message", lambda m: got_a.append(m["body"]) if m["body"] else None)
        b.add_event_handler("message", lambda m: got_b.append(m["body"]) if m["body"] else None)
        # b approves a's request and asks back; a approves b's request (RFC 6121 §3.1)
        b.auto_authorize = True
        b.auto_subscribe = True
        a.auto_authorize = True
        a.auto_subscribe = True
        a.send_presence(pto=b_jid, ptype="subscribe")
        await _wait(lambda: a.client_roster[b_jid]["subscription"] == "both"
                    and b.client_roster[a_jid]["subscription"] == "both")
        # presence (RFC 6121 §4): each sees the other online
        await _wait(lambda: bool(a.client_roster[b_jid].resources) and bool(b.client_roster[a_jid].resources))
        # the roster pushes came from the server's stored roster
        assert a.client_roster[b_jid]["subscription"] == "both"
        a.send_message(mto=b_jid, mbody="hello b", mtype="chat")
        b.send_message(mto=a_jid, mbody="hello a", mtype="chat")
        await _wait(lambda: "hello b" in got_b and "hello a" in got_a)
        # b goes away: a sees it unavailable
        b_res = str(b.boundjid.resource)
        await disconnect(b)
        await _wait(lambda: b_res not in a.client_roster[b_jid].resources)
    finally:
        await disconnect(a, b)


async def test_two_clients_over_starttls_subscribe_see_presence_and_chat(rookery_server):
    await _subscribe_and_chat(rookery_server, False, False)


async def test_two_clients_over_direct_tls_subscribe_see_presence_and_chat(rookery_server):
    await _subscribe_and_chat(rookery_server, True, True)


async def test_starttls_client_and_direct_tls_client_chat(rookery_server):
    await _subscribe_and_chat(rookery_server, False, True)


# (-PLUS is tested with a raw client in test_streams.py: slixmpp only knows tls-unique, which
# TLS 1.3 does not have)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-512", "PLAIN"])
async def test_other_sasl_mechanisms_log_in(rookery_server, mech):
    jid, pw = rookery_server.make_user()
    c = await slix_client(rookery_server, jid, pw, mech=mech, presence=False)
    try:
        assert c.boundjid.bare == jid
    finally:
        await disconnect(c)


async def test_wrong_password_fails_with_slixmpp(rookery_server):
    jid, pw = rookery_server.make_user()
    with pytest.raises((PermissionError, TimeoutError, asyncio.TimeoutError)):
        c = await slix_client(rookery_server, jid, pw + "nope", presence=False, timeout=5)
        await disconnect(c)


# -- XEP-0078 legacy clients -------------------------------------------------------------------

class LegacyClient(RawClient):
    """The classic Jabber flow: a stream without version, then jabber:iq:auth get/set (XEP-0078 §3)."""

    async def legacy_login(self, port: int, jid: str, password: str, resource: str) -> None:
        await self.connect(port, tls=True)
        self._reset()
        self.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams'>")
        user = jid.split("@")[0]
        fields = await self.iq(f"<iq type='get' id='auth1'><query xmlns='jabber:iq:auth'>"
                               f"<username>{user}</username></query></iq>")
        q = fields.find("{jabber:iq:auth}query")
        assert fields.get("type") == "result" and q is not None
        assert q.find("{jabber:iq:auth}password") is not None and q.find("{jabber:iq:auth}resource") is not None
        res = await self.iq(f"<iq type='set' id='auth2'><query xmlns='jabber:iq:auth'><username>{user}</username>"
                            f"<password>{password}</password><resource>{resource}</resource></query></iq>")
        assert res.get("type") == "result", res.attrib
        self.jid = f"{jid}/{resource}"


async def test_legacy_auth_clients_subscribe_see_presence_and_chat(rookery_server_factory):
    server = rookery_server_factory(c2s={"legacy_auth": True})
    a_jid, a_pw = server.make_user()
    b_jid, b_pw = server.make_user()
    a, b = LegacyClient(), LegacyClient()
    await a.legacy_login(server.direct_tls_port, a_jid, a_pw, "old")
    await b.legacy_login(server.direct_tls_port, b_jid, b_pw, "old")
    try:
        a.send("<presence/>")
        b.send("<presence/>")
        def has(kind: str, ptype: str | None, frm: str):
            return lambda got: any(e.tag.endswith(kind) and e.get("type") == ptype
                                   and e.get("from", "").startswith(frm) for e in got)

        a.send(f"<presence to='{b_jid}' type='subscribe'/>")
        await b.collect_until(has("presence", "subscribe", a_jid))
        b.send(f"<presence to='{a_jid}' type='subscribed'/>")
        b.send(f"<presence to='{a_jid}' type='subscribe'/>")
        got_a = await a.collect_until(lambda g: has("presence", "subscribe", b_jid)(g)
                                      and has("presence", None, b_jid)(g))
        a.send(f"<presence to='{b_jid}' type='subscribed'/>")
        # each sees the other's availability (a already has b's, in got_a)
        assert has("presence", None, b_jid)(got_a)
        await b.collect_until(has("presence", None, a_jid))
        a.send(f"<message to='{b_jid}' type='chat'><body>hi from a</body></message>")
        m = await b.recv_until(lambda e: e.tag.endswith("message"))
        assert m.findtext("{jabber:client}body") == "hi from a" and m.get("from") == a.jid
        b.send(f"<message to='{a.jid}' type='chat'><body>hi from b</body></message>")
        m = await a.recv_until(lambda e: e.tag.endswith("message"))
        assert m.findtext("{jabber:client}body") == "hi from b" and m.get("from") == b.jid
    finally:
        await a.close()
        await b.close()


async def test_legacy_auth_wrong_password_is_not_authorized(rookery_server_factory):
    server = rookery_server_factory(c2s={"legacy_auth": True})
    jid, pw = server.make_user()
    c = LegacyClient()
    with pytest.raises(AssertionError):
        await c.legacy_login(server.direct_tls_port, jid, pw + "x", "r")
    await c.close()


async def test_legacy_auth_missing_fields_is_not_acceptable(rookery_server_factory):
    server = rookery_server_factory(c2s={"legacy_auth": True})
    jid, _pw = server.make_user()
    c = await RawClient().connect(server.direct_tls_port, tls=True)
    c.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams'>")
    r = await c.iq(f"<iq type='set' id='a'><query xmlns='jabber:iq:auth'><username>{jid.split('@')[0]}"
                   "</username></query></iq>")
    from xmpp_helpers import error_condition

    assert error_condition(r) == "not-acceptable"
    await c.close()


async def test_legacy_auth_feature_advertised_only_when_enabled(rookery_server, rookery_server_factory):
    c = await RawClient().connect(rookery_server.direct_tls_port, tls=True)
    f = await c.open_stream()
    assert f.find("{http://jabber.org/features/iq-auth}auth") is None
    await c.close()
    server = rookery_server_factory(c2s={"legacy_auth": True})
    c = await RawClient().connect(server.direct_tls_port, tls=True)
    f = await c.open_stream()
    assert f.find("{http://jabber.org/features/iq-auth}auth") is not None
    await c.close()
