"""XEP-0065 SOCKS5 Bytestreams proxy against a real server: a file transfer between two slixmpp
clients through ``proxy.localhost``, raw SOCKS5 clients (RFC 1928) with the activation iq from the
initiator's own XMPP session, and the bad cases — malformed hashes, activation by someone other than
the initiator or with one party missing, connections that never activate, the per-user limit."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest
from xmpp_helpers import RawClient, disconnect, error_condition, slix_client, tls_login

from rookery.jid import JID
from rookery.stanza import Stanza, StanzaError
from rookery.testing import RunningServer

NS = "http://jabber.org/protocol/bytestreams"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
LIMIT = 2
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    d = tempfile.mkdtemp(prefix="rookery-test-")
    s = RunningServer({"proxy65": {"listen": ["127.0.0.1:0"], "activation_timeout": TIMEOUT,
                                   "max_transfers_per_user": LIMIT}}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def _port(server: RunningServer) -> int:
    return server.server.modules.modules["proxy65"].addresses[0][1]


async def socks_connect(port: int, dest: bytes, *, methods: bytes = b"\x00", atyp: int = 3,
                        dst_port: int = 0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A SOCKS5 CONNECT; returns the streams and the reply code (-1: method refused)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(bytes((5, len(methods))) + methods)
    ver, method = await asyncio.wait_for(reader.readexactly(2), 3)
    if method == 0xFF:
        return reader, writer, -1
    assert (ver, method) == (5, 0)
    addr = bytes((len(dest),)) + dest if atyp == 3 else dest
    writer.write(bytes((5, 1, 0, atyp)) + addr + struct.pack("!H", dst_port))
    head = await asyncio.wait_for(reader.readexactly(4), 3)
    if head[1] == 0:
        n = (await reader.readexactly(1))[0]
        bnd = await reader.readexactly(n + 2)
        assert bnd[:n] == dest and bnd[n:] == b"\x00\x00"  # §6.3.3: BND = DST
    return reader, writer, head[1]


def dest_hash(sid: str, requester: str, target: str) -> bytes:
    return hashlib.sha1(f"{sid}{requester}{target}".encode()).hexdigest().encode()


async def _activate(c: RawClient, sid: str, target: str, iq_id: str = "act") -> Element:
    return await c.iq(f"<iq type='set' id='{iq_id}' to='proxy.localhost'><query xmlns='{NS}' sid='{sid}'>"
                      f"<activate>{target}</activate></query></iq>")


async def _pair(server: RunningServer, sid: str, initiator: RawClient, target: RawClient):  # noqa: ANN202
    dest = dest_hash(sid, initiator.jid, target.jid)
    t = await socks_connect(_port(server), dest)
    i = await socks_connect(_port(server), dest)
    assert t[2] == 0 and i[2] == 0
    return i, t


async def _users(server: RunningServer) -> tuple[RawClient, RawClient]:
    a, pa = server.make_user()
    b, pb = server.make_user()
    return await tls_login(server, a, pa, "ini"), await tls_login(server, b, pb, "tgt")


async def test_disco_and_streamhost_discovery(server) -> None:
    a, b = await _users(server)
    info = await a.iq(f"<iq type='get' id='d' to='proxy.localhost'><query xmlns='{DISCO_INFO}'/></iq>")
    ident = info.find(f".//{{{DISCO_INFO}}}identity")
    assert ident is not None and (ident.get("category"), ident.get("type")) == ("proxy", "bytestreams")
    assert NS in {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    r = await a.iq(f"<iq type='get' id='q' to='proxy.localhost'><query xmlns='{NS}'/></iq>")
    sh = r.find(f".//{{{NS}}}streamhost")
    assert sh is not None and sh.attrib == {"jid": "proxy.localhost", "host": "127.0.0.1", "port": str(_port(server))}
    await a.close()
    await b.close()


async def test_slixmpp_file_transfer_through_the_proxy_is_byte_identical(server) -> None:
    ja, pa = server.make_user()
    jb, pb = server.make_user()
    a = await slix_client(server, ja, pa, plugins=("xep_0030", "xep_0065"), presence=False)
    b = await slix_client(server, jb, pb, plugins=("xep_0030", "xep_0065"), presence=False)
    b.plugin["xep_0065"].auto_accept = True
    received = bytearray()
    done = asyncio.get_running_loop().create_future()
    data = os.urandom(1024 * 1024)

    def on_data(chunk: bytes) -> None:
        received.extend(chunk)
        if len(received) >= len(data) and not done.done():
            done.set_result(True)

    b.add_event_handler("socks5_data", on_data)
    try:
        sock = await asyncio.wait_for(a.plugin["xep_0065"].handshake(b.boundjid.full), 10)
        assert sock is not None
        assert [p for p in a.plugin["xep_0065"]._proxies] == ["proxy.localhost"]
        await sock.write(data)
        await asyncio.wait_for(done, 10)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    finally:
        await disconnect(a, b)


async def test_raw_socks5_relay_both_ways_after_activation(server) -> None:
    a, b = await _users(server)
    (ir, iw, _), (tr, tw, _) = await _pair(server, "s1", a, b)
    r = await _activate(a, "s1", b.jid)
    assert r.get("type") == "result", r.attrib
    payload = os.urandom(3 * 1024 * 1024)  # more than the proxy's buffers: flow control at work
    iw.write(payload)
    got = await asyncio.wait_for(tr.readexactly(len(payload)), 10)
    assert got == payload
    tw.write(b"thanks")
    assert await asyncio.wait_for(ir.readexactly(6), 3) == b"thanks"
    iw.close()  # one side closes: the other is closed too
    assert await asyncio.wait_for(tr.read(), 3) == b""
    tw.close()
    await a.close()
    await b.close()


async def test_malformed_requests_get_a_socks5_failure(server) -> None:
    port = _port(server)
    _, w, code = await socks_connect(port, b"a" * 40, methods=b"\x02")  # username/password only
    assert code == -1
    w.close()
    for dest, kw in ((b"not-a-sha1-hash", {}), (b"A" * 40, {}), (b"a" * 40, {"dst_port": 80}),
                     (b"\x7f\x00\x00\x01", {"atyp": 1})):
        r, w, code = await socks_connect(port, dest, **kw)
        assert code != 0, dest
        assert await asyncio.wait_for(r.read(), 3) in (b"", b"\x00" * 6)  # then closed
        w.close()


async def test_third_connection_with_a_hash_is_refused(server) -> None:
    a, b = await _users(server)
    (_, iw, _), (_, tw, _) = await _pair(server, "s3", a, b)
    _, w, code = await socks_connect(_port(server), dest_hash("s3", a.jid, b.jid))
    assert code == 2
    for x in (iw, tw, w):
        x.close()
    await a.close()
    await b.close()


async def test_activation_by_a_non_initiator_is_refused(server) -> None:
    a, b = await _users(server)
    (ir, iw, _), (tr, tw, _) = await _pair(server, "s4", a, b)
    for who, target in ((b, a.jid), (b, b.jid)):  # the target's hash never matches the initiator's
        r = await _activate(who, "s4", target)
        assert error_condition(r) == "item-not-found"
    r = await _activate(a, "other-sid", b.jid)  # a wrong sid: a wrong hash
    assert error_condition(r) == "item-not-found"
    # nothing is relayed; the initiator can still activate
    tw.write(b"early")
    assert (await _activate(a, "s4", b.jid)).get("type") == "result"
    iw.write(b"x")
    assert await asyncio.wait_for(tr.readexactly(1), 3) == b"x"
    iw.close()
    tw.close()
    await a.close()
    await b.close()


async def test_activation_with_one_party_connected_is_not_allowed(server) -> None:
    a, b = await _users(server)
    _, w, code = await socks_connect(_port(server), dest_hash("s5", a.jid, b.jid))
    assert code == 0
    r = await _activate(a, "s5", b.jid)
    assert error_condition(r) == "not-allowed"
    r = await a.iq(f"<iq type='set' id='bad' to='proxy.localhost'><query xmlns='{NS}'/></iq>")
    assert error_condition(r) == "bad-request"
    w.close()
    await a.close()
    await b.close()


async def test_connection_never_activated_is_closed_after_the_timeout(server) -> None:
    a, b = await _users(server)
    (ir, iw, _), (tr, tw, _) = await _pair(server, "s6", a, b)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await asyncio.wait_for(ir.read(), TIMEOUT + 3) == b""
    assert await asyncio.wait_for(tr.read(), 3) == b""
    assert TIMEOUT - 0.2 <= loop.time() - t0 <= TIMEOUT + 2
    assert error_condition(await _activate(a, "s6", b.jid)) == "item-not-found"
    iw.close()
    tw.close()
    await a.close()
    await b.close()


async def test_per_user_limit_on_concurrent_transfers(server) -> None:
    a, b = await _users(server)
    pairs = []
    for n in range(LIMIT):
        pairs.append(await _pair(server, f"lim{n}", a, b))
        assert (await _activate(a, f"lim{n}", b.jid, f"a{n}")).get("type") == "result"
    extra = await _pair(server, "lim-x", a, b)
    r = await _activate(a, "lim-x", b.jid, "ax")
    assert error_condition(r) == "resource-constraint"
    # another user is not affected
    c, d = await _users(server)
    other = await _pair(server, "o1", c, d)
    assert (await _activate(c, "o1", d.jid, "o1")).get("type") == "result"
    # when one of a's transfers ends, a may start another
    (_, iw, _), (tr, tw, _) = pairs[0]
    iw.close()
    assert await asyncio.wait_for(tr.read(), 3) == b""
    await asyncio.sleep(0.1)
    assert (await _activate(a, "lim-x", b.jid, "ay")).get("type") == "result"
    for (_, w1, _), (_, w2, _) in [*pairs, extra, other]:
        w1.close()
        w2.close()
    for x in (a, b, c, d):
        await x.close()


def test_non_local_entities_are_forbidden(server) -> None:
    mod = server.server.modules.modules["proxy65"]
    frm = JID.parse("eve@elsewhere.example/r")
    el = Element("iq", {"type": "get", "id": "x", "to": "proxy.localhost"})
    el.append(Element(f"{{{NS}}}query"))

    async def ask() -> str:
        try:
            mod.discover(Stanza(el, frm, JID.parse("proxy.localhost")))
        except StanzaError as e:
            return e.condition
        return "answered"

    assert server.call(ask) == "forbidden"


def test_stopping_the_module_closes_its_listener_and_connections(rookery_server_factory) -> None:
    server = rookery_server_factory()
    port = _port(server)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w, code = await socks_connect(port, b"b" * 40)
        assert code == 0
        return r, w

    async def go() -> None:
        r, w = await connect()
        await asyncio.get_running_loop().run_in_executor(
            None, server.call, server.server.modules.stop_module, "proxy65")
        assert await asyncio.wait_for(r.read(), 3) == b""
        w.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(go())
