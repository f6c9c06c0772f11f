"""Framers for XMPP over HTTP (the ``Framer`` seam of ``streams.transport``): RFC 7395 WebSocket
framing and XEP-0206 BOSH.  Both carry the same ``XMLStream`` (and so the same c2s code) as TCP.

Message-oriented carriers: a framer for them ends every frame it produces (header, element, error,
close) with a NUL byte, which XML 1.0 never contains; the carrier (``transports/websocket.py``)
splits its writes there, one message per frame.  Whitespace between frames (the RFC 6120 §4.6.1
keepalive) is dropped by the carrier.

* ``WebSocketFramer`` (RFC 7395 §3.3): ``<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>`` and
  ``<close/>`` instead of ``<stream:stream>``; each message is one complete element carrying its own
  namespace declarations (``<message xmlns='jabber:client'>``, ``<stream:features
  xmlns:stream='…'>``).  A message that is not exactly one well-formed element is a stream error
  (``not-well-formed``, RFC 7395 §3.3.3).  A restart (after SASL, RFC 7395 §3.6) is a new ``<open/>``.
* ``BOSHFramer`` (XEP-0206): each HTTP request is one ``<body/>`` document; the session creation
  request (XEP-0124 §7.1) and an ``xmpp:restart='true'`` body (XEP-0206 §5) open the stream, the
  children of every body are the stream's top-level elements, ``type='terminate'`` closes it.  Our
  header is nothing on the wire: the carrier writes the session creation response.
"""

from __future__ import annotations

from collections.abc import Callable
from xml.etree.ElementTree import Element

from ..xml import StreamParser, XMLStreamError, ns
from ..xml.serializer import escape_attr, escape_text, serialize
from .transport import FeedParser, OnClose, OnElement, OnOpen

_OPEN = "{%s}open" % ns.FRAMING
_CLOSE = "{%s}close" % ns.FRAMING
_BODY = "{%s}body" % ns.HTTPBIND
_HTTPBIND = "{%s}" % ns.HTTPBIND
_RESTART = "{%s}restart" % ns.XBOSH
_XMPP_VERSION = "{%s}version" % ns.XBOSH
_STREAM_DECL = f" xmlns:stream='{ns.STREAM}'"
SEP = b"\x00"  # the end of a frame on message-oriented carriers


def self_contained(data: str, content_ns: str) -> str:
    """An element serialized by ``xml.serialize`` (which leaves the content namespace and the
    ``stream:`` prefix to the stream header) made to stand alone: the content namespace or the
    ``stream`` prefix declared on it (RFC 7395 §3.3.3, XEP-0206 §6)."""
    end = len(data)
    for c in " />":
        i = data.find(c, 1)
        if 0 < i < end:
            end = i
    if data.startswith("<stream:"):
        return data[:end] + _STREAM_DECL + data[end:]
    if data.startswith(" xmlns='", end):
        return data  # it declares its own namespace already
    return data[:end] + f" xmlns='{content_ns}'" + data[end:]


def _error(condition: str, text: str | None) -> str:
    t = f"<text xmlns='{ns.STREAMS_ERR}' xml:lang='en'>{escape_text(text)}</text>" if text else ""
    return f"<stream:error{_STREAM_DECL}><{condition} xmlns='{ns.STREAMS_ERR}'/>{t}</stream:error>"


# -- RFC 7395 ---------------------------------------------------------------------------------
class _FrameParser:
    """One WebSocket message in, one element out: a ``StreamParser`` inside a synthetic root, each
    message checked to hold exactly one complete element."""

    __slots__ = ("_p", "_on_open", "_on_element", "_on_close", "_opened", "_got", "_closed")

    def __init__(self, on_open: OnOpen, on_element: OnElement, on_close: OnClose, content_ns: str,
                 max_stanza_size: int, max_depth: int) -> None:
        self._on_open = on_open
        self._on_element = on_element
        self._on_close = on_close
        self._opened = False
        self._closed = False
        self._got: Element | None = None
        self._p = StreamParser(_ignore_open, self._element, _ignore_close, max_stanza_size=max_stanza_size,
                               max_depth=max_depth)
        self._p.set_content_namespace(content_ns)
        self._p.feed(b"<frames>")

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        data = data.strip()
        if not data.startswith(b"<") or not data.endswith(b">"):
            raise XMLStreamError("not-well-formed", "a WebSocket message must be one XML element")
        self._got = None
        self._p.feed(data)
        el = self._got
        if el is None or self._p.depth != 1:
            raise XMLStreamError("not-well-formed", "a WebSocket message must be one complete XML element")
        self._got = None  # checked whole before it takes effect
        tag = el.tag
        if tag == _CLOSE:
            self._closed = True
            self._p.close()
            self._on_close()
        elif not self._opened:
            self._opened = True
            self._on_open(el, {"": el.tag[1:].partition("}")[0]} if el.tag[:1] == "{" else {})
        elif tag == _OPEN:
            raise XMLStreamError("invalid-xml", "the stream is already open")
        else:
            self._on_element(el)

    def _element(self, el: Element) -> None:
        if self._got is not None:
            raise XMLStreamError("not-well-formed", "a WebSocket message must be one XML element")
        self._got = el

    def close(self) -> None:
        self._closed = True
        self._p.close()


def _ignore_open(root: Element, nsmap: dict[str, str]) -> None:
    pass


def _ignore_close() -> None:
    pass


class WebSocketFramer:
    """RFC 7395 framing: one per connection."""

    __slots__ = ("serialize", "adapt", "content_ns")

    def __init__(self, content_ns: str = ns.CLIENT) -> None:
        self.content_ns = content_ns
        self.adapt: Callable[[str], str] = self._adapt
        self.serialize: Callable[[Element], str] = self._serialize

    def _adapt(self, data: str) -> str:
        return self_contained(data, self.content_ns) + "\x00"

    def _serialize(self, el: Element) -> str:
        return self_contained(serialize(el), self.content_ns) + "\x00"

    def new_parser(self, on_open: OnOpen, on_element: OnElement, on_close: OnClose, content_ns: str,
                   max_stanza_size: int, max_depth: int) -> FeedParser:
        self.content_ns = content_ns
        return _FrameParser(on_open, on_element, on_close, content_ns, max_stanza_size, max_depth)

    def check_open(self, root: Element, nsmap: dict[str, str], content_ns: str) -> tuple[str, str | None] | None:
        if root.tag != _OPEN:
            return "invalid-namespace", f"the first element must be <open xmlns='{ns.FRAMING}'/>"
        return None

    def open(self, content_ns: str, stream_id: str, from_: str, to: str | None,
             extra_ns: dict[str, str] | None = None) -> bytes:
        to_attr = f" to='{escape_attr(to)}'" if to else ""
        return (f"<open xmlns='{ns.FRAMING}' id='{stream_id}' from='{escape_attr(from_)}'{to_attr} "
                f"version='1.0' xml:lang='en'/>\x00").encode()

    def close(self) -> bytes:
        return f"<close xmlns='{ns.FRAMING}'/>\x00".encode()

    def error(self, condition: str, text: str | None) -> bytes:
        return (_error(condition, text) + "\x00").encode()


# -- XEP-0206 ---------------------------------------------------------------------------------
class BodyError(ValueError):
    """A request body that is not one well-formed ``<body/>`` (XEP-0124 ``bad-request``)."""


def parse_body(data: bytes, max_size: int = 1 << 20) -> dict[str, str]:
    """The attributes of a BOSH request body (Clark names for namespaced ones), after checking the
    whole request is one well-formed, restricted ``<body xmlns='http://jabber.org/protocol/httpbind'/>``
    (no DTD, comments or processing instructions: the c2s parser's rules).  ``BodyError`` if not."""
    attrs: dict[str, str] = {}
    state = {"root": False, "closed": False}

    def on_open(root: Element, nsmap: dict[str, str]) -> None:
        if root.tag != _BODY:
            raise BodyError(f"the request must be <body xmlns='{ns.HTTPBIND}'/>")
        state["root"] = True
        attrs.update(root.attrib)

    def on_close() -> None:
        state["closed"] = True

    p = StreamParser(on_open, _drop, on_close, max_stanza_size=max_size, max_depth=32)
    try:
        p.feed(data)
    except XMLStreamError as e:
        raise BodyError(e.text or e.condition) from None
    if not state["closed"]:
        raise BodyError("the request body is not one complete <body/> element")
    return attrs


def _drop(el: Element) -> None:
    pass


def _to_content_ns(el: Element, content_ns: str) -> None:
    """A stanza that inherited the ``<body/>``'s namespace (no ``xmlns`` of its own) is a
    ``jabber:client`` stanza (XEP-0206 §6): written without namespace, like the parser's output."""
    tag = el.tag
    if tag.startswith(_HTTPBIND):
        el.tag = tag[len(_HTTPBIND):]
        for child in el:
            _to_content_ns(child, content_ns)


class _BodyParser:
    """One ``<body/>`` per ``feed``.  A stream opens on the session creation body (no ``sid``) or an
    ``xmpp:restart='true'`` body; other bodies before that carry nothing for this stream."""

    __slots__ = ("_on_open", "_on_element", "_on_close", "_content_ns", "_max_size", "_max_depth",
                 "_opened", "_closed", "_terminate")

    def __init__(self, on_open: OnOpen, on_element: OnElement, on_close: OnClose, content_ns: str,
                 max_stanza_size: int, max_depth: int) -> None:
        self._on_open = on_open
        self._on_element = on_element
        self._on_close = on_close
        self._content_ns = content_ns
        self._max_size = max_stanza_size
        self._max_depth = max_depth
        self._opened = False
        self._closed = False
        self._terminate = False

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        self._terminate = False
        p = StreamParser(self._body, self._element, self._end, max_stanza_size=self._max_size,
                         max_depth=self._max_depth)
        p.set_content_namespace(self._content_ns)
        p.feed(data)

    def _body(self, body: Element, nsmap: dict[str, str]) -> None:
        self._terminate = body.get("type") == "terminate"
        if self._opened:
            return
        if body.get("sid") is not None and body.get(_RESTART) != "true":
            return  # e.g. an empty request between SASL success and the restart
        self._opened = True
        header = Element("{%s}stream" % ns.STREAM)
        for k, v in body.attrib.items():
            if k in ("to", "from", ns.XML_LANG):
                header.set(k, v)
        version = body.get(_XMPP_VERSION)
        if version is None and body.get(_RESTART) == "true":
            version = "1.0"  # XEP-0206 §5: a restart repeats no version; SASL happened, so it is 1.0
        if version is not None:
            header.set("version", version)
        self._on_open(header, {"": self._content_ns, "stream": ns.STREAM})

    def _element(self, el: Element) -> None:
        if self._closed:
            return
        if not self._opened:
            raise XMLStreamError("invalid-xml", "stanzas before the stream (re)start")
        _to_content_ns(el, self._content_ns)
        self._on_element(el)

    def _end(self) -> None:
        if self._terminate and not self._closed:
            self._closed = True
            self._on_close()

    def close(self) -> None:
        self._closed = True


class BOSHFramer:
    """XEP-0206 framing: one per BOSH session.  ``stream_id`` and ``domain`` are what the carrier
    puts in the session creation response (``authid``, ``from``)."""

    __slots__ = ("serialize", "adapt", "content_ns", "stream_id", "domain")

    def __init__(self, content_ns: str = ns.CLIENT) -> None:
        self.content_ns = content_ns
        self.stream_id = ""
        self.domain = ""
        self.adapt: Callable[[str], str] = self._adapt
        self.serialize: Callable[[Element], str] = self._serialize

    def _adapt(self, data: str) -> str:
        return self_contained(data, self.content_ns)

    def _serialize(self, el: Element) -> str:
        return self_contained(serialize(el), self.content_ns)

    def new_parser(self, on_open: OnOpen, on_element: OnElement, on_close: OnClose, content_ns: str,
                   max_stanza_size: int, max_depth: int) -> FeedParser:
        self.content_ns = content_ns
        return _BodyParser(on_open, on_element, on_close, content_ns, max_stanza_size, max_depth)

    def check_open(self, root: Element, nsmap: dict[str, str], content_ns: str) -> tuple[str, str | None] | None:
        return None  # the header is made from the <body/>'s attributes by _BodyParser

    def open(self, content_ns: str, stream_id: str, from_: str, to: str | None,
             extra_ns: dict[str, str] | None = None) -> bytes:
        self.stream_id = stream_id
        self.domain = from_
        return b""

    def close(self) -> bytes:
        return b""  # the carrier ends the session with <body type='terminate'/>

    def error(self, condition: str, text: str | None) -> bytes:
        return _error(condition, text).encode()
