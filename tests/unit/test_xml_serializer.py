"""The fast serializer (``rookery.xml.serializer``): what it writes parses back to the same tree
(RFC 6120 §4.8 namespaces, §11 XML restrictions), inside a stream or on its own."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement, fromstring

from hypothesis import given, settings
from hypothesis import strategies as st

from rookery.xml import StreamParser, ns, serialize
from rookery.xml.serializer import escape_attr, escape_text

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"
)


def parse_stanzas(xml: str | bytes) -> list[Element]:
    """The stanzas a c2s StreamParser delivers for ``xml`` sent after a stream header."""
    if isinstance(xml, str):
        xml = xml.encode()
    out: list[Element] = []
    parser = StreamParser(lambda root, nsmap: None, out.append, lambda: None)
    parser.feed(HEADER.encode() + xml)
    return out


def parse_one(xml: str | bytes) -> Element:
    [el] = parse_stanzas(xml)
    return el


def shape(el: Element, top: bool = True) -> tuple:
    return (
        el.tag,
        sorted(el.attrib.items()),
        el.text or None,
        None if top else (el.tail or None),
        [shape(c, False) for c in el],
    )


def round_trip(xml: str) -> Element:
    """parse -> serialize -> parse, asserting both parses agree."""
    first = parse_one(xml)
    text = serialize(first)
    second = parse_one(text)
    assert shape(second) == shape(first), text
    # well-formed inside a stream header, read by a plain XML parser
    fromstring(HEADER + text + "</stream:stream>")
    return second


# -- round trips of hand-written stanzas ---------------------------------------------------------


def test_message_round_trips_unchanged():
    xml = (
        "<message to='romeo@example.net' from='juliet@example.com/balcony' type='chat' id='m1' xml:lang='en'>"
        "<body>Wherefore art thou?</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    assert serialize(parse_one(xml)) == xml
    round_trip(xml)


def test_nested_namespaces_are_declared_only_where_they_change():
    xml = (
        "<iq type='result' id='r1'><query xmlns='jabber:iq:roster' ver='v1'>"
        "<item jid='romeo@example.net' subscription='both'><group>Friends</group></item>"
        "<item jid='nurse@example.com'/></query></iq>"
    )
    out = serialize(parse_one(xml))
    assert out == xml
    assert out.count("xmlns=") == 1
    round_trip(xml)


def test_element_back_in_an_outer_namespace_is_redeclared():
    el = round_trip("<message><x xmlns='urn:a'><y xmlns='urn:b'><z xmlns='urn:a'/></y></x></message>")
    assert el[0][0][0].tag == "{urn:a}z"


def test_attribute_values_needing_escaping_round_trip():
    el = round_trip('<message id="a\'b&quot;c&lt;d&gt;e&amp;f"/>')
    assert el.get("id") == "a'b\"c<d>e&f"
    assert "&apos;" in serialize(el) and "&quot;" in serialize(el)


def test_text_needing_escaping_round_trips():
    el = round_trip("<message><body>1 &lt; 2 &amp;&amp; 3 &gt; 2 ]]&gt; \"'</body></message>")
    assert el[0].text == "1 < 2 && 3 > 2 ]]> \"'"


def test_whitespace_characters_in_attributes_survive_attribute_value_normalization():
    # a parser turns literal tab/newline/CR in attribute values into spaces: they must be references
    el = round_trip("<message id='a&#9;b&#10;c&#13;d'/>")
    assert el.get("id") == "a\tb\nc\rd"
    assert "&#9;" in serialize(el) and "&#10;" in serialize(el) and "&#13;" in serialize(el)


def test_carriage_return_in_text_survives_end_of_line_normalization():
    el = round_trip("<message><body>line1&#13;\nline2&#13;</body></message>")
    assert el[0].text == "line1\r\nline2\r"


def test_tails_round_trip():
    el = round_trip(
        "<message><html xmlns='http://jabber.org/protocol/xhtml-im'>"
        "<body xmlns='http://www.w3.org/1999/xhtml'>a <b>bold</b> and <i>it</i>.</body>"
        "</html></message>"
    )
    body = el[0][0]
    assert body.text == "a "
    assert [(c.text, c.tail) for c in body] == [("bold", " and "), ("it", ".")]


def test_top_level_tail_is_not_written():
    el = parse_one("<message/>\n  ")
    el.tail = "\n  "
    assert serialize(el) == "<message/>"


def test_xml_lang_uses_the_xml_prefix():
    el = round_trip("<message xml:lang='de'><body xml:lang='en'>hi</body></message>")
    assert el.get(ns.XML_LANG) == "de"
    assert serialize(el) == "<message xml:lang='de'><body xml:lang='en'>hi</body></message>"


def test_namespaced_attributes_get_a_declared_prefix():
    el = round_trip("<message xmlns:p='urn:p' xmlns:q='urn:q' p:a='1' q:b='2' p:c='3'><x p:d='4'/></message>")
    assert el.get("{urn:p}a") == "1" and el.get("{urn:q}b") == "2" and el[0].get("{urn:p}d") == "4"
    out = serialize(el)
    assert out.count("xmlns:ns0='urn:p'") == 2  # on the message and on x
    assert "xmlns:ns1='urn:q'" in out


def test_stream_namespace_elements_are_written_with_the_stream_prefix():
    features = Element("{%s}features" % ns.STREAM)
    SubElement(features, "{%s}starttls" % ns.TLS)
    SubElement(
        SubElement(features, "{%s}mechanisms" % ns.SASL), "{%s}mechanism" % ns.SASL
    ).text = "SCRAM-SHA-1"
    out = serialize(features)
    assert out == (
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism></mechanisms>"
        "</stream:features>"
    )
    assert shape(parse_one(out)) == shape(features)

    error = Element("{%s}error" % ns.STREAM)
    SubElement(error, "{%s}conflict" % ns.STREAMS_ERR)
    SubElement(error, "{%s}text" % ns.STREAMS_ERR).text = "Replaced by new connection"
    out = serialize(error)
    assert out.startswith("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
    assert out.endswith("</stream:error>")
    assert shape(parse_one(out)) == shape(error)


def test_stream_namespace_element_inside_a_stanza_is_self_contained():
    """Stanzas are stored (offline, pending subscriptions) and re-read with ``fromstring``: one that
    carries a stream-namespace element must not depend on the stream header's ``stream`` prefix."""
    el = round_trip(
        "<message><stream:features/><x xmlns:s='http://etherx.jabber.org/streams'><s:y/></x></message>"
    )
    assert el[0].tag == "{%s}features" % ns.STREAM
    standalone = fromstring(serialize(el))
    assert standalone[0].tag == "{%s}features" % ns.STREAM
    assert standalone[1][0].tag == "{%s}y" % ns.STREAM


def test_xml_namespace_element_is_written_with_the_xml_prefix():
    """``<xml:foo/>`` is legal input; ``<foo xmlns='http://www.w3.org/XML/1998/namespace'/>`` is not
    (it would break the recipient's stream)."""
    el = round_trip("<message><xml:foo xml:lang='en'><bar/></xml:foo></message>")
    assert el[0].tag == "{%s}foo" % ns.XML
    assert el[0][0].tag == "{jabber:client}bar"  # in the content namespace, but not inherited from the stanza
    assert serialize(el) == "<message><xml:foo xml:lang='en'><bar xmlns='jabber:client'/></xml:foo></message>"


def test_forwarded_message_keeps_the_client_namespace():
    xml = (
        "<message to='a@example.com'><forwarded xmlns='urn:xmpp:forward:0'>"
        "<delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>"
        "<message xmlns='jabber:client' to='b@example.com'><body>hi</body></message>"
        "</forwarded></message>"
    )
    el = round_trip(xml)
    assert serialize(el) == xml


def test_default_namespace_argument_suppresses_the_declaration():
    q = Element("{jabber:iq:roster}query")
    SubElement(q, "{jabber:iq:roster}item", jid="a@example.com")
    assert serialize(q, "jabber:iq:roster") == "<query><item jid='a@example.com'/></query>"
    assert serialize(q) == "<query xmlns='jabber:iq:roster'><item jid='a@example.com'/></query>"


def test_empty_text_is_self_closing():
    el = Element("message")
    el.text = ""
    assert serialize(el) == "<message/>"


def test_non_ascii_text_and_attributes_round_trip():
    el = round_trip("<message id='日本'><body>grüße 🎉 \u00a0\u200b</body></message>")
    assert el.get("id") == "日本"
    assert el[0].text == "grüße 🎉 \u00a0\u200b"


def test_escape_helpers():
    assert escape_text("a<b>&c\r\"'") == "a&lt;b&gt;&amp;c&#13;\"'"
    assert escape_attr("a<b>&c'\"\t\n\r") == "a&lt;b&gt;&amp;c&apos;&quot;&#9;&#10;&#13;"


# -- property: random trees round-trip -----------------------------------------------------------

_XML_CHAR = st.one_of(
    st.sampled_from("\t\n\r&<>'\"]"),
    st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)).filter(
        lambda c: c not in "\ufffe\uffff"
    ),
)
_TEXT = st.none() | st.text(_XML_CHAR, min_size=1, max_size=12)
_LOCAL = st.sampled_from(["message", "body", "x", "item", "query", "a-b", "c.d", "_e", "ünï", "q1"])
# "" is the content namespace (jabber:client) inside the stanza and no namespace below a foreign one
_NAMESPACES = ["", "", "urn:a", "urn:b:c", "http://example.com/x?y=1&z='2'", ns.CLIENT, ns.STREAM, ns.XML]
_ATTR_NAMES = st.sampled_from(
    ["id", "to", "type", "a-b", "ünï", "{urn:a}id", "{urn:b:c}n", "{%s}lang" % ns.XML, "{%s}x" % ns.STREAM]
)


# What an un-namespaced child means where it stands (the serializer writes no declaration for it unless
# its parent changed the default namespace):
CHAIN = "chain"  # the stream's content namespace, inherited from the stanza: the parser strips it
NOCHAIN = "nochain"  # the content namespace below a prefixed (xml:, stream:) element: not stripped
NONE = "none"  # below another default namespace it gets xmlns='': no namespace


@st.composite
def trees(draw, depth: int = 0, context: str = CHAIN) -> Element:
    """Element trees in the form the parser gives them: the content namespace inherited from the
    stream is stripped, and only that."""
    namespace = draw(st.sampled_from(_NAMESPACES))
    local = draw(_LOCAL)
    if namespace in ("", ns.CLIENT) and context == CHAIN:
        tag, child_context = local, CHAIN
    elif namespace in ("", ns.CLIENT) and context == NOCHAIN:
        tag, child_context = "{%s}%s" % (ns.CLIENT, local), NONE
    elif namespace == "":
        tag, child_context = local, NONE
    elif namespace == ns.XML or (namespace == ns.STREAM and depth == 0):  # written with a prefix
        tag, child_context = "{%s}%s" % (namespace, local), NONE if context == NONE else NOCHAIN
    else:
        tag, child_context = "{%s}%s" % (namespace, local), NONE
    el = Element(tag)
    for name in draw(st.lists(_ATTR_NAMES, max_size=3, unique=True)):
        el.set(name, draw(st.text(_XML_CHAR, max_size=8)))
    el.text = draw(_TEXT)
    if depth < 3:
        for child in draw(st.lists(trees(depth + 1, child_context), max_size=3)):
            child.tail = draw(_TEXT)
            el.append(child)
    return el


@settings(max_examples=150, deadline=None)
@given(trees())
def test_random_trees_round_trip(tree):
    text = serialize(tree)
    # well-formed in a stream, for a plain XML parser too
    fromstring(HEADER + text + "</stream:stream>")
    assert shape(parse_one(text)) == shape(tree), text


@settings(max_examples=50, deadline=None)
@given(trees())
def test_serialization_is_stable(tree):
    once = serialize(parse_one(serialize(tree)))
    assert serialize(parse_one(once)) == once
