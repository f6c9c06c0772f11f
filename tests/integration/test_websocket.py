"""RFC 7395 XMPP over WebSocket (modules/websocket.py): logins over the HTTPS and plain listeners, the
same c2s session code as TCP (a message to and from a slixmpp client on TCP), restart after SASL,
framing errors, the sub-protocol check."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from http_clients import FRAMING, STREAM, WSClient, client_ssl
from xmpp_helpers import disconnect, slix_client


def ws_url(server, secure: bool = True) -> str:  # noqa: ANN001
    if secure:
        return f"wss://127.0.0.1:{server.https_port}/xmpp-websocket"
    return f"ws://127.0.0.1:{server.http_port}/xmpp-websocket"


def stream_error(el) -> str | None:  # noqa: ANN001
    if el.tag != f"{{{STREAM}}}error":
        return None
    return el[0].tag.split("}")[1]


async def test_login_over_wss_and_chat_with_a_tcp_client(rookery_server):
    a_jid, a_pw = rookery_server.make_user()
    b_jid, b_pw = rookery_server.make_user()
    ws = await WSClient().login(ws_url(rookery_server), a_jid, a_pw, client_ssl(rookery_server))
    b = await slix_client(rookery_server, b_jid, b_pw)
    try:
        assert ws.jid == f"{a_jid}/ws"
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        b.add_event_handler("message", lambda m: got.done() or got.set_result(m))
        await ws.send(f"<message xmlns='jabber:client' to='{b_jid}' type='chat'><body>over websocket</body></message>")
        m = await asyncio.wait_for(got, 5)
        assert m["body"] == "over websocket" and str(m["from"]) == ws.jid
        b.send_message(mto=ws.jid, mbody="over tcp", mtype="chat")
        el = await ws.recv_until(lambda e: e.tag == "{jabber:client}message")
        assert el.findtext("{jabber:client}body") == "over tcp"
        # each message is one element with its own namespace declaration
        await ws.send("<iq xmlns='jabber:client' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        text = await ws.recv_text()
        assert text is not None and text.startswith("<iq xmlns='jabber:client'")
        await ws.send(f"<close xmlns='{FRAMING}'/>")
        closed = await ws.recv()
        assert closed.tag == f"{{{FRAMING}}}close"
    finally:
        await ws.close()
        await disconnect(b)


async def test_plain_ws_from_loopback_counts_as_secure(rookery_server):
    jid, pw = rookery_server.make_user()
    ws = await WSClient().login(ws_url(rookery_server, secure=False), jid, pw)
    await ws.close()


async def test_plain_ws_not_secure_without_secure_loopback(rookery_server_factory):
    srv = rookery_server_factory(http={"secure_loopback": False})
    ws = await WSClient().connect(ws_url(srv, secure=False))
    try:
        features = await ws.open()
        # require_encryption: no SASL offered on an unencrypted carrier that cannot STARTTLS
        assert features.find("{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms") is None
        assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    finally:
        await ws.close()


@pytest.mark.parametrize("frame", [
    "<message xmlns='jabber:client'/><message xmlns='jabber:client'/>",  # two elements
    "<message xmlns='jabber:client'><body>",  # not complete
    "hello",  # not XML
    "<message xmlns='jabber:client'>",
    "<!-- a comment --><message xmlns='jabber:client'/>",
])
async def test_a_frame_that_is_not_one_element_is_a_stream_error(rookery_server, frame):
    ws = await WSClient().connect(ws_url(rookery_server, secure=False))
    try:
        await ws.open()
        await ws.send(frame)
        err = await ws.recv()
        assert stream_error(err) in ("not-well-formed", "restricted-xml"), err.tag
        assert (await ws.recv()).tag == f"{{{FRAMING}}}close"
        assert await ws.recv_text() is None  # the server closes the WebSocket
    finally:
        await ws.close()


async def test_first_frame_must_be_open(rookery_server):
    ws = await WSClient().connect(ws_url(rookery_server, secure=False))
    try:
        await ws.send("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='localhost'/>")
        assert (await ws.recv()).tag == f"{{{FRAMING}}}open"
        assert stream_error(await ws.recv()) == "invalid-namespace"
    finally:
        await ws.close()


async def test_stanzas_before_auth_are_refused(rookery_server):
    ws = await WSClient().connect(ws_url(rookery_server, secure=False))
    try:
        await ws.open()
        await ws.send("<message xmlns='jabber:client' to='x@localhost'><body>hi</body></message>")
        assert stream_error(await ws.recv()) == "not-authorized"
    finally:
        await ws.close()


@pytest.mark.parametrize("protocols", [(), ("chat",), ("xmpp-v2", "mqtt")])
async def test_wrong_or_missing_subprotocol_refused(rookery_server, protocols):
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(ws_url(rookery_server, secure=False), protocols=protocols)
        assert e.value.status == 400


async def test_plain_get_is_not_an_upgrade(rookery_server):
    async with aiohttp.ClientSession() as s, s.get(rookery_server.http_url + "/xmpp-websocket",
                                                   headers={"Sec-WebSocket-Protocol": "xmpp"}) as r:
        assert r.status == 426


async def test_websocket_pings(rookery_server_factory):
    srv = rookery_server_factory(websocket={"ping_interval": 0.3})
    async with aiohttp.ClientSession() as s, s.ws_connect(ws_url(srv, secure=False), protocols=("xmpp",),
                                                          autoping=False) as ws:
        msg = await ws.receive(3)
        assert msg.type == aiohttp.WSMsgType.PING
        await ws.pong(msg.data)


async def test_stanza_over_the_size_limit(rookery_server):
    ws = await WSClient().connect(ws_url(rookery_server, secure=False))
    try:
        await ws.open()
        await ws.send(f"<message xmlns='jabber:client'><body>{'x' * 300_000}</body></message>")
        assert stream_error(await ws.recv()) == "policy-violation"
    finally:
        await ws.close()


async def test_connection_limits_count_websockets(rookery_server_factory):
    srv = rookery_server_factory(limits={"max_unauthenticated_per_ip": 1})
    first = await WSClient().connect(ws_url(srv, secure=False))
    second = await WSClient().connect(ws_url(srv, secure=False))
    try:
        msg = await second.ws.receive(3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013
        assert (await first.open()).tag == f"{{{STREAM}}}features"
    finally:
        await first.close()
        await second.close()
