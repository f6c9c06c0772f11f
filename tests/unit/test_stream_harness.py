"""The c2s stream state machine driven in memory, byte by byte, over a fake ``Transport``: no sockets,
no server.  The host side (``C2SHost``) is a small fake that records what the stream asks of it."""

from __future__ import annotations

import asyncio
import base64
import inspect
from typing import Any
from xml.etree.ElementTree import Element, XMLPullParser

import pytest
from scramp import ScramClient

from rookery.jid import JID
from rookery.stanza import Stanza
from rookery.streams.auth_limits import AuthFailureLimiter
from rookery.streams.bind import Bind
from rookery.streams.c2s import C2SStream
from rookery.streams.negotiator import Negotiators
from rookery.streams.sasl import make_credentials
from rookery.streams.sasl_auth import SASLAuth
from rookery.streams.session import Session
from rookery.streams.starttls import StartTLS
from rookery.streams.transport import StreamFramer
from rookery.streams.xmlstream import StreamLimits

DOMAIN = "example.org"
STREAM = "http://etherx.jabber.org/streams"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
HEADER = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{STREAM}' "
          f"to='{DOMAIN}' version='1.0'>")


class MemoryTransport:
    """A ``Transport`` that keeps what the stream writes; STARTTLS just flips ``is_secure``."""

    def __init__(self, secure: bool = False, starttls: bool = True) -> None:
        self.is_secure = secure
        self.peer_ip = "127.0.0.1"
        self.is_loopback = True
        self.cb_data: bytes | None = None
        self._starttls = starttls
        self.out = bytearray()
        self.closed = False
        self.paused = False
        self.stream: Any = None
        self._parser = XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.header: Element | None = None
        self.elements: list[Element] = []

    @property
    def can_starttls(self) -> bool:
        return self._starttls and not self.is_secure

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data
        self._parser.feed(data)
        for event, el in self._parser.read_events():
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self.header = el
            else:
                self._depth -= 1
                if self._depth == 1:
                    self.elements.append(el)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def authenticated(self) -> None:
        self.authed = True

    write_blocked = False

    async def writable(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    async def start_tls(self) -> None:
        self.is_secure = True

    def new_document(self) -> None:
        """The server starts a new stream (after STARTTLS or SASL): parse its output afresh."""
        self._parser = XMLPullParser(events=("start", "end"))
        self._depth = 0

    # -- the client side -----------------------------------------------------------------------
    def feed(self, data: str, bytewise: bool = True) -> None:
        raw = data.encode()
        if bytewise:
            for i in range(len(raw)):
                self.stream.data_received(raw[i:i + 1])
        else:
            self.stream.data_received(raw)

    def take(self) -> list[Element]:
        out, self.elements = self.elements, []
        return out


class Settings:
    require_encryption = False
    allow_plaintext_auth = True


class FakeHost:
    def __init__(self) -> None:
        self.users = {"juliet": make_credentials("s3cret", iterations=4096)}
        self.routed: list[Stanza] = []
        self.sessions: dict[str, Session] = {}
        self.handlers: dict[str, Any] = {}
        self.features_hook: Any = None
        self.pre_auth_features_hook: Any = None
        self.keep_sessions = False
        self.ended: list[tuple[C2SStream, Session | None]] = []
        self.filters: list[Any] = []

    # CredentialSource
    async def get_credentials(self, host: str, user: str) -> Any:
        return self.users.get(user) if host == DOMAIN else None

    # C2SHost
    def serves(self, domain: str) -> bool:
        return domain == DOMAIN

    @property
    def default_domain(self) -> str:
        return DOMAIN

    def element_handler(self, tag: str) -> Any:
        return self.handlers.get(tag)

    def stream_features(self, stream: C2SStream, features: Element) -> Any:
        # like Server: "stream-features" once authenticated, "stream-features-pre-auth" before
        hook = self.features_hook if stream.authenticated else self.pre_auth_features_hook
        r = hook(features) if hook else None
        return r if inspect.isawaitable(r) else None

    def bind(self, stream: C2SStream, username: str, resource: str) -> Session:
        s = Session(JID(username, stream.local_domain, resource), self.filters)
        self.sessions[s.jid.full] = s
        s.attach(stream)
        return s

    def route(self, st: Stanza) -> None:
        self.routed.append(st)

    def stream_started(self, stream: C2SStream) -> None:
        pass

    def stream_ended(self, stream: C2SStream, session: Session | None) -> None:
        self.ended.append((stream, session))
        if session is not None:
            if self.keep_sessions:
                session.detach()
            else:
                session.ended = True
                self.sessions.pop(session.jid.full, None)

    def spawn(self, coro: Any) -> Any:
        return asyncio.ensure_future(coro)


def new_stream(host: FakeHost, transport: MemoryTransport | None = None,
               limits: StreamLimits | None = None) -> tuple[C2SStream, MemoryTransport]:
    t = transport or MemoryTransport()
    negotiators = Negotiators([StartTLS(), SASLAuth(host, AuthFailureLimiter(100, 60), 0.01, b"k" * 32), Bind()])
    s = C2SStream(host, t, StreamFramer(), Settings(), limits or StreamLimits(), negotiators)
    t.stream = s
    return s, t


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


async def scram_login(t: MemoryTransport, user: str = "juliet", password: str = "s3cret") -> list[Element]:
    """SCRAM-SHA-256 (RFC 5802) through the stream, each message fed one byte at a time; returns the
    features of the restarted stream."""
    c = ScramClient(["SCRAM-SHA-256"], user, password)
    first = base64.b64encode(c.get_client_first().encode()).decode()
    t.feed(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
    await settle()
    (challenge,) = t.take()
    assert challenge.tag == f"{{{SASL}}}challenge", challenge.tag
    c.set_server_first(base64.b64decode(challenge.text or "").decode())
    final = base64.b64encode(c.get_client_final().encode()).decode()
    t.feed(f"<response xmlns='{SASL}'>{final}</response>")
    await settle()
    (success,) = t.take()
    assert success.tag == f"{{{SASL}}}success"
    c.set_server_final(base64.b64decode(success.text or "").decode())  # verifies the server
    t.new_document()
    t.feed(HEADER)
    await settle()
    return t.take()


async def bind(t: MemoryTransport, resource: str = "balcony") -> str:
    t.feed(f"<iq type='set' id='b1'><bind xmlns='{BIND}'><resource>{resource}</resource></bind></iq>")
    await settle()
    (result,) = t.take()
    assert result.get("type") == "result", result.attrib
    return result.findtext(f".//{{{BIND}}}jid") or ""


async def test_a_login_fed_one_byte_at_a_time_binds_and_routes():
    host = FakeHost()
    stream, t = new_stream(host)
    t.feed(HEADER)
    assert t.header is not None and t.header.get("from") == DOMAIN and t.header.get("id")
    (features,) = t.take()
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is not None
    mechs = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
    assert "SCRAM-SHA-256" in mechs and "PLAIN" in mechs  # loopback + allow_plaintext_auth
    (features,) = await scram_login(t)
    assert features.find(f"{{{BIND}}}bind") is not None
    assert features.find(f"{{{SASL}}}mechanisms") is None  # §6.4.6: no SASL after success
    full = await bind(t)
    assert full == "juliet@example.org/balcony" and stream.session is host.sessions[full]
    assert stream.session.stream is stream
    t.feed("<message to='romeo@example.net' from='juliet@example.org'><body>hi</body></message>")
    (st,) = host.routed
    assert st.el.get("from") == full and st.to == JID.parse("romeo@example.net") and st.origin is stream.session


async def test_wrong_password_is_not_authorized_after_a_delay():
    host = FakeHost()
    stream, t = new_stream(host)
    t.feed(HEADER)
    t.take()
    token = base64.b64encode(b"\0juliet\0wrong").decode()
    t.feed(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>", bytewise=False)
    await asyncio.sleep(0.05)
    (failure,) = t.take()
    assert failure.tag == f"{{{SASL}}}failure" and failure.find(f"{{{SASL}}}not-authorized") is not None
    assert not stream.authenticated and not t.closed


async def test_starttls_restarts_the_stream_and_then_offers_no_starttls():
    host = FakeHost()
    stream, t = new_stream(host)
    t.feed(HEADER)
    t.take()
    t.feed("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    (proceed,) = t.take()
    assert proceed.tag == "{urn:ietf:params:xml:ns:xmpp-tls}proceed"
    await settle()
    assert t.is_secure
    t.new_document()
    t.feed(HEADER)
    (features,) = t.take()
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    assert features.find(f"{{{SASL}}}mechanisms") is not None


async def test_async_stream_features_are_written_complete_and_later_elements_wait():
    host = FakeHost()

    async def slow_feature(features: Element) -> Element:
        await asyncio.sleep(0.05)
        features.append(Element("{urn:test}slow"))
        return features

    host.features_hook = slow_feature
    stream, t = new_stream(host)
    t.feed(HEADER)
    t.take()
    c = ScramClient(["SCRAM-SHA-256"], "juliet", "s3cret")
    t.feed(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{base64.b64encode(c.get_client_first().encode()).decode()}</auth>")
    await settle()
    (challenge,) = t.take()
    c.set_server_first(base64.b64decode(challenge.text or "").decode())
    t.feed(f"<response xmlns='{SASL}'>{base64.b64encode(c.get_client_final().encode()).decode()}</response>")
    await settle()
    t.take()
    t.new_document()
    # the new header and the bind request in one chunk: bind must wait for the features
    t.feed(HEADER + f"<iq type='set' id='b1'><bind xmlns='{BIND}'/></iq>", bytewise=False)
    assert t.take() == [] and t.paused
    await asyncio.sleep(0.1)
    features, result = t.take()
    assert features.tag == f"{{{STREAM}}}features" and features.find("{urn:test}slow") is not None
    assert features.find(f"{{{BIND}}}bind") is not None
    assert result.get("id") == "b1" and result.get("type") == "result" and not t.paused


async def test_non_stanza_elements_go_to_registered_handlers_before_and_after_bind():
    host = FakeHost()
    seen: list[tuple[str, bool]] = []

    def handler(stream: C2SStream, el: Element) -> None:
        seen.append((el.tag, stream.session is not None))
        stream.send(Element("{urn:test}a", h=str(len(seen))))

    host.handlers["{urn:test}r"] = handler
    stream, t = new_stream(host)
    t.feed(HEADER)
    t.take()
    t.feed("<r xmlns='urn:test'/>")
    assert [a.get("h") for a in t.take()] == ["1"]
    await scram_login(t)
    await bind(t)
    t.feed("<r xmlns='urn:test'/>")
    assert seen == [("{urn:test}r", False), ("{urn:test}r", True)]
    assert [a.get("h") for a in t.take()] == ["2"]
    t.feed("<zzz xmlns='urn:test'/>")
    (err,) = t.take()
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}unsupported-stanza-type") is not None and t.closed


async def test_a_detached_session_queues_and_resumes_on_another_stream():
    host = FakeHost()
    host.keep_sessions = True
    stream1, t1 = new_stream(host)
    t1.feed(HEADER)
    t1.take()
    await scram_login(t1)
    full = await bind(t1)
    session = host.sessions[full]
    stream1.connection_lost()  # the connection is gone; the host keeps the session
    assert host.ended == [(stream1, session)] and session.stream is None and not session.ended
    session.send(Element("message", {"to": full, "id": "m1"}))
    session.send(Element("message", {"to": full, "id": "m2"}))
    assert session.queued == 2 and t1.take() == []
    stream2, t2 = new_stream(host)
    t2.feed(HEADER)
    t2.take()
    await scram_login(t2)
    stream2.resume(session)
    assert [m.get("id") for m in t2.take()] == ["m1", "m2"]
    session.send(Element("message", {"to": full, "id": "m3"}))
    assert [m.get("id") for m in t2.take()] == ["m3"] and host.sessions[full] is session
    # stanzas from the new stream carry the same session
    t2.feed("<message to='romeo@example.net'><body>back</body></message>")
    assert host.routed[-1].origin is session and host.routed[-1].el.get("from") == full
    # a session can be resumed by its own account only
    stream3, t3 = new_stream(host)
    t3.feed(HEADER)
    t3.take()
    await scram_login(t3)
    with pytest.raises(ValueError):
        stream3.resume(session)  # attached to stream2


@pytest.mark.parametrize(
    "header, condition",
    [
        (HEADER.replace("jabber:client", "jabber:server"), "invalid-namespace"),
        (HEADER.replace(f"to='{DOMAIN}'", "to='elsewhere.example'"), "host-unknown"),
        (HEADER.replace(f"to='{DOMAIN}'", ""), "improper-addressing"),
        (HEADER.replace(" version='1.0'>", ">"), "unsupported-version"),
        ("<stream:stream xmlns:stream='urn:nope' xmlns='jabber:client' to='example.org' version='1.0'>",
         "invalid-namespace"),
    ],
)
async def test_bad_stream_headers_get_the_rfc_6120_stream_error(header, condition):
    host = FakeHost()
    stream, t = new_stream(host)
    t.feed(header)
    assert t.header is not None  # RFC 6120 §4.9.1.1: a header is sent before the error
    (err,) = t.take()
    assert err.tag == f"{{{STREAM}}}error" and err.find(f"{{urn:ietf:params:xml:ns:xmpp-streams}}{condition}") is not None
    assert t.closed and host.ended == [(stream, None)]


async def test_stanzas_before_binding_close_the_stream_not_authorized():
    host = FakeHost()
    stream, t = new_stream(host)
    t.feed(HEADER)
    t.take()
    t.feed("<message to='romeo@example.net'><body>too early</body></message>")
    (err,) = t.take()
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}not-authorized") is not None
    assert host.routed == [] and t.closed


async def test_handshake_timeout_closes_an_unbound_stream():
    host = FakeHost()
    stream, t = new_stream(host, limits=StreamLimits(handshake_timeout=0.05))
    t.feed(HEADER)
    t.take()
    await asyncio.sleep(0.1)
    (err,) = t.take()
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}connection-timeout") is not None and t.closed


async def test_not_well_formed_input_is_a_stream_error_not_an_exception():
    host = FakeHost()
    stream, t = new_stream(host)
    t.feed(HEADER)
    t.take()
    t.feed("<message><body>oops</message>", bytewise=False)
    (err,) = t.take()
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed") is not None and t.closed


async def test_a_pre_bind_iq_goes_to_the_element_handler_of_its_payload():
    """The seam of XEP-0077 §3.1: before authentication an iq no negotiator takes reaches the module
    handler registered for its payload's qualified name (with the whole <iq/>); an iq with another
    payload, or any message or presence, is still <not-authorized/>."""
    host = FakeHost()
    seen: list[tuple[str, bool]] = []

    def handler(stream: C2SStream, el: Element) -> None:
        seen.append((el.tag, stream.authenticated))
        stream.send(Element("iq", type="result", id=el.get("id", "")))

    host.handlers["{jabber:iq:register}query"] = handler
    stream, t = new_stream(host)
    t.feed(HEADER)
    t.take()
    t.feed("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
    (result,) = t.take()
    assert result.get("id") == "r1" and seen == [("iq", False)]
    t.feed("<iq type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
    (err,) = t.take()
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}not-authorized") is not None and t.closed

    for stanza in ("<message to='x@example.org'><query xmlns='jabber:iq:register'/></message>",
                   "<iq type='get' id='e'/>"):
        stream, t = new_stream(host)
        t.feed(HEADER)
        t.take()
        t.feed(stanza)
        (err,) = t.take()
        assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}not-authorized") is not None and t.closed
    assert seen == [("iq", False)]


async def test_features_before_authentication_come_from_the_pre_auth_fold_and_after_from_the_other():
    host = FakeHost()

    def pre(features: Element) -> Element:
        features.append(Element("{urn:test}pre"))
        return features

    def post(features: Element) -> Element:
        features.append(Element("{urn:test}post"))
        return features

    host.pre_auth_features_hook = pre
    host.features_hook = post
    stream, t = new_stream(host)
    t.feed(HEADER)
    (features,) = t.take()
    assert features.find("{urn:test}pre") is not None and features.find("{urn:test}post") is None
    assert features.find(f"{{{SASL}}}mechanisms") is not None
    (features,) = await scram_login(t)
    assert features.find("{urn:test}post") is not None and features.find("{urn:test}pre") is None
    assert features.find(f"{{{BIND}}}bind") is not None
