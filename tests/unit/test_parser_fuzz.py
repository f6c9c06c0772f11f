"""Fuzzing the RFC 6120 stream parser: whatever bytes arrive, in whatever chunks, ``feed()`` raises
nothing but ``XMLStreamError`` and keeps memory flat.  (The coverage-guided harness is
``fuzz/fuzz_parser.py``.)"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rookery.xml import StreamParser, XMLStreamError, serialize

OPEN = (
    b"<stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>"
)
HEADER = b"<?xml version='1.0'?>" + OPEN
DTD = b"<!DOCTYPE stream:stream [<!ENTITY a 'EXPANDED'>]>"
PROLOGS = [
    b"<?xml version='1.0'?>",
    b"",
    b"\xef\xbb\xbf",
    b"\n",
    b"<?xml version='1.0' encoding='utf-8'?>",
    b"<?xml version='1.0' encoding='shift_jis'?>",
    b"<?xml version='1.0' encoding='x-no-such'?>",
    b"<?xml version='1.0' encoding='UTF-16'?>",
    b"<?xml version='1.0'?>" + DTD,
    DTD,
    b"<?pi <x ?>" + DTD,
]
STANZAS = [
    b"<message to='romeo@example.net' type='chat' id='m1'><body>Wherefore &amp; &#x41; art</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
    b"<presence><show>away</show><status xml:lang='en'>gone</status><priority>5</priority></presence>",
    b"<message><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'>"
    b"<body><![CDATA[x < y]]></body></message></forwarded></message>",
    b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABy</auth>",
    b"<message xmlns:p='urn:p' p:a='1'><xml:foo/><stream:features/></message>",
    b"<message><body>&a;</body></message>",
    b" \n\t",
]
CLOSE = b"</stream:stream>"
TOKENS = [
    b"<!DOCTYPE s [<!ENTITY a 'EXPANDED'>]>",
    b"<!DOCTYPE stream:stream [<!ENTITY a 'EXPANDED'>]>",
    b"<!--",
    b"-->",
    b"<?",
    b"?>",
    b"<?xml version='1.0'?>",
    b"&",
    b"&a;",
    b"&lt;",
    b"&#0;",
    b"&#x110000;",
    b"<![CDATA[",
    b"]]>",
    b"\x00",
    b"\xff",
    b"\xfe\xff",
    b"\xef\xbb\xbf",
    b"\xc3",
    b"\xf0\x9f\x8e",
    b"xmlns=''",
    b"xmlns:x=''",
    b"xmlns:xml='urn:x'",
    b"xml:",
    b"stream:",
    b"</",
    b"/>",
    b"<",
    b">",
    b"'",
    b'"',
    b"=",
    b" ",
    b"<a>" * 40,
    b"</a>" * 40,
    b"<stream:stream>",
    b" encoding='UTF-16'",
    b" encoding='shift_jis'",
    b" encoding='x-no-such'",
    b" encoding='cp500'",
    b"</stream:stream>",
    b"<message>",
    b"</message>",
    b"\r\n",
]


class Harness:
    def __init__(self, **limits: int) -> None:
        self.opened = 0
        self.closed = 0
        self.root: Element | None = None
        self.parser = StreamParser(self._open, self._stanza, self._close, **limits)

    def _open(self, root: Element, nsmap: dict[str, str]) -> None:
        self.opened += 1
        self.root = root

    def _stanza(self, el: Element) -> None:
        assert isinstance(el.tag, str)
        # whatever the parser delivers can be written out again, and no entity was ever expanded
        assert "EXPANDED" not in serialize(el)

    def _close(self) -> None:
        self.closed += 1

    def run(self, chunks: list[bytes]) -> None:
        """Feed everything; after an error keep feeding (a careless caller must not crash either)."""
        for chunk in chunks:
            try:
                self.parser.feed(chunk)
            except XMLStreamError as e:
                assert e.condition in {
                    "not-well-formed",
                    "restricted-xml",
                    "policy-violation",
                    "unsupported-encoding",
                }
            else:
                if self.root is not None:
                    assert len(self.root) <= 1  # only the stanza in progress stays attached
        assert self.opened <= 1 and self.closed <= 1


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


@st.composite
def documents(draw) -> bytes:
    body = b"".join(draw(st.lists(st.sampled_from(STANZAS), max_size=6)))
    doc = bytearray(draw(st.sampled_from(PROLOGS)) + OPEN + body + (CLOSE if draw(st.booleans()) else b""))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 4))
        pos = draw(st.integers(0, len(doc)))
        if kind == 0:  # insert a token
            doc[pos:pos] = draw(st.sampled_from(TOKENS))
        elif kind == 1 and pos < len(doc):  # flip a byte
            doc[pos] = draw(st.integers(0, 255))
        elif kind == 2:  # delete a run
            del doc[pos : pos + draw(st.integers(1, 16))]
        elif kind == 3:  # duplicate a run
            doc[pos:pos] = doc[pos : pos + draw(st.integers(1, 32))]
        else:  # random bytes
            doc[pos:pos] = draw(st.binary(max_size=8))
    encoding = draw(st.sampled_from([None, None, None, "utf-16", "utf-16-le", "utf-16-be", "cp500"]))
    if encoding is not None:  # RFC 6120 §11.6: anything but UTF-8 is refused, DTDs included
        return bytes(doc).decode("utf-8", "replace").encode(encoding, "replace")
    return bytes(doc)


_CUTS = st.lists(st.integers(0, 10_000), max_size=12)
_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(documents(), _CUTS)
def test_mutated_streams_raise_only_xml_stream_errors(doc, cuts):
    Harness().run(_split(doc, cuts))


@_FUZZ
@given(documents(), _CUTS, st.integers(64, 2048), st.integers(2, 40))
def test_mutated_streams_with_small_limits(doc, cuts, size, depth):
    Harness(max_stanza_size=size, max_depth=depth).run(_split(doc, cuts))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), _CUTS)
def test_random_bytes_raise_only_xml_stream_errors(data, cuts):
    Harness().run(_split(data, cuts))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), _CUTS)
def test_random_bytes_after_a_header_raise_only_xml_stream_errors(data, cuts):
    Harness().run(_split(HEADER + data, cuts))


@settings(max_examples=100, deadline=None)
@given(documents())
def test_chunking_does_not_change_the_outcome(doc):
    """Whole, or byte by byte: the same stanzas, and the same error if any.  (Before the stream is
    open, garbage can be refused for one reason or another depending on which byte is seen first: there
    only the refusal itself must not depend on the chunking.)"""

    def outcome(chunks: list[bytes]) -> tuple:
        got: list[str] = []
        parser = StreamParser(
            lambda r, n: got.append("<open>"),
            lambda el: got.append(serialize(el)),
            lambda: got.append("</close>"),
        )
        try:
            for chunk in chunks:
                parser.feed(chunk)
        except XMLStreamError as e:
            return tuple(got), e.condition if got else "refused before the stream opened"
        return tuple(got), None

    whole = outcome([doc])
    bytewise = outcome([doc[i : i + 1] for i in range(len(doc))])
    assert bytewise == whole
