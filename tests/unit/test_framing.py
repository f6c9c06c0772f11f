"""streams/framing.py: RFC 7395 and XEP-0206 framers, without sockets."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

import pytest

from rookery.streams.framing import BodyError, BOSHFramer, WebSocketFramer, parse_body, self_contained
from rookery.xml import XMLStreamError, ns
from rookery.xml.serializer import serialize


def test_self_contained_declares_what_the_header_would() -> None:
    m = Element("message", to="a@b")
    SubElement(m, "body").text = "hi"
    assert self_contained(serialize(m), ns.CLIENT) == "<message xmlns='jabber:client' to='a@b'><body>hi</body></message>"
    assert self_contained("<iq/>", ns.CLIENT) == "<iq xmlns='jabber:client'/>"
    f = Element("{%s}features" % ns.STREAM)
    assert self_contained(serialize(f), ns.CLIENT) == f"<stream:features xmlns:stream='{ns.STREAM}'/>"
    s = Element("{%s}success" % ns.SASL)
    assert self_contained(serialize(s), ns.CLIENT) == serialize(s)  # has its own xmlns


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def open(self, root: Element, nsmap: dict[str, str]) -> None:
        self.events.append(("open", root.tag))

    def element(self, el: Element) -> None:
        self.events.append(("element", el.tag))

    def close(self) -> None:
        self.events.append(("close", None))


def ws_parser(sink: Sink):  # noqa: ANN201
    return WebSocketFramer().new_parser(sink.open, sink.element, sink.close, ns.CLIENT, 65536, 32)


def test_websocket_frames() -> None:
    sink = Sink()
    p = ws_parser(sink)
    p.feed(f"<open xmlns='{ns.FRAMING}' to='localhost' version='1.0'/>".encode())
    p.feed(b"  <message xmlns='jabber:client'><body>x</body></message>\n")
    p.feed(f"<close xmlns='{ns.FRAMING}'/>".encode())
    assert sink.events == [("open", "{%s}open" % ns.FRAMING), ("element", "message"), ("close", None)]


@pytest.mark.parametrize("frame", [b"<a/><b/>", b"<a>", b"text", b"<a/>tail", b"", b"<!-- c --><a/>"])
def test_websocket_frame_must_be_one_element(frame: bytes) -> None:
    sink = Sink()
    p = ws_parser(sink)
    p.feed(f"<open xmlns='{ns.FRAMING}' to='localhost' version='1.0'/>".encode())
    with pytest.raises(XMLStreamError):
        p.feed(frame)
    assert sink.events == [("open", "{%s}open" % ns.FRAMING)]  # nothing of the bad frame took effect


def test_websocket_framer_output_is_nul_terminated_frames() -> None:
    f = WebSocketFramer()
    assert f.open(ns.CLIENT, "id1", "localhost", None).endswith(b"/>\x00")
    assert f.close() == f"<close xmlns='{ns.FRAMING}'/>\x00".encode()
    assert f.serialize(Element("presence")) == "<presence xmlns='jabber:client'/>\x00"
    assert f.adapt("<presence/>") == "<presence xmlns='jabber:client'/>\x00"


def test_parse_body() -> None:
    attrs = parse_body(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='5' sid='s' "
                       b"xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'/>")
    assert attrs["rid"] == "5" and attrs["{urn:xmpp:xbosh}restart"] == "true"
    for bad in (b"", b"<body", b"<x xmlns='http://jabber.org/protocol/httpbind'/>", b"<body/>",
                b"<?xml version='1.0'?><!DOCTYPE body><body xmlns='http://jabber.org/protocol/httpbind'/>"):
        with pytest.raises(BodyError):
            parse_body(bad)


def test_bosh_bodies_open_carry_and_close() -> None:
    sink = Sink()
    f = BOSHFramer()
    p = f.new_parser(sink.open, sink.element, sink.close, ns.CLIENT, 65536, 32)
    p.feed(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='localhost' xmpp:version='1.0' "
           b"xmlns:xmpp='urn:xmpp:xbosh'/>")
    # a stanza without its own xmlns inherits the body's namespace: it is a jabber:client stanza
    p.feed(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='2' sid='s'><message to='a@b'/>"
           b"<iq xmlns='jabber:client' type='get'/></body>")
    p.feed(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='3' sid='s' type='terminate'/>")
    assert sink.events == [("open", "{%s}stream" % ns.STREAM), ("element", "message"), ("element", "iq"),
                           ("close", None)]
    assert f.open(ns.CLIENT, "sid9", "localhost", None) == b"" and f.stream_id == "sid9"
