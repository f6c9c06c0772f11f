"""RFC 6120 §4 (XML streams) and §11 (XML usage): the restricted incremental ``StreamParser``."""

from __future__ import annotations

from xml.etree.ElementTree import Element

import pytest

from rookery.xml import StreamParser, XMLStreamError, ns, serialize
from rookery.xml.parser import _SLICE

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.com' from='juliet@example.com' version='1.0' xml:lang='en' id='s1'>"
)
MESSAGE = (
    b"<message to='romeo@example.net' from='juliet@example.com/balcony' type='chat' id='m1' xml:lang='en'>"
    b"<body>Wherefore art thou?</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/>"
    b"</message>"
)
CLOSE = b"</stream:stream>"


class Recorder:
    """Collects the parser's callbacks."""

    def __init__(self, **limits: int) -> None:
        self.opened: list[tuple[Element, dict[str, str]]] = []
        self.stanzas: list[Element] = []
        self.closed = 0
        self.parser = StreamParser(self._open, self.stanzas.append, self._close, **limits)

    def _open(self, root: Element, nsmap: dict[str, str]) -> None:
        self.opened.append((root, dict(nsmap)))

    def _close(self) -> None:
        self.closed += 1

    def feed(self, *chunks: bytes) -> Recorder:
        for chunk in chunks:
            self.parser.feed(chunk)
        return self

    def feed_bytewise(self, data: bytes) -> Recorder:
        for i in range(len(data)):
            self.parser.feed(data[i : i + 1])
        return self

    @property
    def root(self) -> Element:
        return self.opened[0][0]


def shape(el: Element) -> tuple:
    """A comparable picture of an element tree."""
    return (el.tag, sorted(el.attrib.items()), el.text, el.tail, [shape(c) for c in el])


def stream_error(*chunks: bytes, bytewise: bool = False, **limits: int) -> XMLStreamError:
    rec = Recorder(**limits)
    with pytest.raises(XMLStreamError) as info:
        if bytewise:
            rec.feed_bytewise(b"".join(chunks))
        else:
            rec.feed(*chunks)
    return info.value


# -- stream open / stanzas / close --------------------------------------------------------------


def test_stream_open_reports_root_attributes_and_namespace_declarations():
    rec = Recorder().feed(HEADER)
    assert len(rec.opened) == 1
    root, nsmap = rec.opened[0]
    assert root.tag == "{http://etherx.jabber.org/streams}stream"
    assert root.get("to") == "example.com"
    assert root.get("from") == "juliet@example.com"
    assert root.get("version") == "1.0"
    assert root.get("id") == "s1"
    assert nsmap == {"": ns.CLIENT, "stream": ns.STREAM}


def test_xml_lang_is_available_in_clark_notation():
    rec = Recorder().feed(HEADER, MESSAGE)
    assert rec.root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert rec.root.get(ns.XML_LANG) == "en"
    assert rec.stanzas[0].get(ns.XML_LANG) == "en"


def test_stanza_tags_lose_the_content_namespace_and_keep_others_in_clark_notation():
    rec = Recorder().feed(HEADER, MESSAGE)
    [msg] = rec.stanzas
    assert msg.tag == "message"
    assert msg.get("to") == "romeo@example.net"
    assert [c.tag for c in msg] == ["body", "{http://jabber.org/protocol/chatstates}active"]
    assert msg.find("body").text == "Wherefore art thou?"


def test_content_namespace_nested_in_another_namespace_is_kept():
    """A XEP-0297 forward carries a jabber:client message inside urn:xmpp:forward:0: it keeps its
    namespace, so serializing it does not put it in no namespace (``xmlns=''``)."""
    fwd = (
        b"<message to='romeo@example.net'><forwarded xmlns='urn:xmpp:forward:0'>"
        b"<message xmlns='jabber:client' from='a@example.com'><body>hi</body></message>"
        b"</forwarded></message>"
    )
    rec = Recorder().feed(HEADER, fwd)
    [msg] = rec.stanzas
    inner = msg[0][0]
    assert msg.tag == "message"
    assert inner.tag == "{jabber:client}message"
    assert inner[0].tag == "{jabber:client}body"
    assert "xmlns='jabber:client'" in serialize(msg)
    assert "xmlns=''" not in serialize(msg)


def test_set_content_namespace_strips_jabber_server():
    data = HEADER.replace(b"jabber:client", b"jabber:server") + MESSAGE
    rec = Recorder()
    rec.parser.set_content_namespace(ns.SERVER)
    rec.feed(data)
    assert rec.stanzas[0].tag == "message"
    assert rec.stanzas[0][0].tag == "body"


def test_stanzas_in_other_namespaces_keep_their_namespace():
    rec = Recorder().feed(HEADER, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert rec.stanzas[0].tag == "{urn:ietf:params:xml:ns:xmpp-tls}starttls"


def test_several_stanzas_in_one_chunk_arrive_in_order():
    data = b"".join(MESSAGE.replace(b"id='m1'", b"id='m%d'" % i) for i in range(5))
    rec = Recorder().feed(HEADER + data)
    assert [s.get("id") for s in rec.stanzas] == [f"m{i}" for i in range(5)]


def test_whitespace_between_stanzas_is_ignored():
    rec = Recorder().feed(HEADER, b"\n  ", MESSAGE, b" \t\r\n", b" ", MESSAGE, b"\n")
    assert len(rec.stanzas) == 2
    assert shape(rec.stanzas[0])[:3] == shape(rec.stanzas[1])[:3]
    assert len(rec.root) == 0


def test_stream_close_calls_on_close_once_and_ignores_later_data():
    rec = Recorder().feed(HEADER, MESSAGE, CLOSE)
    assert rec.closed == 1
    rec.feed(MESSAGE, b"garbage <<<")
    assert rec.closed == 1
    assert len(rec.stanzas) == 1


def test_close_stops_delivery():
    rec = Recorder().feed(HEADER)
    rec.parser.close()
    rec.feed(MESSAGE)
    assert rec.stanzas == []


@pytest.mark.parametrize("split", [1, 2, 3, 7, 64, 100])
def test_chunk_boundaries_do_not_change_the_result(split):
    data = (
        HEADER + MESSAGE + b"<iq type='get' id='i1'><query xmlns='jabber:iq:roster'/></iq>" + MESSAGE + CLOSE
    )
    whole = Recorder().feed(data)
    chunked = Recorder().feed(*[data[i : i + split] for i in range(0, len(data), split)])
    assert [shape(s) for s in chunked.stanzas] == [shape(s) for s in whole.stanzas]
    assert len(whole.stanzas) == 3
    assert chunked.closed == whole.closed == 1


def test_byte_by_byte_feeding_with_multibyte_utf8_gives_the_same_stanzas():
    body = "grüße, 日本語, emoji 🎉".encode()
    data = HEADER + b"<message><body>" + body + b"</body></message>" + MESSAGE + CLOSE
    whole = Recorder().feed(data)
    bytewise = Recorder().feed_bytewise(data)
    assert [shape(s) for s in bytewise.stanzas] == [shape(s) for s in whole.stanzas]
    assert bytewise.stanzas[0].find("body").text == body.decode()
    assert [shape(r) for r, _ in bytewise.opened] == [shape(r) for r, _ in whole.opened]


def test_delivered_stanzas_are_detached_so_memory_stays_flat():
    rec = Recorder()
    rec.feed(HEADER)
    count = 0

    def check(el: Element) -> None:
        nonlocal count
        count += 1
        assert el not in list(rec.root)  # detached before delivery

    rec.parser._on_stanza = check
    chunk = MESSAGE * 100
    for _ in range(100):
        rec.feed(chunk)
        assert len(rec.root) == 0  # the root holds nothing between chunks
    assert count == 10_000
    assert rec.root.text is None or not rec.root.text.strip()


# -- RFC 6120 §11.1 restricted XML ----------------------------------------------------------------

DTD = b"<!DOCTYPE stream [<!ENTITY x 'xxxxxxxx'>]>"


@pytest.mark.parametrize(
    "prolog",
    [
        DTD,
        b"<!DOCTYPE stream>",
        b"<?xml version='1.0'?>" + DTD,
        b"<?xml version='1.0'?>\n  " + DTD,
        b"<!-- hello -->",
        b"<?xml version='1.0'?><!-- hello -->",
        b"<?xml-stylesheet href='a'?>",
        b"<?xml version='1.0'?><?pi data?>",
        b"<?pi <x ?>" + DTD,  # a '<' inside a PI is not the root start tag
        b"<![CDATA[ ]]>",
    ],
)
def test_doctype_comments_and_pis_before_the_root_are_restricted_xml(prolog):
    data = prolog + HEADER.replace(b"<?xml version='1.0'?>", b"") + b"<message>&x;</message>"
    assert stream_error(data).condition == "restricted-xml"
    assert stream_error(data, bytewise=True).condition == "restricted-xml"


def test_doctype_split_across_chunks_is_restricted_xml():
    rec = Recorder()
    rec.feed(b"<?xml version='1.0'?>\n<")
    with pytest.raises(XMLStreamError) as info:
        rec.feed(b"!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream>")
    assert info.value.condition == "restricted-xml"
    assert rec.opened == []


def test_xml_declaration_split_across_chunks_is_fine():
    rec = Recorder()
    for piece in (b"<", b"?", b"xm", b"l version='1.", b"0' encoding='UTF-8'?", b">\n<", HEADER[22:]):
        rec.feed(piece)
    assert len(rec.opened) == 1


@pytest.mark.parametrize(
    "inside",
    [b"<!-- a comment -->", b"<?pi data?>", b"<body><!--x--></body>", b"<body><?php echo 1; ?></body>"],
)
def test_comments_and_pis_inside_stanzas_are_restricted_xml(inside):
    data = HEADER + b"<message>" + inside + b"</message>"
    assert stream_error(data).condition == "restricted-xml"
    assert stream_error(data, bytewise=True).condition == "restricted-xml"


def test_comment_between_stanzas_is_restricted_xml():
    assert stream_error(HEADER, MESSAGE, b"<!-- x -->").condition == "restricted-xml"


@pytest.mark.parametrize("ref", [b"&nbsp;", b"&x;", b"&foo;"])
def test_undefined_entity_references_are_restricted_xml(ref):
    assert stream_error(HEADER, b"<message><body>" + ref + b"</body></message>").condition == "restricted-xml"
    assert stream_error(HEADER, b"<message id='" + ref + b"'/>").condition == "restricted-xml"


def test_predefined_entities_and_character_references_are_fine():
    rec = Recorder().feed(
        HEADER,
        b"<message id='&quot;&apos;&lt;&gt;&amp;'><body>&amp;&lt;&gt;&quot;&apos; &#x41;&#66;&#x1F389;</body></message>",
    )
    msg = rec.stanzas[0]
    assert msg.get("id") == "\"'<>&"
    assert msg.find("body").text == "&<>\"' AB🎉"


def test_cdata_sections_are_fine():
    rec = Recorder().feed(HEADER, b"<message><body><![CDATA[<b>bold</b> & ]]> more</body></message>")
    assert rec.stanzas[0].find("body").text == "<b>bold</b> &  more"


# -- RFC 6120 §11.6 UTF-8 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "<?xml version='1.0'?>".encode("utf-16") + DTD.decode().encode("utf-16-le"),
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>".encode("utf-16-be"),
        b"\xfe\xff" + "<stream:stream>".encode("utf-16-be"),
        b"<?xml version='1.0' encoding='UTF-16'?><stream:stream>",
        b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>",
        b"<?xml version='1.0' encoding='shift_jis'?><stream:stream>",
        b"<?xml version='1.0' encoding='no-such-codec'?><stream:stream>",
    ],
)
def test_encodings_other_than_utf8_are_unsupported_encoding(data):
    assert stream_error(data).condition == "unsupported-encoding"
    assert stream_error(data, bytewise=True).condition == "unsupported-encoding"


@pytest.mark.parametrize(
    "decl",
    [
        b"<?xml version='1.0' encoding='UTF-8'?>",
        b'<?xml version="1.0" encoding="utf-8"?>',
        b"\xef\xbb\xbf<?xml version='1.0'?>",
        b"\xef\xbb\xbf",
        b"",
        b"\n\n",
    ],
)
def test_utf8_declarations_and_bom_are_accepted(decl):
    rec = Recorder().feed(decl + HEADER[21:], MESSAGE)
    assert len(rec.opened) == 1 and len(rec.stanzas) == 1


def test_invalid_utf8_is_not_well_formed():
    assert stream_error(HEADER, b"<message><body>\xff\xfe</body></message>").condition == "not-well-formed"


# -- not-well-formed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stanza",
    [
        b"<message><body></message>",
        b"<message to='a' to='b'/>",
        b"<message to=a/>",
        b"<message><body>a < b</body></message>",
        b"<message>&#0;</message>",
        b"<message>\x01</message>",
        b"<foo:message/>",
        b"<message xmlns:p=''><p:x/></message>",
        b"<1message/>",
        b"</message>",
    ],
)
def test_malformed_stanzas_are_not_well_formed(stanza):
    assert stream_error(HEADER, stanza).condition == "not-well-formed"
    assert stream_error(HEADER + stanza, bytewise=True).condition == "not-well-formed"


def test_text_before_the_root_is_not_well_formed():
    assert stream_error(b"hello " + HEADER[21:]).condition == "not-well-formed"


def test_errors_are_xml_stream_errors_with_a_condition():
    err = stream_error(HEADER, b"<message><body></message>")
    assert err.condition == "not-well-formed"
    assert err.text and "mismatched" in err.text


# -- RFC 6120 §4.9.3.14 policy-violation: size and depth limits ----------------------------------


def _nested(depth: int) -> bytes:
    """A stanza whose element nesting (the stanza itself counted) is ``depth``."""
    return b"<message>" + b"<x xmlns='urn:x'>" * (depth - 1) + b"</x>" * (depth - 1) + b"</message>"


def test_nesting_deeper_than_max_depth_is_policy_violation():
    # the stream root is depth 1, so a stanza may nest max_depth - 1 levels
    assert stream_error(HEADER, _nested(10), max_depth=10).condition == "policy-violation"


def test_nesting_just_within_max_depth_passes():
    rec = Recorder(max_depth=10).feed(HEADER, _nested(9), _nested(9))
    assert len(rec.stanzas) == 2


def _sized(n: int) -> bytes:
    """A ``<message/>`` of exactly ``n`` bytes."""
    base = b"<message><body></body></message>"
    return b"<message><body>" + b"a" * (n - len(base)) + b"</body></message>"


def test_stanza_larger_than_max_stanza_size_is_policy_violation():
    # expat gives no byte offsets: the parser counts slices of _SLICE bytes and refuses a stanza once it
    # is certainly over the limit, i.e. by at most 2 * _SLICE bytes more (see StreamParser)
    limit = 8192
    big = _sized(limit + 2 * _SLICE + 1)
    assert stream_error(HEADER, big, max_stanza_size=limit).condition == "policy-violation"
    assert stream_error(HEADER + MESSAGE + big, max_stanza_size=limit).condition == "policy-violation"
    assert (
        stream_error(
            HEADER, MESSAGE, *[big[i : i + 1000] for i in range(0, len(big), 1000)], max_stanza_size=limit
        ).condition
        == "policy-violation"
    )
    assert (
        stream_error(HEADER, _sized(limit + 100), bytewise=True, max_stanza_size=limit).condition
        == "policy-violation"
    )


def test_stanza_just_under_max_stanza_size_passes():
    rec = Recorder(max_stanza_size=4096)
    rec.feed(HEADER)
    stanza = _sized(4090)
    for _ in range(3):  # whole, chunked and byte by byte
        rec.feed(stanza)
        rec.feed(*[stanza[i : i + 100] for i in range(0, len(stanza), 100)])
    rec.feed_bytewise(stanza)
    assert len(rec.stanzas) == 7


def test_many_small_stanzas_in_one_large_chunk_are_not_a_policy_violation():
    rec = Recorder(max_stanza_size=4096).feed(HEADER, MESSAGE * 200, MESSAGE * 200)
    assert len(rec.stanzas) == 400


def test_large_stanza_in_small_chunks_is_refused_before_it_is_complete():
    limit = 10_000
    rec = Recorder(max_stanza_size=limit)
    rec.feed(HEADER, b"<message><body>")
    fed = 0
    with pytest.raises(XMLStreamError) as info:
        for _ in range(1_000_000):
            rec.feed(b"a" * 64)
            fed += 64
    assert info.value.condition == "policy-violation"
    assert limit - 64 <= fed <= limit + 64
    assert rec.stanzas == []


def test_large_stanza_inside_one_huge_chunk_is_refused():
    assert (
        stream_error(HEADER + _sized(100_000) + MESSAGE, max_stanza_size=4096).condition == "policy-violation"
    )


def test_endless_whitespace_between_stanzas_is_bounded():
    rec = Recorder(max_stanza_size=4096).feed(HEADER, MESSAGE)
    with pytest.raises(XMLStreamError) as info:
        for _ in range(1000):
            rec.feed(b" " * 64)
    assert info.value.condition == "policy-violation"


def test_endless_stream_header_is_bounded():
    rec = Recorder(max_stanza_size=4096)
    rec.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' a='")
    with pytest.raises(XMLStreamError) as info:
        for _ in range(1000):
            rec.feed(b"a" * 64)
    assert info.value.condition == "policy-violation"


def test_endless_prolog_is_bounded():
    rec = Recorder()
    with pytest.raises(XMLStreamError) as info:
        for _ in range(1000):
            rec.feed(b" " * 64)
    assert info.value.condition == "policy-violation"


# -- a markup declaration after the stream header (issue F8) ---------------------------------------
@pytest.mark.parametrize("decl", [b"<!DOCTYPE x>", b"<!ENTITY a 'b'>", b"<!ELEMENT x ANY>", b"<!x"])
@pytest.mark.parametrize("before", [b"", b"\n  ", "<message><body>\u00e9t\u00e9</body></message>\n".encode()])
def test_markup_declaration_mid_stream_is_restricted_xml(decl, before):
    """RFC 6120 §11.1: a DTD is restricted XML wherever it appears, whatever the chunking."""
    data = (HEADER, MESSAGE, before, decl)
    assert stream_error(*data).condition == "restricted-xml"
    assert stream_error(*data, bytewise=True).condition == "restricted-xml"
    assert stream_error(b"".join(data)).condition == "restricted-xml"


def test_other_invalid_tokens_mid_stream_stay_not_well_formed():
    for bad in (b"<message><<", b"<message>\xff</message>", b"<message>&;</message>"):
        assert stream_error(HEADER, bad).condition in ("not-well-formed", "restricted-xml")
    assert stream_error(HEADER, b"<message><<!DOCTYPE x>").condition == "not-well-formed"
    assert stream_error(HEADER, "<message>\u00e9<".encode(), b"a b='1' b='2'/>").condition == "not-well-formed"
