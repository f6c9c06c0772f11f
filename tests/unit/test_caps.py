"""XEP-0115 §5.1 verification string, checked against the XEP's own worked examples (§5.2, §5.3)."""

from xml.etree.ElementTree import Element, SubElement

from rookery.modules.caps import verification_string, verification_string_of
from rookery.modules.disco import data_form
from rookery.xml import ns

X = ns.DATA_FORMS


def test_simple_generation_example_of_xep_0115_section_5_2():
    identities = [("client", "pc", None, "Exodus 0.9.1")]
    features = [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/muc",
        "http://jabber.org/protocol/caps",
    ]
    assert verification_string(identities, features) == "QgayPKawpkPSDYmwT/WM94uAlu0="


def _softwareinfo_form() -> Element:
    x = Element(f"{{{X}}}x", type="result")

    def field(var, *values, type=None):
        f = SubElement(x, f"{{{X}}}field", var=var)
        if type:
            f.set("type", type)
        for v in values:
            SubElement(f, f"{{{X}}}value").text = v

    # deliberately out of order: the algorithm sorts fields and values
    field("software_version", "0.11")
    field("os", "Mac")
    field("FORM_TYPE", "urn:xmpp:dataforms:softwareinfo", type="hidden")
    field("ip_version", "ipv6", "ipv4", type="text-multi")
    field("os_version", "10.5.1")
    field("software", "Psi")
    return x


def test_complex_generation_example_of_xep_0115_section_5_3():
    q = Element(f"{{{ns.DISCO_INFO}}}query")
    SubElement(q, f"{{{ns.DISCO_INFO}}}identity", {ns.XML_LANG: "en", "category": "client",
                                                    "name": "Psi 0.11", "type": "pc"})
    SubElement(q, f"{{{ns.DISCO_INFO}}}identity", {ns.XML_LANG: "el", "category": "client",
                                                    "name": "\u03a8 0.11", "type": "pc"})
    for var in ("http://jabber.org/protocol/muc", "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#items"):
        SubElement(q, f"{{{ns.DISCO_INFO}}}feature", var=var)
    q.append(_softwareinfo_form())
    assert verification_string_of(q) == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_feature_and_identity_order_do_not_change_the_string():
    a = verification_string([("server", "im", None, "R"), ("pubsub", "pep", None, None)], ["b", "a", "c"])
    b = verification_string([("pubsub", "pep", None, None), ("server", "im", None, "R")], ["c", "b", "a"])
    assert a == b


def test_form_without_hidden_form_type_is_ignored():
    # §5.4: a form whose FORM_TYPE is missing or not hidden does not take part in the hash
    plain = verification_string([("server", "im", None, None)], ["x"])
    x = Element(f"{{{X}}}x", type="result")
    f = SubElement(x, f"{{{X}}}field", var="FORM_TYPE")
    SubElement(f, f"{{{X}}}value").text = "urn:example"
    assert verification_string([("server", "im", None, None)], ["x"], [x]) == plain


def test_data_form_helper_builds_a_hashable_xep_0128_form():
    form = data_form("urn:xmpp:dataforms:softwareinfo", {
        "ip_version": ["ipv4", "ipv6"], "os": "Mac", "os_version": "10.5.1",
        "software": "Psi", "software_version": "0.11",
    })
    identities = [("client", "pc", "el", "\u03a8 0.11"), ("client", "pc", "en", "Psi 0.11")]
    features = ["http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/muc"]
    assert verification_string(identities, features, [form]) == "q07IKJEyjvHSyhy//CH0CxmKi8w="
