"""Incremental, restricted XML stream parser (RFC 6120 §4, §11).

Built on the C-accelerated ``xml.etree.ElementTree.XMLPullParser`` (expat underneath), which DESIGN.md
measured fastest.  RFC 6120 §11.1 restrictions: a DTD (hence any entity declaration) can only appear
before the root element, so ``<!`` is refused there; comments and processing instructions are refused
wherever they appear; undeclared entity references are refused as restricted XML too.  Each finished
stanza is detached from the stream root so memory stays flat.  Limits on stanza size and nesting depth
answer ``<policy-violation/>`` (RFC 6120 §4.9.3.14).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

from . import ns

_EVENTS = ("start", "end", "start-ns", "comment", "pi")
# expat error codes (pyexpat.errors): 11 = undefined entity, 12 = recursive entity, 15 = ref to binary
# entity, 16 = ref to external entity, 17 = misplaced XML declaration / processing instruction.
_RESTRICTED_CODES = {11, 12, 15, 16, 17}
_FIRST_TAG = re.compile(rb"<[^?!]")


class XMLStreamError(Exception):
    """A stream-level error; ``condition`` is the RFC 6120 §4.9.3 element name."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


class StreamParser:
    """Feed bytes; get ``on_open(root, namespaces)``, ``on_stanza(element)``, ``on_close()`` callbacks.

    ``content_ns`` is stripped from stanza tags (see ``rookery.xml``).  Raises ``XMLStreamError``.
    """

    __slots__ = (
        "_parser", "_on_open", "_on_stanza", "_on_close", "_depth", "_root", "_nsmap",
        "_prefix", "_plen", "_pending", "max_stanza_size", "max_depth", "_size", "_closed",
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
        self._parser = XMLPullParser(events=_EVENTS)
        self._on_open = on_open
        self._on_stanza = on_stanza
        self._on_close = on_close
        self._depth = 0
        self._root: Element | None = None
        self._nsmap: dict[str, str] = {}
        self._prefix = "{%s}" % ns.CLIENT
        self._plen = len(self._prefix)
        self._pending = b""  # bytes seen before the root start tag (to refuse a DTD)
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self._size = 0
        self._closed = False

    def set_content_namespace(self, namespace: str) -> None:
        self._prefix = "{%s}" % namespace
        self._plen = len(self._prefix)

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        if self._root is None:
            self._check_prolog(data)
        if self._depth > 0:
            self._size += len(data)
            if self._size > self.max_stanza_size:
                raise XMLStreamError("policy-violation", "stanza too large")
        self._parser.feed(data)
        self._drain()

    def _check_prolog(self, data: bytes) -> None:
        buf = self._pending + data
        m = _FIRST_TAG.search(buf)
        head = buf if m is None else buf[: m.start()]
        if b"<!" in head:
            raise XMLStreamError("restricted-xml", "DTDs are not allowed in XMPP")
        if m is None:
            if len(buf) > 4096:
                raise XMLStreamError("policy-violation", "stream prolog too long")
            self._pending = buf[-1:]  # keep a trailing '<' across chunks
        else:
            self._pending = b""

    def _drain(self) -> None:
        try:
            events = self._parser.read_events()
            for event, obj in events:
                if event == "start":
                    self._depth += 1
                    if self._depth == 1:
                        self._root = obj
                        self._on_open(obj, self._nsmap)
                        self._size = 0
                    elif self._depth > self.max_depth:
                        raise XMLStreamError("policy-violation", "nesting too deep")
                elif event == "end":
                    self._depth -= 1
                    if self._depth == 1:
                        root = self._root
                        assert root is not None
                        root.remove(obj)
                        self._size = 0
                        prefix = self._prefix
                        if obj.tag.startswith(prefix):
                            plen = self._plen
                            for el in obj.iter():
                                if el.tag.startswith(prefix):
                                    el.tag = el.tag[plen:]
                        self._on_stanza(obj)
                        if self._closed:
                            return
                    elif self._depth == 0:
                        self._closed = True
                        self._on_close()
                        return
                elif event == "start-ns":
                    if self._root is None:
                        prefix, uri = obj
                        self._nsmap[prefix] = uri
                else:  # comment, pi
                    raise XMLStreamError("restricted-xml", f"{event} not allowed in XMPP")
        except ParseError as e:
            code = getattr(e, "code", 0)
            if code in _RESTRICTED_CODES:
                raise XMLStreamError("restricted-xml", str(e)) from None
            raise XMLStreamError("not-well-formed", str(e)) from None

    def close(self) -> None:
        self._closed = True
