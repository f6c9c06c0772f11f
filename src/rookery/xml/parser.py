"""Incremental, restricted XML stream parser (RFC 6120 §4, §11).

Built on the C-accelerated ``xml.etree.ElementTree.XMLPullParser`` (expat underneath), which DESIGN.md
measured fastest.  RFC 6120 §11.1 restrictions: a DTD (hence any entity declaration) can only appear
before the root element, so before it nothing but an XML declaration and whitespace is accepted;
comments and processing instructions are refused wherever they appear; undeclared entity references
are refused as restricted XML too.  RFC 6120 §11.6: the stream is UTF-8 whatever it declares (expat is
told so), a UTF-16 byte order mark or another declared encoding is ``<unsupported-encoding/>``.  Each
finished stanza is detached from the stream root so memory stays flat.  Limits on stanza size and
nesting depth answer ``<policy-violation/>`` (RFC 6120 §4.9.3.14).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, XMLParser, XMLPullParser

from . import ns

_EVENTS: Final[tuple[Literal["start", "end", "start-ns", "comment", "pi"], ...]] = (
    "start", "end", "start-ns", "comment", "pi",
)
# expat error codes (pyexpat.errors): 11 = undefined entity, 12 = recursive entity, 15 = ref to binary
# entity, 16 = ref to external entity, 17 = misplaced XML declaration / processing instruction.
_RESTRICTED_CODES = {11, 12, 15, 16, 17}
_XML_DECL = re.compile(rb"<\?xml[ \t\r\n]")
_S = rb"[ \t\r\n]"
_EQ = _S + rb"*=" + _S + rb"*"
_XML_DECL_FULL = re.compile(  # what expat accepts as an XML declaration
    rb"<\?xml" + _S + rb"+version" + _EQ + rb"(?:'[A-Za-z0-9_.:-]*'|\"[A-Za-z0-9_.:-]*\")"
    + rb"(?:" + _S + rb"+encoding" + _EQ + rb"(?:'([A-Za-z][A-Za-z0-9._-]*)'|\"([A-Za-z][A-Za-z0-9._-]*)\"))?"
    + rb"(?:" + _S + rb"+standalone" + _EQ + rb"(?:'(?:yes|no)'|\"(?:yes|no)\"))?"
    + _S + rb"*\?>"
)
_MAX_PROLOG = 4096
_BOM = b"\xef\xbb\xbf"
_SLICE = 4096  # larger chunks are fed in slices of this size (see StreamParser)
_INVALID_TOKEN = 4  # expat: "not well-formed (invalid token)", also what a markup declaration mid-stream gets
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 continuation bytes: deleting them leaves one byte per char


def _chars(data: bytes) -> int:
    """Characters in UTF-8 ``data`` as expat counts columns (lead bytes; a split character counts once)."""
    return len(data) if data.isascii() else len(data.translate(None, _CONTINUATION))


class XMLStreamError(Exception):
    """A stream-level error; ``condition`` is the RFC 6120 §4.9.3 element name."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


def _strip(el: Element, prefix: str, plen: int) -> None:
    """Remove the content namespace from ``el`` and from the descendants that inherit it."""
    el.tag = el.tag[plen:]
    for child in el:
        if child.tag.startswith(prefix):
            _strip(child, prefix, plen)


def parse_fragment(data: bytes, content_ns: str = ns.CLIENT) -> Element:
    """One element serialized by our own serializer (trusted input, e.g. the cluster link between
    workers), read back as the stream parser would have given it: ``content_ns`` stripped from the
    element and the descendants that inherit it."""
    prefix = "{%s}" % content_ns
    wrapper = XMLParser(target=TreeBuilder(), encoding="utf-8")
    wrapper.feed(b"<r xmlns='" + content_ns.encode() + b"'>")
    wrapper.feed(data)
    wrapper.feed(b"</r>")
    el = wrapper.close()[0]
    if el.tag.startswith(prefix):
        _strip(el, prefix, len(prefix))
    return el


def _prolog_done(buf: bytes) -> bool:
    """True once ``buf`` holds the start of the root tag; raises if something else comes first."""
    if len(buf) < 3 and (_BOM.startswith(buf) or buf in (b"\xfe", b"\xff")):
        return False  # perhaps a byte order mark
    i = 3 if buf[:3] == _BOM else 0
    if _XML_DECL.match(buf, i):
        end = buf.find(b"?>", i)
        if end < 0:
            return False
        m = _XML_DECL_FULL.fullmatch(buf, i, end + 2)
        if m is None:
            raise XMLStreamError("not-well-formed", "malformed XML declaration")
        encoding = m[1] or m[2]
        if encoding is not None and encoding.lower() not in (b"utf-8", b"utf8"):
            raise XMLStreamError("unsupported-encoding", "XMPP streams are UTF-8")
        i = end + 2
    elif len(buf) - i < 6 and b"<?xml"[: len(buf) - i] == buf[i:]:
        return False  # perhaps the start of an XML declaration
    j = buf.find(b"<", i)
    if buf[i : j if j >= 0 else len(buf)].strip(b" \t\r\n"):
        raise XMLStreamError("not-well-formed", "text before the stream header")
    if j < 0 or j + 1 == len(buf):
        return False
    if buf[j + 1] in b"!?":  # <!DOCTYPE, <!-- -->, <![CDATA[ or a processing instruction
        raise XMLStreamError("restricted-xml", "only an XML declaration may precede the stream")
    return True


class StreamParser:
    """Feed bytes; get ``on_open(root, namespaces)``, ``on_stanza(element)``, ``on_close()`` callbacks.

    ``content_ns`` is stripped from stanza tags (see ``rookery.xml``): from the stanza element and from
    the descendants that inherit it, not from a ``<message xmlns='jabber:client'>`` nested inside another
    namespace (a XEP-0297 forward), which keeps its Clark name so it serializes with its namespace.
    Raises ``XMLStreamError``.

    ``max_stanza_size`` bounds the bytes fed since the last stanza ended (the stream header and the
    whitespace between stanzas included), checked after each slice of at most ``_SLICE`` bytes.  expat
    gives no byte offsets, so the slice in which a stanza ends, and the part of a stanza in the slice
    where the previous one ended, are not counted: a stanza within the limit always passes, one more
    than ``2 * _SLICE`` bytes over it never does, and a large one is refused before it is complete.
    """

    __slots__ = (
        "_parser", "_on_open", "_on_stanza", "_on_close", "_depth", "_root", "_nsmap",
        "_prefix", "_plen", "_pending", "max_stanza_size", "max_depth", "_size", "_closed",
        "_lines", "_line_chars", "_tail", "_chunk",
    )

    def __init__(
        self,
        on_open: Callable[[Element, dict[str, str]], None],
        on_stanza: Callable[[Element], None],
        on_close: Callable[[], None],
        *,
        max_stanza_size: int = 262144,
        max_depth: int = 32,
    ) -> None:
        # encoding="utf-8" overrides whatever the XML declaration says (RFC 6120 §11.6), so expat never
        # consults Python codecs for an unknown encoding (a LookupError or ValueError out of feed()).
        self._parser: XMLPullParser[Element] = XMLPullParser(
            events=_EVENTS, _parser=XMLParser(target=TreeBuilder(), encoding="utf-8")
        )
        self._on_open = on_open
        self._on_stanza = on_stanza
        self._on_close = on_close
        self._depth = 0
        self._root: Element | None = None
        self._nsmap: dict[str, str] = {}
        self._prefix = "{%s}" % ns.CLIENT
        self._plen = len(self._prefix)
        self._pending: bytes | None = b""  # the prolog seen so far; None once the root tag has begun
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self._size = 0  # bytes since the last stanza boundary; -1: a boundary in the current slice
        self._closed = False
        # where the chunk being parsed starts, in expat's terms (to name the error at a position):
        # newlines before it, characters since the last of them, and the previous chunk's last bytes
        self._lines = 0
        self._line_chars = 0
        self._tail = b""
        self._chunk = b""

    @property
    def depth(self) -> int:
        """Open elements now: 1 between stanzas (inside the stream root), 0 before the root."""
        return self._depth

    def set_content_namespace(self, namespace: str) -> None:
        self._prefix = "{%s}" % namespace
        self._plen = len(self._prefix)

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        if self._pending is not None:
            self._check_prolog(data)
        self._chunk = data
        if len(data) <= _SLICE:
            self._feed(data)
        else:
            view = memoryview(data)  # slicing keeps the size accounting within _SLICE bytes, at no cost
            for i in range(0, len(data), _SLICE):
                self._feed(view[i : i + _SLICE])
                if self._closed:
                    break
        # position bookkeeping: two C scans of the chunk (count, rfind), a third when it is not ASCII
        nl = data.count(b"\n")
        if nl:
            self._lines += nl
            self._line_chars = _chars(data[data.rfind(b"\n") + 1:])
        else:
            self._line_chars += _chars(data)
        self._tail = (self._tail + data[-2:])[-2:]
        self._chunk = b""

    def _markup_declaration_at(self, line: int, column: int) -> bool:
        """Whether expat's error at (``line``, ``column``: 1-based, in characters) is the ``!`` of a
        ``<!`` in the chunk being parsed (or just before it): a DOCTYPE, ENTITY … declaration after
        the stream header, which RFC 6120 §11.1 calls restricted XML, not merely ill-formed."""
        data = bytes(self._chunk)
        if line == self._lines + 1:
            start, n = 0, column - 1 - self._line_chars
        else:
            start = -1
            for _ in range(line - self._lines - 1):
                start = data.find(b"\n", start + 1)
                if start < 0:
                    return False
            start, n = start + 1, column - 1
        if n < 0:  # the "!" ended the previous chunk (expat waited to see "<!--" or "<![CDATA[")
            return n == -1 and self._tail == b"<!"
        i, count = start, 0
        while i < len(data):  # the byte of the n-th character from start
            if not 0x80 <= data[i] < 0xC0:
                if count == n:
                    break
                count += 1
            i += 1
        else:
            return False
        before = data[i - 1 : i] if i > 0 else self._tail[-1:]
        return data[i : i + 1] == b"!" and before == b"<"

    def _feed(self, data: bytes | memoryview) -> None:
        self._parser.feed(data)
        self._drain()
        if self._closed:
            return
        if self._size < 0:  # a stanza ended in this slice: what follows it here is not counted
            self._size = 0
        else:
            self._size += len(data)
            if self._size > self.max_stanza_size:
                raise XMLStreamError("policy-violation", "stanza too large")

    def _check_prolog(self, data: bytes) -> None:
        """RFC 6120 §11.1, §11.6: before the root only a UTF-8 XML declaration and whitespace.

        Checked on the bytes before expat sees them, so a DTD is refused before it is parsed; the prolog
        is kept until the character after the root's ``<`` has arrived, and whatever the chunking, the
        first offending byte decides the error."""
        assert self._pending is not None
        buf = self._pending + data
        if buf[:2] in (b"\xfe\xff", b"\xff\xfe"):
            raise XMLStreamError("unsupported-encoding", "XMPP streams are UTF-8")
        nul = buf.find(b"\x00", 0, _MAX_PROLOG + 1)  # UTF-16 without a byte order mark
        stop = _MAX_PROLOG + 1 if nul < 0 else nul  # what precedes it decides first
        if _prolog_done(buf[:stop]):
            self._pending = None
        elif nul >= 0:
            raise XMLStreamError("unsupported-encoding", "XMPP streams are UTF-8")
        elif len(buf) > _MAX_PROLOG:
            raise XMLStreamError("policy-violation", "stream prolog too long")
        else:
            self._pending = buf

    def _drain(self) -> None:
        try:
            events: Iterator[Any] = self._parser.read_events()  # (event, element or (prefix, uri))
            for event, obj in events:
                if event == "start":
                    self._depth += 1
                    if self._depth == 1:
                        self._root = obj
                        self._size = -1
                        self._on_open(obj, self._nsmap)
                    elif self._depth > self.max_depth:
                        raise XMLStreamError("policy-violation", "nesting too deep")
                elif event == "end":
                    self._depth -= 1
                    if self._depth == 1:
                        root = self._root
                        assert root is not None
                        root.remove(obj)
                        self._size = -1
                        prefix = self._prefix
                        tag = obj.tag
                        if tag.startswith(prefix):
                            plen = self._plen
                            obj.tag = tag[plen:]
                            for child in obj:
                                if child.tag.startswith(prefix):
                                    _strip(child, prefix, plen)
                        self._on_stanza(obj)
                        if self._closed:
                            return
                    elif self._depth == 0:
                        self._closed = True
                        self._on_close()
                        return
                elif event == "start-ns":
                    if self._root is None:
                        self._nsmap[obj[0]] = obj[1]
                else:  # comment, pi
                    raise XMLStreamError("restricted-xml", f"{event} not allowed in XMPP")
        except ParseError as e:
            code = getattr(e, "code", 0)
            if code in _RESTRICTED_CODES:
                raise XMLStreamError("restricted-xml", str(e)) from None
            if code == _INVALID_TOKEN and self._pending is None and self._markup_declaration_at(*e.position):
                raise XMLStreamError("restricted-xml", "markup declarations are not allowed in XMPP") from None
            raise XMLStreamError("not-well-formed", str(e)) from None

    def close(self) -> None:
        self._closed = True
