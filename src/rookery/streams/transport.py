"""The two seams under every XML stream (docs/architecture.md): ``Transport`` carries bytes, ``Framer``
says how a stream opens, closes and restarts on that carrier.

* ``Transport``: TCP (``transports.tcp.StreamProtocol``: STARTTLS and XEP-0368 direct TLS),
  WebSocket (RFC 7395, ``transports.websocket``) and BOSH (XEP-0124/0206, ``transports.bosh``).
  Streams never see a socket.
* ``Framer``: RFC 6120 §4.7 ``<stream:stream>`` framing is ``StreamFramer`` below; RFC 7395 §3.3
  ``<open/>``/``<close/>`` and the BOSH ``<body/>`` are in ``streams.framing``.  A framer builds the parser
  for each (re)started stream and turns outbound elements into bytes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol
from xml.etree.ElementTree import Element

from ..xml import StreamParser, ns
from ..xml.serializer import escape_attr, escape_text, serialize

_STREAM_TAG = "{%s}stream" % ns.STREAM

OnOpen = Callable[[Element, dict[str, str]], None]
OnElement = Callable[[Element], None]
OnClose = Callable[[], None]


class Transport(Protocol):
    """Bytes in and out of one connection.  Incoming bytes reach the stream through the stream's
    ``data_received``; ``connection_lost`` tells it the carrier is gone."""

    is_secure: bool  # TLS is established (RFC 6120 §5)
    peer_ip: str
    is_loopback: bool
    cb_data: bytes | None  # RFC 5929 tls-server-end-point channel binding data, when TLS is possible

    @property
    def can_starttls(self) -> bool:
        """STARTTLS can be offered on this carrier (not yet secure, a TLS context is configured)."""
        ...

    def write(self, data: bytes) -> None: ...

    def authenticated(self) -> None:
        """The peer authenticated (connection limits stop counting it as unauthenticated)."""
        ...

    @property
    def write_blocked(self) -> bool:
        """Over the send-buffer mark: the peer does not read; take no more work from it."""
        ...

    async def writable(self) -> None:
        """Until ``write_blocked`` is over (or the connection is gone)."""
        ...

    def close(self) -> None:
        """Flush what is pending, then close."""
        ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    async def start_tls(self) -> None:
        """RFC 6120 §5.4.3.3: the TLS handshake on this connection (after ``<proceed/>``)."""
        ...


class FeedParser(Protocol):
    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Framer(Protocol):
    """How a stream opens, closes, restarts and frames elements on one carrier."""

    def new_parser(self, on_open: OnOpen, on_element: OnElement, on_close: OnClose, content_ns: str,
                   max_stanza_size: int, max_depth: int) -> FeedParser:
        """A parser for a new stream (at connect and at each restart, RFC 6120 §4.3.3)."""
        ...

    def check_open(self, root: Element, nsmap: dict[str, str], content_ns: str) -> tuple[str, str | None] | None:
        """Is the peer's opening element this framing's stream header in ``content_ns``?  A stream
        error ``(condition, text)`` when not (RFC 6120 §4.9.3.10 invalid-namespace)."""
        ...

    def open(self, content_ns: str, stream_id: str, from_: str, to: str | None,
             extra_ns: dict[str, str] | None = None) -> bytes:
        """The response stream header (RFC 6120 §4.7); ``extra_ns`` declares more prefixes
        (``{"db": "jabber:server:dialback"}`` for XEP-0220)."""
        ...

    def close(self) -> bytes:
        """The closing tag (RFC 6120 §4.4)."""
        ...

    def error(self, condition: str, text: str | None) -> bytes:
        """A stream error (RFC 6120 §4.9), not including ``close()``."""
        ...

    #: one top-level element (stanza, features, negotiation element) as the text of a frame; what
    #: ``xml.serialize`` gives for RFC 6120 framing (stanzas inherit the header's namespace), a
    #: self-contained element (with ``xmlns``) for RFC 7395.  An attribute, not a method: the stream
    #: calls it directly on the hot path.  Elements serialized once for many streams (``send_data``)
    #: come from ``xml.serialize``; a framer whose ``serialize`` differs also has an ``adapt(str) ->
    #: str`` attribute that turns that text into its own (``streams.framing``).
    serialize: Callable[[Element], str]


def new_stream_id() -> str:
    """RFC 6120 §4.7.3: unique and unpredictable."""
    return secrets.token_hex(8)


class StreamFramer:
    """RFC 6120 §4 framing over a byte stream (TCP): ``<stream:stream>`` … ``</stream:stream>``.

    Stanzas inherit the content namespace from the header, so they are written with no ``xmlns``."""

    __slots__ = ("serialize",)

    def __init__(self) -> None:
        self.serialize: Callable[[Element], str] = serialize

    def new_parser(self, on_open: OnOpen, on_element: OnElement, on_close: OnClose, content_ns: str,
                   max_stanza_size: int, max_depth: int) -> FeedParser:
        p = StreamParser(on_open, on_element, on_close, max_stanza_size=max_stanza_size, max_depth=max_depth)
        p.set_content_namespace(content_ns)
        return p

    def check_open(self, root: Element, nsmap: dict[str, str], content_ns: str) -> tuple[str, str | None] | None:
        if root.tag != _STREAM_TAG:
            return "invalid-namespace", "the root element must be <stream:stream>"
        if "" not in nsmap or nsmap[""] != content_ns:
            return "invalid-namespace", f"the content namespace must be {content_ns}"
        return None

    def open(self, content_ns: str, stream_id: str, from_: str, to: str | None,
             extra_ns: dict[str, str] | None = None) -> bytes:
        to_attr = f" to='{escape_attr(to)}'" if to else ""
        more = "".join(f" xmlns:{p}='{escape_attr(u)}'" for p, u in (extra_ns or {}).items())
        return (f"<?xml version='1.0'?><stream:stream xmlns='{content_ns}' xmlns:stream='{ns.STREAM}'{more} "
                f"id='{stream_id}' from='{escape_attr(from_)}'{to_attr} version='1.0' xml:lang='en'>").encode()

    def close(self) -> bytes:
        return b"</stream:stream>"

    def error(self, condition: str, text: str | None) -> bytes:
        t = f"<text xmlns='{ns.STREAMS_ERR}' xml:lang='en'>{escape_text(text)}</text>" if text else ""
        return f"<stream:error><{condition} xmlns='{ns.STREAMS_ERR}'/>{t}</stream:error>".encode()

