"""XEP-0114 components without sockets: the ``[components]`` settings, the route of a configured domain
while its component is away, and which served domain lists a component in disco#items."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

import pytest

from rookery.components import Components
from rookery.config import ConfigError, load_config
from rookery.jid import JID
from rookery.routing.hooks import EventBus, HandlerTable
from rookery.routing.routes import COMPONENT, RouteTable
from rookery.stanza import Stanza


def _config(tmp_path, text: str):  # noqa: ANN001
    p = tmp_path / "rookery.toml"
    p.write_text(text)
    return load_config(str(p))


def test_components_defaults_listen_on_loopback_and_configure_nothing():
    cfg = load_config(None)
    assert cfg.components.listen == ["127.0.0.1:5347"]
    assert cfg.components.secrets == {}


def test_component_domains_are_normalized(tmp_path):
    cfg = _config(tmp_path, '[components]\nlisten = ["127.0.0.1:15347"]\nsecrets = { "IRC.Example.ORG" = "s" }\n')
    assert cfg.components.secrets == {"irc.example.org": "s"}
    assert cfg.components.listen == ["127.0.0.1:15347"]


@pytest.mark.parametrize("text, key", [
    ('[components]\nsecrets = { "a@b.org" = "s" }\n', "components.secrets"),
    ('[components]\nsecrets = { "irc.example.org" = "" }\n', "components.secrets"),
    ('[components]\nsecrets = { "localhost" = "s" }\n', "components.secrets"),
    ('[components]\nlisten = ["nowhere"]\n', "components.listen"),
    ('[components]\npassword = "s"\n', "components.password"),
])
def test_bad_component_settings_stop_start_up_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _config(tmp_path, text)


class _Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[Stanza, Element]] = []

    def __call__(self, st: Stanza, el: Element) -> None:
        self.sent.append((st, el))


def _components(secrets: dict[str, str], routes: RouteTable | None = None) -> tuple[Components, _Replies]:
    replies = _Replies()
    c = Components(secrets, ["example.org", "chat.example.net"], routes or RouteTable(), EventBus(),
                   lambda st: None, replies, lambda aw: aw)
    return c, replies


def test_configured_domains_are_component_routes_even_while_disconnected():
    routes = RouteTable()
    c, _ = _components({"irc.example.org": "s"}, routes)
    c.install()
    r = routes.get("irc.example.org")
    assert r.kind == COMPONENT and r.forward is not None
    assert routes.get("other.example.com").kind != COMPONENT  # others still fall through to remote
    c.uninstall()
    assert routes.get("irc.example.org").kind != COMPONENT


def test_a_component_domain_taken_by_an_internal_service_stops_start_up():
    routes = RouteTable()
    routes.add_service("conference.example.org", "muc", HandlerTable("conference.example.org"))
    c, _ = _components({"irc.example.org": "a", "conference.example.org": "b"}, routes)
    with pytest.raises(ConfigError, match="conference.example.org"):
        c.install()
    assert routes.get("irc.example.org").kind != COMPONENT  # nothing half-installed


@pytest.mark.parametrize("xml, bounced", [
    ("<message type='chat'><body>x</body></message>", True),
    ("<message type='groupchat'/>", True),
    ("<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>", True),
    ("<presence type='subscribe'/>", True),
    ("<presence/>", True),
    ("<message type='error'/>", False),
    ("<iq type='result' id='1'/>", False),
    ("<iq type='error' id='1'/>", False),
    ("<presence type='unavailable'/>", False),
    ("<presence type='probe'/>", False),
])
def test_a_disconnected_component_bounces_service_unavailable_wait_but_never_errors(xml, bounced):
    from xml.etree.ElementTree import fromstring

    routes = RouteTable()
    c, replies = _components({"irc.example.org": "s"}, routes)
    c.install()
    el = fromstring(xml)
    st = Stanza(el, JID.parse("juliet@example.org/balcony"), JID.parse("bob@irc.example.org"))
    routes.get("irc.example.org").forward(st)  # type: ignore[misc]
    assert bool(replies.sent) == bounced
    if bounced:
        err = replies.sent[0][1]
        assert err.get("type") == "error" and err.get("to") == "juliet@example.org/balcony"
        e = err.find("error")
        assert e is not None and e.get("type") == "wait"
        assert e.find("{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable") is not None


class _Stream:
    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.authenticated = True
        self.peer_ip = "127.0.0.1"
        self.since = 0.0
        self.stanzas_in = self.stanzas_out = 0
        self.forwarded: list[Any] = []

    def forward(self, st: Stanza) -> None:
        self.forwarded.append(st)


def test_connected_component_gets_the_route_then_gives_it_back():
    routes = RouteTable()
    c, replies = _components({"irc.example.org": "s"}, routes)
    c.install()
    s = _Stream("irc.example.org")
    assert c.authenticated(s) is None  # type: ignore[arg-type]
    st = Stanza(Element("message"), JID.parse("a@example.org"), JID.parse("x@irc.example.org"))
    routes.get("irc.example.org").forward(st)  # type: ignore[misc]
    assert s.forwarded == [st] and not replies.sent
    other = _Stream("irc.example.org")
    assert c.authenticated(other) == ("conflict", "a component is already connected for this domain")  # type: ignore[arg-type]
    c.stream_ended(other)  # type: ignore[arg-type]  # the refused one ending changes nothing
    assert c.connected["irc.example.org"] is s
    c.stream_ended(s)  # type: ignore[arg-type]
    assert "irc.example.org" not in c.connected
    routes.get("irc.example.org").forward(st)  # type: ignore[misc]
    assert len(replies.sent) == 1 and routes.get("irc.example.org").kind == COMPONENT


def test_disco_items_list_a_component_under_its_parent_domain_or_everywhere():
    c, _ = _components({"irc.example.org": "a", "gw.elsewhere.com": "b", "muc.chat.example.net": "c"})
    c.install()
    for d in ("irc.example.org", "gw.elsewhere.com", "muc.chat.example.net"):
        assert c.authenticated(_Stream(d)) is None  # type: ignore[arg-type]
    assert {j for j, _ in c.events.fold("disco-items", [], "example.org")} == {"irc.example.org", "gw.elsewhere.com"}
    assert {j for j, _ in c.events.fold("disco-items", [], "chat.example.net")} == {"gw.elsewhere.com",
                                                                                   "muc.chat.example.net"}
