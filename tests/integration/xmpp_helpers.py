"""Test clients: a raw-XML client for protocol edge cases, and a slixmpp connector (a real,
independent client) for the integration tests."""

from __future__ import annotations

import asyncio
import base64
import ssl
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

import slixmpp

STREAM_NS = "http://etherx.jabber.org/streams"
HEADER = ("<?xml version='1.0'?><stream:stream to='{to}' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient:
    """Speaks XML over a socket; ``recv()`` returns top-level stream children as Elements."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.header: Element | None = None
        self.closed_by_server = False
        self._parser: XMLPullParser
        self._depth = 0
        self._queue: list[Element] = []
        self.jid = ""
        self.features: Element | None = None

    async def connect(self, port: int, host: str = "127.0.0.1", tls: bool = False) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(
            host, port, ssl=insecure_context() if tls else None, server_hostname="localhost" if tls else None)
        self._reset()
        return self

    def _reset(self) -> None:
        self._parser = XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.header = None

    def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def open_stream(self, to: str = "localhost", header: str | None = None) -> Element:
        """Send a stream header; return the features element (or the stream error)."""
        self._reset()
        self.send(header if header is not None else HEADER.format(to=to))
        return await self.recv()

    async def _fill(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            self.closed_by_server = True
            raise ConnectionError("server closed the connection")
        try:
            self._parser.feed(data)
            for ev, el in self._parser.read_events():
                if ev == "start":
                    self._depth += 1
                    if self._depth == 1:
                        self.header = el
                else:
                    self._depth -= 1
                    if self._depth == 1:
                        self._queue.append(el)
                    elif self._depth == 0:
                        self.closed_by_server = True
                        self._queue.append(Element("{%s}closed" % STREAM_NS))
        except ParseError:
            raise

    async def recv(self, timeout: float = 5.0) -> Element:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._queue:
            await self._fill(max(0.01, deadline - loop.time()))
        return self._queue.pop(0)

    async def recv_until(self, pred, timeout: float = 5.0) -> Element:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            el = await self.recv(max(0.01, deadline - loop.time()))
            if pred(el):
                return el

    async def collect_until(self, pred, timeout: float = 5.0) -> list[Element]:
        """Receive stanzas, keeping all of them, until ``pred(list_so_far)`` is true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got: list[Element] = []
        while not pred(got):
            got.append(await self.recv(max(0.01, deadline - loop.time())))
        return got

    async def expect_nothing(self, timeout: float = 0.3) -> None:
        try:
            el = await self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {el.tag} {el.attrib}")

    async def stream_error(self, timeout: float = 5.0) -> str:
        """Wait for a stream error; return its condition name."""
        el = await self.recv_until(lambda e: e.tag == "{%s}error" % STREAM_NS, timeout)
        for child in el:
            if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-streams}") and not child.tag.endswith("}text"):
                return child.tag.split("}")[1]
        raise AssertionError("stream error without condition")

    async def starttls(self, to: str = "localhost") -> Element:
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        el = await self.recv()
        assert el.tag == "{urn:ietf:params:xml:ns:xmpp-tls}proceed", el.tag
        await self.writer.start_tls(insecure_context(), server_hostname="localhost")
        return await self.open_stream(to)

    async def auth_plain(self, user: str, password: str) -> Element:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        return await self.recv()

    async def authenticate(self, port: int, jid: str, password: str, tls: bool = False) -> Element:
        """Connect, STARTTLS (unless direct TLS), SASL PLAIN; returns the features after SASL."""
        user, _, domain = jid.partition("@")
        await self.connect(port, tls=tls)
        await self.open_stream(domain)
        if not tls:
            await self.starttls(domain)
        res = await self.auth_plain(user, password)
        assert res.tag.endswith("}success"), res.tag
        return await self.open_stream(domain)

    async def login(self, port: int, jid: str, password: str, resource: str = "raw", tls: bool = False) -> RawClient:
        """Connect, STARTTLS (unless direct TLS), SASL PLAIN, bind: a ready session."""
        self.features = await self.authenticate(port, jid, password, tls)
        self.send(f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        r = await self.recv()
        assert r.get("type") == "result", r.attrib
        self.jid = r.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid").text  # type: ignore[union-attr]
        return self

    async def iq(self, xml: str, timeout: float = 5.0) -> Element:
        """Send an iq (must carry an id) and return the reply with that id."""
        import re

        m = re.search(r"id=['\"]([^'\"]+)", xml)
        assert m, "iq needs an id"
        self.send(xml)
        return await self.recv_until(lambda e: e.tag.endswith("iq") and e.get("id") == m.group(1), timeout)

    async def close(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except Exception:
            pass


def error_condition(el: Element) -> str | None:
    """The defined condition of a stanza error (RFC 6120 §8.3)."""
    err = el.find("{jabber:client}error")
    if err is None:
        return None
    for child in err:
        if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and not child.tag.endswith("}text"):
            return child.tag.split("}")[1]
    return None


async def slix_client(server, jid: str, password: str, *, direct_tls: bool = False, mech: str = "SCRAM-SHA-256",
                      plugins: tuple[str, ...] = (), presence: bool = True, timeout: float = 10.0) -> slixmpp.ClientXMPP:
    """A slixmpp client logged in to ``server`` (STARTTLS, or direct TLS, with the given SASL mechanism)."""
    c = slixmpp.ClientXMPP(jid, password, sasl_mech=mech)
    c.ssl_context = insecure_context()
    c.enable_plaintext = False
    c.enable_starttls = not direct_tls
    c.enable_direct_tls = direct_tls
    for p in plugins:
        c.register_plugin(p)
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    c.add_event_handler("session_start", lambda _e: started.done() or started.set_result(True))
    c.add_event_handler("failed_auth", lambda _e: started.done() or started.set_exception(PermissionError("auth failed")))
    port = server.direct_tls_port if direct_tls else server.c2s_port
    c.connect("127.0.0.1", port)
    await asyncio.wait_for(started, timeout)
    if presence:
        # like any IM client: fetch the roster (becoming an "interested resource", RFC 6121 §2.1.6),
        # then send initial presence
        await c.get_roster()
        c.send_presence()
        # a round trip: the server handles a client's stanzas in order, so once this is answered the
        # initial presence has been processed (the resource is available: a message sent to the
        # account from elsewhere now is delivered, not stored offline)
        await c.get_roster()
    return c


async def disconnect(*clients: slixmpp.ClientXMPP) -> None:
    for c in clients:
        try:
            await asyncio.wait_for(c.disconnect(), 5)
        except Exception:
            pass


# -- small shared helpers of the integration tests --------------------------------------------------
async def eventually(pred, timeout: float = 3.0) -> None:  # noqa: ANN001
    """Until ``pred()`` is true (bounded: AssertionError after ``timeout`` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def drain(c: RawClient, timeout: float = 0.3) -> list[Element]:
    """Everything ``c`` receives within ``timeout`` seconds."""
    got: list[Element] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (left := end - loop.time()) > 0:
        try:
            got.append(await c.recv(left))
        except (TimeoutError, ConnectionError):
            break
    return got


def befriend(server, a: str, b: str) -> None:  # noqa: ANN001
    """A mutual ("both") subscription between two local accounts, straight into storage."""
    from rookery.jid import JID
    from rookery.storage.base import RosterItem

    for owner, contact in ((a, b), (b, a)):
        o = JID.parse(owner)
        server.call(server.server.storage.roster.set_item, o.domain, o.local,
                    RosterItem(jid=contact, subscription="both"))


async def tls_login(server, jid: str, pw: str, resource: str = "raw", presence: bool = False) -> RawClient:  # noqa: ANN001
    """Log in over direct TLS; with ``presence``, send initial presence and wait for its echo."""
    c = await RawClient().login(server.direct_tls_port, jid, pw, resource=resource, tls=True)
    if presence:
        await available(c)
    return c


async def available(c: RawClient) -> None:
    """Initial presence, and the server's echo of it to the client (RFC 6121 §4.2.2)."""
    c.send("<presence/>")
    await c.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == c.jid)


def one_and_two_workers(prefix: str = "rookery-test-"):
    """A module-scoped ``rookery_server`` fixture run with one process and with two workers (issue 12):
    with two, consecutive connections land on different workers, so an account's resources and its
    contacts are split between them.  In a test module: ``rookery_server = one_and_two_workers()``.
    The tests must use only network-level access (``make_user``, ports, ``server.storage`` via ``call``)."""
    import shutil
    import tempfile
    from pathlib import Path

    import pytest

    from rookery.testing import ProcessServer, RunningServer

    @pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-workers"])
    def rookery_server(request):
        d = tempfile.mkdtemp(prefix=prefix)
        s = (RunningServer({}, Path(d)) if request.param == 1 else ProcessServer({"workers": 2}, Path(d))).start()
        yield s
        s.stop()
        shutil.rmtree(d, ignore_errors=True)

    return rookery_server
