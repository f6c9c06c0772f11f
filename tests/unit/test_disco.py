"""XEP-0030 disco#info assembly from module declarations, with XEP-0128 forms and XEP-0115 hashing."""

from types import SimpleNamespace
from xml.etree.ElementTree import Element

from rookery.config import Config
from rookery.module import Module, fold
from rookery.module_manager import ModuleManager
from rookery.modules.caps import NODE, verification_string_of
from rookery.modules.disco import data_form
from rookery.server import Server
from rookery.xml import ns

Q = f"{{{ns.DISCO_INFO}}}"


class Weather(Module):
    name = "weather"
    features = ["urn:example:weather", "urn:xmpp:ping"]
    account_features = ["urn:example:weather#account"]
    identities = [("pubsub", "pep", None), ("server", "im", "Duplicate")]

    @fold("disco-forms")
    def forms(self, forms, host):
        return forms + [data_form("http://jabber.org/network/serverinfo", {"abuse-addresses": f"mailto:abuse@{host}"})]

    @fold("disco-items")
    def items(self, items, host):
        return items + [(f"weather.{host}", "Weather")]


class Mods:
    """The loaded modules of a server that is not started (no storage, no listeners)."""

    def __init__(self, *extra, modules=("disco", "caps")):
        cfg = Config(domains=["example.org"], modules=list(modules))
        self.server = srv = Server(cfg)
        self.manager = m = ModuleManager(cfg, router=srv.router, sessions=srv.sessions, routes=srv.routes,
                                         events=srv.events, tables=srv.tables, elements=srv.elements,
                                         storage=None, tasks=srv.tasks, started_at=0.0)
        for name, hosts in m.plan():
            m.load(name, hosts)
        for cls in extra:
            m.load(cls, ["example.org"])
        srv.events.fire("modules-changed")

    def __getitem__(self, name):
        return self.manager.modules[name]


def make_server():
    srv = SimpleNamespace(modules=Mods(Weather))
    return srv


def test_info_collects_identities_features_and_forms():
    srv = make_server()
    q = srv.modules["disco"].info_element("example.org")
    idents = [(i.get("category"), i.get("type"), i.get("name")) for i in q.findall(Q + "identity")]
    # server/im once (XEP-0030 §3.1: no two identities with the same category+type+lang)
    assert idents == [("pubsub", "pep", None), ("server", "im", "Rookery")]
    features = [f.get("var") for f in q.findall(Q + "feature")]
    assert features == sorted(set(features))
    assert {ns.DISCO_INFO, ns.DISCO_ITEMS, "urn:example:weather", "urn:xmpp:ping"} <= set(features)
    forms = q.findall(f"{{{ns.DATA_FORMS}}}x")
    assert len(forms) == 1
    assert forms[0].find(f".//{{{ns.DATA_FORMS}}}value").text == "http://jabber.org/network/serverinfo"
    assert q.get("node") is None
    assert srv.modules["disco"].info_element("example.org", "n").get("node") == "n"


def test_account_info_has_account_identity_and_account_features():
    srv = make_server()
    q = srv.modules["disco"].account_info_element("example.org")
    assert [(i.get("category"), i.get("type")) for i in q.findall(Q + "identity")] == [("account", "registered")]
    features = {f.get("var") for f in q.findall(Q + "feature")}
    assert "urn:example:weather#account" in features and "urn:example:weather" not in features


def test_items_from_modules():
    srv = make_server()
    items = srv.modules["disco"].items("example.org")
    assert [(i.get("jid"), i.get("name")) for i in items] == [("weather.example.org", "Weather")]


def test_caps_ver_covers_the_forms_and_answers_its_node():
    srv = make_server()
    caps = srv.modules["caps"]
    disco = srv.modules["disco"]
    ver = caps.ver("example.org")
    assert ver == verification_string_of(disco.info_element("example.org"))
    features = Element("features")
    assert caps.stream_feature(features, SimpleNamespace(local_domain="example.org")) is features
    c = features.find(f"{{{ns.CAPS}}}c")
    assert (c.get("hash"), c.get("node"), c.get("ver")) == ("sha-1", NODE, ver)
    request = SimpleNamespace(to=SimpleNamespace(domain="example.org"))
    assert caps._node_info(request, f"{NODE}#{ver}").get("node") == f"{NODE}#{ver}"
    assert caps._node_info(request, f"{NODE}#other") is None
