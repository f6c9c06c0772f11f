"""The XML stream of RFC 6120 §4, one per connection, whatever its kind and carrier.

``XMLStream`` owns the stream's life: the header exchange (§4.7), restarts (§4.3.3), stream errors
(§4.9), the closing handshake (§4.4), the handshake timeout, and the order in which top-level
elements take effect.  It writes through a ``Transport`` and frames through a ``Framer``
(``streams.transport``), so the same stream runs over TCP, WebSocket or BOSH.  Stream kinds
(c2s now; s2s-in, s2s-out and component next) subclass it: the content namespace is a class
attribute, never a literal in the code, and a kind says what a header must carry (``opened``), which
features it offers (``features``) and what each element means (``process``).

Ordering: elements are processed one at a time.  When processing is asynchronous (storage), reading
pauses and later elements wait, so a peer's stanzas take effect in the order sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from inspect import iscoroutine
from typing import Any, ClassVar
from xml.etree.ElementTree import Element

from ..xml import XMLStreamError, ns
from .transport import FeedParser, Framer, Transport, new_stream_id

log = logging.getLogger(__name__)

Spawn = Callable[[Awaitable[Any]], Any]


class StreamLimits:
    """Per-stream limits (RFC 6120 §13.12): stanza size, nesting depth, handshake time."""

    __slots__ = ("max_stanza_size", "max_depth", "handshake_timeout")

    def __init__(self, max_stanza_size: int = 262144, max_depth: int = 32, handshake_timeout: float = 60.0) -> None:
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self.handshake_timeout = handshake_timeout


class XMLStream:
    """RFC 6120 §4: one XML stream (restarted in place after STARTTLS and SASL)."""

    __slots__ = ("transport", "framer", "limits", "spawn", "stream_id", "local_domain", "lang", "header_sent",
                 "closed", "lost", "_ended", "_queue", "parser", "_timeout", "_serialize", "out_counts",
                 "_adapt")

    #: RFC 6120 §4.8.2 content namespace of this stream kind
    content_ns: ClassVar[str] = ns.CLIENT
    #: more namespace prefixes declared on our stream header (``{"db": "jabber:server:dialback"}``)
    header_ns: ClassVar[dict[str, str] | None] = None

    def __init__(self, transport: Transport, framer: Framer, limits: StreamLimits, spawn: Spawn) -> None:
        self.transport = transport
        self.framer = framer
        self._serialize = framer.serialize
        #: framers whose elements stand alone (RFC 7395, BOSH) turn ``xml.serialize`` output, which
        #: ``send_data`` gets (serialized once for many streams), into theirs
        self._adapt: Callable[[str], str] | None = getattr(framer, "adapt", None)
        self.limits = limits
        self.spawn = spawn
        self.stream_id = ""
        self.local_domain = ""  # the domain this side speaks for (the 'from' of our header)
        self.lang = "en"
        self.header_sent = False
        self.closed = False
        #: the connection dropped while the stream was open (neither side closed it): what
        #: XEP-0198 resumption is for; False after a closing handshake or a stream error
        self.lost = False
        self._ended = False
        #: elements written, by the first character of their name ("m"essage, "p"resence, "i"q, ...),
        #: for metrics; None: not counted
        self.out_counts: dict[str, int] | None = None
        #: elements (and awaitables such as pending features) waiting for their turn
        self._queue: deque[Element | Awaitable[Any]] | None = None
        self.parser: FeedParser = self._new_parser()
        self._timeout: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            limits.handshake_timeout, self._handshake_timeout)

    # -- to be provided by stream kinds ------------------------------------------------------
    def opened(self, root: Element) -> tuple[str, str | None] | None:
        """Check the peer's header (RFC 6120 §4.7.1); set ``local_domain``.  Returns a stream error
        ``(condition, text)`` or None."""
        return None

    def default_domain(self) -> str:
        """The 'from' of a header sent before we know which domain the peer wants."""
        return self.local_domain

    def features(self) -> Element | Awaitable[Element] | None:
        """RFC 6120 §4.3.2 stream features after the header; None sends none (pre-1.0 peers)."""
        return None

    def process(self, el: Element) -> Awaitable[Any] | None:
        """One top-level element in order; an awaitable holds the next ones until it is done."""
        return None

    def negotiated(self) -> bool:
        """The handshake is over (the handshake timeout no longer applies)."""
        return False

    def ended(self) -> None:
        """The stream is over (called once, whatever ended it)."""

    # -- bytes in ----------------------------------------------------------------------------
    def _new_parser(self) -> FeedParser:
        lim = self.limits
        return self.framer.new_parser(self._on_open, self._on_element, self._on_close, self.content_ns,
                                      lim.max_stanza_size, lim.max_depth)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed(data)
        except XMLStreamError as e:
            self.stream_error(e.condition, e.text)
        except Exception:
            log.exception("error processing stream data")
            self.stream_error("internal-server-error")

    def connection_lost(self) -> None:
        if not self.closed:
            self.lost = True
        self.closed = True
        self.parser.close()
        self._end()

    # -- header, RFC 6120 §4.7 ---------------------------------------------------------------
    def _on_open(self, root: Element, nsmap: dict[str, str]) -> None:
        self.stream_id = new_stream_id()
        self.lang = root.get(ns.XML_LANG) or "en"
        kind_err = self.opened(root)  # sets local_domain, which our header needs
        self.send_header(root.get("from"))
        err = self.framer.check_open(root, nsmap, self.content_ns) or kind_err
        if err is not None:
            self.stream_error(*err)
            return
        self.send_features()

    def send_header(self, peer_from: str | None) -> None:
        if self.header_sent:
            return
        self.header_sent = True
        self.transport.write(self.framer.open(self.content_ns, self.stream_id or new_stream_id(),
                                              self.local_domain or self.default_domain(), peer_from,
                                              self.header_ns))

    def send_features(self) -> None:
        """Write the features; when a features provider is asynchronous, they are written once it is
        done, and later elements wait behind them (never features written before all are in)."""
        f = self.features()
        if f is None:
            return
        if isinstance(f, Element):
            self.send(f)
            return
        self._enqueue_awaitable(self._send_features_later(f))

    async def _send_features_later(self, f: Awaitable[Element]) -> None:
        el = await f
        self.send(el)

    def restart(self) -> None:
        """RFC 6120 §4.3.3: a new stream over the same connection, after TLS or SASL."""
        self.parser.close()
        self.parser = self._new_parser()
        self.header_sent = False

    # -- elements, in order ------------------------------------------------------------------
    def _on_element(self, el: Element) -> None:
        if self.closed:
            return
        q = self._queue
        if q is not None:
            q.append(el)
            return
        r = self.process(el)
        if r is not None:
            self._enqueue_awaitable(r)

    def _enqueue_awaitable(self, r: Awaitable[Any]) -> None:
        if self._queue is not None:
            self._queue.append(r)  # already draining: it takes its turn after what is queued
            return
        self._queue = deque()
        self.transport.pause_reading()
        self.spawn(self._drain(r))

    async def _drain(self, r: Awaitable[Any] | None) -> None:
        try:
            while r is not None:
                try:
                    await r
                except Exception:
                    log.exception("stream element processing failed")
                r = None
                q = self._queue
                while q and r is None and not self.closed:
                    if self.transport.write_blocked:
                        # the peer does not read what it asked for: no more answers until it does
                        await self.transport.writable()
                        if self.closed:
                            break
                    item = q.popleft()
                    r = self.process(item) if isinstance(item, Element) else item
        finally:
            for item in self._queue or ():
                if iscoroutine(item):
                    item.close()  # the stream closed before its turn came
            self._queue = None
            if not self.closed:
                self.transport.resume_reading()

    def _on_close(self) -> None:
        """RFC 6120 §4.4: the peer closed its stream; close ours and the connection."""
        if not self.closed:
            self.transport.write(self.framer.close())
            self.closed = True
            self.transport.close()
        self._end()

    # -- out ---------------------------------------------------------------------------------
    def send(self, el: Element) -> None:
        if not self.closed:
            self.transport.write(self._serialize(el).encode())
            c = self.out_counts
            if c is not None:
                k = el.tag[0]
                c[k] = c.get(k, 0) + 1

    def send_data(self, data: str) -> None:
        """An element already serialized with the framer's ``serialize`` (once for many streams)."""
        if not self.closed:
            adapt = self._adapt
            self.transport.write((data if adapt is None else adapt(data)).encode())
            c = self.out_counts
            if c is not None:
                k = data[1:2]
                c[k] = c.get(k, 0) + 1

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close with a stream error (``condition``) or the closing handshake (RFC 6120 §4.4)."""
        if condition:
            self.stream_error(condition, text)
        elif not self.closed:
            self.transport.write(self.framer.close())
            self.closed = True
            self.transport.close()
            self._end()

    def stream_error(self, condition: str, text: str | None = None) -> None:
        """RFC 6120 §4.9: send the error, close the stream and the connection."""
        if self.closed:
            return
        self.send_header(None)
        self.transport.write(self.framer.error(condition, text) + self.framer.close())
        self.closed = True
        self.parser.close()
        self.transport.close()
        self._end()

    def _handshake_timeout(self) -> None:
        self._timeout = None
        if not self.negotiated() and not self.closed:
            self.stream_error("connection-timeout", "the stream negotiation took too long")

    def cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.cancel_timeout()
        self.ended()
