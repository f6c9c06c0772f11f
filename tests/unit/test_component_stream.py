"""The XEP-0114 component stream driven in memory, byte by byte, over the harness's fake ``Transport``
(``test_stream_harness.MemoryTransport``) with a fake ``ComponentHost``: no sockets, no server."""

from __future__ import annotations

from typing import Any

from test_stream_harness import MemoryTransport

from rookery.stanza import Stanza
from rookery.streams.component import ComponentStream, handshake_digest
from rookery.streams.transport import StreamFramer
from rookery.streams.xmlstream import StreamLimits

ACCEPT = "jabber:component:accept"
STREAM = "http://etherx.jabber.org/streams"
HEADER = f"<stream:stream xmlns='{ACCEPT}' xmlns:stream='{STREAM}' to='irc.example.org'>"


class FakeHost:
    default_domain = "example.org"

    def __init__(self) -> None:
        self.routed: list[Stanza] = []
        self.connected: list[ComponentStream] = []
        self.failures: list[str] = []
        self.streams: set[ComponentStream] = set()
        self.conflict = False

    def secret_of(self, domain: str) -> str | None:
        return "s3cret" if domain == "irc.example.org" else None

    def handshake_blocked(self, ip: str) -> bool:
        return len(self.failures) >= 3

    def handshake_failed(self, ip: str) -> None:
        self.failures.append(ip)

    def authenticated(self, stream: ComponentStream) -> tuple[str, str | None] | None:
        if self.conflict:
            return "conflict", None
        self.connected.append(stream)
        return None

    def route(self, st: Stanza) -> None:
        self.routed.append(st)

    def stream_started(self, stream: ComponentStream) -> None:
        self.streams.add(stream)

    def stream_ended(self, stream: ComponentStream) -> None:
        self.streams.discard(stream)

    def spawn(self, coro: Any) -> Any:
        raise AssertionError("nothing here is asynchronous")


def _stream(host: FakeHost) -> tuple[ComponentStream, MemoryTransport]:
    t = MemoryTransport()
    s = ComponentStream(host, t, StreamFramer(), StreamLimits())  # type: ignore[arg-type]
    t.stream = s
    return s, t


def _error(t: MemoryTransport) -> str:
    errs = [e for e in t.elements if e.tag == "{%s}error" % STREAM]
    assert errs and t.closed, [e.tag for e in t.elements]
    return errs[0][0].tag.split("}")[1]


async def test_handshake_fed_one_byte_at_a_time_then_stanzas_go_to_the_host():
    host = FakeHost()
    s, t = _stream(host)
    t.feed(HEADER)
    assert t.header is not None and t.header.get("from") == "irc.example.org"
    assert t.take() == []  # no stream features
    t.feed(f"<handshake>{handshake_digest(t.header.get('id'), 's3cret')}</handshake>")
    [hs] = t.take()
    assert hs.tag == "{%s}handshake" % ACCEPT and host.connected == [s] and s.negotiated()
    t.feed("<message from='bob%irc@irc.example.org/x' to='juliet@example.org'><body>hi</body></message>")
    [st] = host.routed
    assert st.kind == "message" and st.from_ is not None and st.from_.local == "bob%irc"
    assert st.origin is None and st.el.find("body") is not None  # the content namespace is stripped
    # out: the route's forward writes the stanza as it is
    s.forward(st)
    [out] = t.take()
    assert out.tag == "{%s}message" % ACCEPT and out.find("{%s}body" % ACCEPT).text == "hi"
    assert (s.stanzas_in, s.stanzas_out) == (1, 1)


async def test_wrong_handshakes_count_and_a_blocked_address_gets_policy_violation():
    host = FakeHost()
    for _ in range(3):
        s, t = _stream(host)
        t.feed(HEADER, bytewise=False)
        t.feed("<handshake>00</handshake>", bytewise=False)
        assert _error(t) == "not-authorized"
    s, t = _stream(host)
    t.feed(HEADER, bytewise=False)
    t.feed(f"<handshake>{handshake_digest(t.header.get('id'), 's3cret')}</handshake>", bytewise=False)
    assert _error(t) == "policy-violation" and host.connected == []


async def test_the_host_refusing_the_domain_is_the_stream_error_it_gives():
    host = FakeHost()
    host.conflict = True
    s, t = _stream(host)
    t.feed(HEADER, bytewise=False)
    t.feed(f"<handshake>{handshake_digest(t.header.get('id'), 's3cret')}</handshake>", bytewise=False)
    assert _error(t) == "conflict" and not s.authenticated and s not in host.streams
