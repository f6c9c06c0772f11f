"""Test clients for XMPP over HTTP, on aiohttp: RFC 7395 WebSocket and XEP-0206 BOSH, speaking raw
XML so the tests see exactly what the server sends."""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
from xml.etree.ElementTree import Element, fromstring

import aiohttp

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
HTTPBIND = "http://jabber.org/protocol/httpbind"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
STREAM = "http://etherx.jabber.org/streams"


def client_ssl(server) -> ssl.SSLContext:  # noqa: ANN001
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    ctx.check_hostname = False
    return ctx


def plain(jid: str, password: str) -> str:
    return base64.b64encode(f"\0{jid.split('@')[0]}\0{password}".encode()).decode()


class WSClient:
    """One RFC 7395 connection; ``recv()`` returns each message parsed."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession
        self.ws: aiohttp.ClientWebSocketResponse
        self.jid = ""

    async def connect(self, url: str, ssl_ctx: ssl.SSLContext | None = None,
                      protocols: tuple[str, ...] = ("xmpp",)) -> WSClient:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, protocols=protocols, ssl=ssl_ctx if ssl_ctx else False)
        return self

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv_text(self, timeout: float = 5.0) -> str | None:
        msg = await self.ws.receive(timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return msg.data
        return None

    async def recv(self, timeout: float = 5.0) -> Element:
        text = await self.recv_text(timeout)
        if text is None:
            raise ConnectionError("WebSocket closed")
        return fromstring(text)

    async def recv_until(self, pred, timeout: float = 5.0) -> Element:  # noqa: ANN001
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            el = await self.recv(max(0.01, end - loop.time()))
            if pred(el):
                return el

    async def open(self, to: str = "localhost") -> Element:
        """Send <open/>; return the features (after checking the server's <open/>)."""
        await self.send(f"<open xmlns='{FRAMING}' to='{to}' version='1.0'/>")
        opened = await self.recv()
        assert opened.tag == f"{{{FRAMING}}}open", opened.tag
        return await self.recv()

    async def login(self, url: str, jid: str, password: str, ssl_ctx: ssl.SSLContext | None = None,
                    resource: str = "ws") -> WSClient:
        await self.connect(url, ssl_ctx)
        features = await self.open()
        assert features.find(f"{{{SASL}}}mechanisms") is not None
        await self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{plain(jid, password)}</auth>")
        ok = await self.recv()
        assert ok.tag == f"{{{SASL}}}success", ok.tag
        features = await self.open()  # RFC 7395 §3.6: a new <open/> after SASL
        assert features.find(f"{{{BIND}}}bind") is not None
        await self.send(f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{BIND}'>"
                        f"<resource>{resource}</resource></bind></iq>")
        res = await self.recv()
        assert res.get("type") == "result", res
        self.jid = res.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid") or ""
        return self

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.session.close()


class BOSHClient:
    """One XEP-0206 session over plain requests (one at a time unless told otherwise)."""

    def __init__(self, url: str, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ssl = ssl_ctx if ssl_ctx else False
        self.http = aiohttp.ClientSession()
        self.rid = secrets.randbelow(1 << 40) + 1000
        self.sid = ""
        self.jid = ""

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    async def post(self, body: str | bytes, content_type: str = "text/xml; charset=utf-8",
                   timeout: float = 10.0) -> tuple[int, Element | None, bytes]:
        data = body.encode() if isinstance(body, str) else body
        async with self.http.post(self.url, data=data, headers={"Content-Type": content_type}, ssl=self.ssl,
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            raw = await r.read()
            el = fromstring(raw) if raw.startswith(b"<") else None
            return r.status, el, raw

    def body(self, payload: str = "", rid: int | None = None, **attrs: str) -> str:
        rid = self.next_rid() if rid is None else rid
        a = "".join(f" {k.replace('__', ':')}='{v}'" for k, v in attrs.items())
        return f"<body xmlns='{HTTPBIND}' sid='{self.sid}' rid='{rid}'{a}>{payload}</body>"

    async def send(self, payload: str = "", **attrs: str) -> Element:
        status, el, raw = await self.post(self.body(payload, **attrs))
        assert status == 200 and el is not None, (status, raw)
        return el

    async def create(self, to: str = "localhost", wait: int = 10, hold: int = 1, **extra: str) -> Element:
        a = "".join(f" {k}='{v}'" for k, v in extra.items())
        status, el, raw = await self.post(
            f"<body xmlns='{HTTPBIND}' content='text/xml; charset=utf-8' rid='{self.next_rid()}' to='{to}' "
            f"wait='{wait}' hold='{hold}' ver='1.6' xml:lang='en' xmpp:version='1.0' "
            f"xmlns:xmpp='urn:xmpp:xbosh'{a}/>")
        assert status == 200 and el is not None, (status, raw)
        self.sid = el.get("sid") or ""
        return el

    async def features(self, first: Element) -> Element:
        """The stream features: in ``first`` or the next response."""
        f = first.find(f"{{{STREAM}}}features")
        while f is None:
            f = (await self.send()).find(f"{{{STREAM}}}features")
        return f

    async def login(self, jid: str, password: str, resource: str = "bosh", wait: int = 10) -> BOSHClient:
        f = await self.features(await self.create(wait=wait))
        assert f.find(f"{{{SASL}}}mechanisms") is not None, f
        r = await self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{plain(jid, password)}</auth>")
        assert r.find(f"{{{SASL}}}success") is not None, r
        r = await self.send(to="localhost", xmpp__restart="true", xmlns__xmpp="urn:xmpp:xbosh")
        f = await self.features(r)
        assert f.find(f"{{{BIND}}}bind") is not None
        r = await self.send(f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='{BIND}'>"
                            f"<resource>{resource}</resource></bind></iq>")
        iq = r.find("{jabber:client}iq")
        assert iq is not None and iq.get("type") == "result", r
        self.jid = iq.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid") or ""
        return self

    async def close(self) -> None:
        await self.http.close()
