"""XEP-0124/XEP-0206 BOSH (modules/bosh.py, transports/bosh.py) with a plain HTTP client: a login
over HTTPS and a chat with a TCP client, restart after SASL, rid order, replays and the window,
unknown sids, bad requests, pause, inactivity, terminate."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from http_clients import HTTPBIND, SASL, STREAM, BOSHClient, client_ssl, plain
from xmpp_helpers import disconnect, slix_client


def bosh_url(server, secure: bool = False) -> str:  # noqa: ANN001
    if secure:
        return f"https://127.0.0.1:{server.https_port}/http-bind"
    return f"http://127.0.0.1:{server.http_port}/http-bind"


@pytest.fixture
def fast_bosh(rookery_server_factory):
    return rookery_server_factory(bosh={"inactivity": 2, "max_wait": 1, "max_pause": 10})


async def test_login_over_https_and_chat_with_a_tcp_client(rookery_server):
    a_jid, a_pw = rookery_server.make_user()
    b_jid, b_pw = rookery_server.make_user()
    c = BOSHClient(bosh_url(rookery_server, secure=True), client_ssl(rookery_server))
    b = await slix_client(rookery_server, b_jid, b_pw)
    try:
        first = await c.create()
        assert first.get("sid") and first.get("requests") == "2" and first.get("hold") == "1"
        assert first.get("{urn:xmpp:xbosh}version") == "1.0" and first.get("from") == "localhost"
        assert first.get("secure") == "true" and first.get("authid")
        f = await c.features(first)
        assert f.find(f"{{{SASL}}}mechanisms") is not None
        r = await c.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{plain(a_jid, a_pw)}</auth>")
        assert r.find(f"{{{SASL}}}success") is not None
        r = await c.send(to="localhost", xmpp__restart="true", xmlns__xmpp="urn:xmpp:xbosh")
        f = await c.features(r)
        assert f.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
        r = await c.send("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                         "<resource>web</resource></bind></iq>")
        assert r.find("{jabber:client}iq").get("type") == "result"
        me = f"{a_jid}/web"
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        b.add_event_handler("message", lambda m: got.done() or got.set_result(m))
        # the request carrying the message is held (hold=1) and answered when the reply comes
        held = asyncio.ensure_future(
            c.send(f"<message xmlns='jabber:client' to='{b_jid}' type='chat'><body>over bosh</body></message>"))
        m = await asyncio.wait_for(got, 5)
        assert m["body"] == "over bosh" and str(m["from"]) == me
        await asyncio.sleep(0.2)
        assert not held.done()
        b.send_message(mto=me, mbody="over tcp", mtype="chat")
        r = await asyncio.wait_for(held, 5)
        assert r.findtext("{jabber:client}message/{jabber:client}body") == "over tcp"
        # terminate: the session is gone
        r = await c.send("<presence xmlns='jabber:client' type='unavailable'/>", type="terminate")
        assert r.get("type") == "terminate"
        status, el, _ = await c.post(c.body())
        assert status == 404 and el.get("condition") == "item-not-found"
    finally:
        await c.close()
        await disconnect(b)


async def test_restart_after_sasl_and_login_helper(rookery_server):
    jid, pw = rookery_server.make_user()
    c = BOSHClient(bosh_url(rookery_server))
    try:
        await c.login(jid, pw)
        assert c.jid == f"{jid}/bosh"
        r = await c.send("<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert r.find("{jabber:client}iq").get("type") == "result"
    finally:
        await c.close()


async def test_rid_replay_and_window(rookery_server):
    jid, pw = rookery_server.make_user()
    c = BOSHClient(bosh_url(rookery_server))
    try:
        await c.login(jid, pw, wait=1)
        ping = "<iq xmlns='jabber:client' type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>"
        body = c.body(ping)
        status, first, raw = await c.post(body)
        assert status == 200 and first.find("{jabber:client}iq") is not None
        # the same rid again: the cached response, not a second ping
        status, again, raw2 = await c.post(body)
        assert status == 200 and raw2 == raw
        # out of order within the window: taken in rid order (the output of both goes to the older)
        r1, r2 = c.next_rid(), c.next_rid()
        later = asyncio.ensure_future(c.post(c.body(ping.replace("p2", "p4"), rid=r2)))
        await asyncio.sleep(0.2)
        assert not later.done()  # waits for r1
        status, el, _ = await c.post(c.body(ping.replace("p2", "p3"), rid=r1))
        assert status == 200
        status, el2, _ = await asyncio.wait_for(later, 5)
        ids = [e.get("id") for x in (el, el2) for e in x.iter("{jabber:client}iq")]
        assert ids == ["p3", "p4"]
        # beyond the window: terminated with item-not-found
        status, el, _ = await c.post(c.body(rid=c.rid + 10))
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
        status, el, _ = await c.post(c.body())
        assert status == 404  # the session is gone
    finally:
        await c.close()


async def test_old_rid_not_cached_terminates(rookery_server):
    jid, pw = rookery_server.make_user()
    c = BOSHClient(bosh_url(rookery_server))
    try:
        await c.login(jid, pw)
        status, el, _ = await c.post(c.body(rid=c.rid - 50))
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
    finally:
        await c.close()


async def test_unknown_sid(rookery_server):
    c = BOSHClient(bosh_url(rookery_server))
    c.sid = "0123456789abcdef0123456789abcdef"
    try:
        status, el, _ = await c.post(c.body())
        assert status == 404
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
    finally:
        await c.close()


@pytest.mark.parametrize("body", [
    b"not xml at all",
    b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='localhost'",  # not complete
    b"<notbody xmlns='http://jabber.org/protocol/httpbind' rid='1' to='localhost'/>",
    b"<body rid='1' to='localhost'/>",  # no namespace
    b"<!DOCTYPE x [<!ENTITY a 'b'>]><body xmlns='http://jabber.org/protocol/httpbind'/>",
    b"<body xmlns='http://jabber.org/protocol/httpbind' to='localhost' wait='5' hold='1'/>",  # no rid
    b"",
])
async def test_bad_bodies(rookery_server, body):
    c = BOSHClient(bosh_url(rookery_server))
    try:
        status, el, _ = await c.post(body)
        assert status == 400
        assert el is not None and el.get("condition") == "bad-request"
    finally:
        await c.close()


@pytest.mark.parametrize("ctype", ["application/json", "multipart/form-data; boundary=x",
                                   "application/x-www-form-urlencoded"])
async def test_wrong_content_type(rookery_server, ctype):
    c = BOSHClient(bosh_url(rookery_server))
    try:
        status, _, _ = await c.post(f"<body xmlns='{HTTPBIND}' rid='5' to='localhost' wait='5' hold='1'/>", ctype)
        assert status == 415
    finally:
        await c.close()


async def test_oversized_body(rookery_server):
    c = BOSHClient(bosh_url(rookery_server))
    try:
        status, _, _ = await c.post(f"<body xmlns='{HTTPBIND}' rid='5'>{'x' * (2 << 20)}</body>")
        assert status == 413
    finally:
        await c.close()


async def test_empty_poll_waits_then_is_answered_empty(fast_bosh):
    jid, pw = fast_bosh.make_user()
    c = BOSHClient(bosh_url(fast_bosh))
    try:
        first = await c.create(wait=60)
        assert first.get("wait") == "1"  # capped by max_wait
        await c.features(first)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await c.send()
        assert 0.8 < loop.time() - t0 < 3 and len(r) == 0
    finally:
        await c.close()


async def test_inactivity_ends_the_session(fast_bosh):
    jid, pw = fast_bosh.make_user()
    c = BOSHClient(bosh_url(fast_bosh))
    try:
        await c.login(jid, pw)
        assert fast_bosh.session_count() == 1
        await asyncio.sleep(3)  # inactivity 2 s, no request held
        assert fast_bosh.session_count() == 0
        status, el, _ = await c.post(c.body())
        assert status == 404 and el.get("condition") == "item-not-found"
    finally:
        await c.close()


async def test_pause(fast_bosh):
    jid, pw = fast_bosh.make_user()
    c = BOSHClient(bosh_url(fast_bosh))
    try:
        await c.login(jid, pw)
        held = asyncio.ensure_future(c.send())
        await asyncio.sleep(0.2)
        r = await c.send(pause="5")  # answers the held request at once, allows 5 s of silence
        assert len(r) == 0 and r.get("type") is None
        assert len(await asyncio.wait_for(held, 1)) == 0
        await asyncio.sleep(3)  # longer than inactivity (2 s)
        assert fast_bosh.session_count() == 1
        r = await c.send("<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert r.find("{jabber:client}iq").get("type") == "result"
        # a pause over maxpause: policy-violation
        r = await c.send(pause="1000")
        assert r.get("type") == "terminate" and r.get("condition") == "policy-violation"
    finally:
        await c.close()


async def test_stream_error_is_remote_stream_error(rookery_server):
    c = BOSHClient(bosh_url(rookery_server))
    try:
        f = await c.features(await c.create())
        assert f is not None
        r = await c.send("<message xmlns='jabber:client' to='x@localhost'/>")  # before authenticating
        assert r.get("type") == "terminate" and r.get("condition") == "remote-stream-error"
        assert r.find(f"{{{STREAM}}}error/{{urn:ietf:params:xml:ns:xmpp-streams}}not-authorized") is not None
    finally:
        await c.close()


async def test_legacy_client_gets_http_codes(rookery_server):
    c = BOSHClient(bosh_url(rookery_server))
    try:
        status, el, _ = await c.post(f"<body xmlns='{HTTPBIND}' rid='100' to='localhost' wait='5' hold='1' "
                                     "xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>")
        assert status == 200 and el.get("sid")
        c.sid, c.rid = el.get("sid"), 100
        status, el, _ = await c.post(c.body(rid=150))
        assert status == 404 and el.get("condition") == "item-not-found"
    finally:
        await c.close()


async def test_cors_preflight_and_get(rookery_server):
    async with aiohttp.ClientSession() as s:
        async with s.options(bosh_url(rookery_server), headers={
                "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
        async with s.get(bosh_url(rookery_server)) as r:
            assert r.status == 200


async def test_acks_and_polling_session(rookery_server):
    c = BOSHClient(bosh_url(rookery_server))
    try:
        first = await c.create(hold=0, ack="1")  # hold=0: a polling session (XEP-0124 §11)
        assert first.get("hold") == "0" and first.get("requests") == "1"
        assert first.get("ack") == str(c.rid)  # acks on: the creation response acknowledges its rid
        await c.features(first)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await c.send()  # nothing to say: answered at once, not held
        assert loop.time() - t0 < 1.0 and len(r) == 0
    finally:
        await c.close()
