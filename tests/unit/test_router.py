"""The router on its own (no sockets): RFC 6121 §8 delivery rules on sessions attached to recording
carriers, routing by the domain route table, the public delivery events, and handler handles."""

from __future__ import annotations

import asyncio
from xml.etree.ElementTree import Element, SubElement

import pytest

from rookery.jid import JID
from rookery.routing.hooks import EventBus, HandlerTable
from rookery.routing.registry import LocalSessionRegistry
from rookery.routing.router import Router
from rookery.routing.routes import RouteTable
from rookery.routing.tasks import Tasks
from rookery.stanza import Stanza, StanzaError
from rookery.streams.session import Session

ERR = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
DOMAIN = "example.org"


class Carrier:
    """Records what a session writes to its stream."""

    def __init__(self) -> None:
        self.sent: list[Element] = []
        self.closed = False
        self.closed_with: str | None = None

    def send(self, el: Element) -> None:
        self.sent.append(el)

    def send_data(self, data: str) -> None:
        from xml.etree.ElementTree import fromstring

        self.sent.append(fromstring(data))

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        self.closed = True
        self.closed_with = condition


class World:
    def __init__(self, accounts: tuple[str, ...] = ("juliet", "romeo")) -> None:
        self.events = EventBus()
        self.sessions = LocalSessionRegistry(self.events.filters)
        self.routes = RouteTable()
        self.table = HandlerTable(DOMAIN)
        self.routes.add_local(DOMAIN, self.table)
        self.tasks = Tasks()
        self.accounts = set(accounts)

        async def exists(host: str, user: str) -> bool:
            return host == DOMAIN and user in self.accounts

        self.router = Router(self.sessions, self.routes, self.events, self.tasks, exists)

    def online(self, full: str, priority: int = 0, available: bool = True) -> tuple[Session, Carrier]:
        s = Session(JID.parse(full), self.events.filters)
        c = Carrier()
        s.attach(c)
        assert self.sessions.add(s) is None
        self.sessions.update(s, priority=priority, available=available)
        return s, c

    async def route(self, xml_el: Element, origin: Session | None = None) -> None:
        frm = JID.parse(xml_el.get("from", "")) if xml_el.get("from") else None
        st = Stanza(xml_el, frm, JID.parse(xml_el.get("to", "")), origin)
        r = self.router.route(st)
        if r is not None:
            await r


def message(to: str, frm: str = "nurse@example.org/a", type: str | None = None, body: str = "hi") -> Element:
    el = Element("message", {"to": to, "from": frm})
    if type:
        el.set("type", type)
    SubElement(el, "body").text = body
    return el


def condition(el: Element) -> str | None:
    err = el.find("error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith(ERR) and c.tag != ERR + "text":
            return c.tag[len(ERR):]
    return None


# -- RFC 6121 §8.5 message delivery ---------------------------------------------------------------
async def test_message_to_full_jid_goes_to_that_resource_only():
    w = World()
    _, a = w.online("juliet@example.org/balcony")
    _, b = w.online("juliet@example.org/chamber", priority=5)
    await w.route(message("juliet@example.org/balcony"))
    assert [m.findtext("body") for m in a.sent] == ["hi"] and b.sent == []


async def test_chat_to_bare_jid_goes_to_highest_priority_resource():
    w = World()
    _, low = w.online("juliet@example.org/low", priority=1)
    _, high = w.online("juliet@example.org/high", priority=7)
    await w.route(message("juliet@example.org", type="chat"))
    assert len(high.sent) == 1 and low.sent == []


async def test_bare_jid_ties_get_it_all_and_negative_priority_never():
    w = World()
    _, a = w.online("juliet@example.org/a", priority=3)
    _, b = w.online("juliet@example.org/b", priority=3)
    _, neg = w.online("juliet@example.org/neg", priority=-1)
    await w.route(message("juliet@example.org"))
    assert len(a.sent) == len(b.sent) == 1 and neg.sent == []


async def test_headline_goes_to_every_non_negative_resource():
    w = World()
    _, a = w.online("juliet@example.org/a", priority=0)
    _, b = w.online("juliet@example.org/b", priority=9)
    _, neg = w.online("juliet@example.org/neg", priority=-5)
    await w.route(message("juliet@example.org", type="headline"))
    assert len(a.sent) == len(b.sent) == 1 and neg.sent == []


async def test_message_to_missing_full_jid_falls_back_to_the_bare_jid():
    w = World()
    _, a = w.online("juliet@example.org/a")
    await w.route(message("juliet@example.org/gone", type="chat"))
    assert len(a.sent) == 1


async def test_message_delivered_event_names_the_targets():
    w = World()
    seen: list[tuple[str, list[str]]] = []
    w.events.on("message-delivered", lambda st, targets: seen.append((st.el.findtext("body"), [t.jid.full for t in targets])))
    w.online("juliet@example.org/a", priority=1)
    w.online("juliet@example.org/b", priority=1)
    await w.route(message("juliet@example.org", body="x"))
    await w.route(message("juliet@example.org/a", body="y"))
    assert seen == [("x", ["juliet@example.org/a", "juliet@example.org/b"]), ("y", ["juliet@example.org/a"])]


async def test_undeliverable_message_goes_through_the_delivery_failed_fold_before_a_bounce():
    w = World()
    _, nurse = w.online("nurse@example.org/a")
    w.accounts.add("nurse")
    stored: list[str] = []

    async def store(handled: bool, st: Stanza) -> bool:
        if st.el.findtext("body") == "keep":
            stored.append(st.el.findtext("body") or "")
            return True
        return handled

    h = w.events.on("delivery-failed", store)
    await w.route(message("romeo@example.org", body="keep", type="chat"))
    assert stored == ["keep"] and nurse.sent == []  # taken: no error
    await w.route(message("romeo@example.org", body="other", type="chat"))
    assert [condition(m) for m in nurse.sent] == ["service-unavailable"]
    h.remove()
    await w.route(message("romeo@example.org", body="keep", type="chat"))
    assert stored == ["keep"] and len(nurse.sent) == 2  # unhooked: bounced


async def test_message_to_missing_account_bounces_without_delivery_failed():
    w = World()
    _, nurse = w.online("nurse@example.org/a")
    calls: list[Stanza] = []
    w.events.on("delivery-failed", lambda handled, st: calls.append(st) or handled)
    await w.route(message("nobody@example.org", type="chat"))
    assert calls == [] and [condition(m) for m in nurse.sent] == ["service-unavailable"]


async def test_error_message_to_offline_bare_jid_is_dropped():
    w = World()
    _, nurse = w.online("nurse@example.org/a")
    await w.route(message("romeo@example.org", type="error"))
    assert nurse.sent == []


# -- the domain route table -------------------------------------------------------------------------
async def test_remote_domain_is_remote_server_not_found_until_federation_routes_it():
    w = World()
    _, nurse = w.online("nurse@example.org/a")
    await w.route(message("romeo@montague.example"))
    assert [condition(m) for m in nurse.sent] == ["remote-server-not-found"]
    forwarded: list[Stanza] = []
    h = w.routes.set_remote(forwarded.append)
    await w.route(message("romeo@montague.example"))
    assert [f.to.domain for f in forwarded] == ["montague.example"] and len(nurse.sent) == 1
    h.remove()
    await w.route(message("romeo@montague.example"))
    assert len(nurse.sent) == 2


async def test_component_route_gets_its_domain_only():
    w = World()
    got: list[Stanza] = []
    w.routes.add_component("irc.example.org", got.append)
    await w.route(message("#chan%irc.libera.chat@irc.example.org"))
    assert [s.to.full for s in got] == ["#chan%irc.libera.chat@irc.example.org"]
    with pytest.raises(ValueError):
        w.routes.add_component("irc.example.org", got.append)


async def test_service_domain_has_its_own_handlers():
    """A disco#info to room@conference.D reaches the service's handler, never the account's."""
    w = World()
    service = HandlerTable("conference.example.org")
    w.routes.add_service("conference.example.org", "muc", service)
    calls: list[str] = []

    def account_info(st: Stanza) -> Element:
        calls.append("account")
        return st.result()

    def room_info(st: Stanza) -> Element:
        calls.append("room")
        return st.result(Element("{http://jabber.org/protocol/disco#info}query"))

    key = ("get", "http://jabber.org/protocol/disco#info", "query", "bare")
    w.table.add_iq(key, account_info)
    service.add_iq(key, room_info)
    s, c = w.online("juliet@example.org/a")

    def iq(to: str) -> Element:
        el = Element("iq", {"type": "get", "id": "1", "to": to, "from": s.jid.full})
        SubElement(el, "{http://jabber.org/protocol/disco#info}query")
        return el

    await w.route(iq("room@conference.example.org"), origin=s)
    await w.route(iq("romeo@example.org"), origin=s)
    assert calls == ["room", "account"]
    assert [m.get("type") for m in c.sent] == ["result", "result"]
    assert c.sent[0].get("from") == "room@conference.example.org"
    # a service stanza nobody handles: an iq is service-unavailable, a message too
    el = Element("iq", {"type": "get", "id": "2", "to": "conference.example.org", "from": s.jid.full})
    SubElement(el, "{urn:xmpp:ping}ping")
    await w.route(el, origin=s)
    await w.route(message("conference.example.org", frm=s.jid.full), origin=s)
    assert [condition(m) for m in c.sent[2:]] == ["service-unavailable", "service-unavailable"]


# -- handlers ------------------------------------------------------------------------------------
async def test_unhooked_iq_handler_is_service_unavailable_again():
    w = World()
    s, c = w.online("juliet@example.org/a")
    h = w.table.add_iq(("get", "urn:test", "q", "host"), lambda st: st.result())

    async def ask() -> Element:
        el = Element("iq", {"type": "get", "id": "q", "to": DOMAIN, "from": s.jid.full})
        SubElement(el, "{urn:test}q")
        await w.route(el, origin=s)
        return c.sent[-1]

    assert (await ask()).get("type") == "result"
    h.remove()
    h.remove()  # idempotent
    assert condition(await ask()) == "service-unavailable"
    w.table.add_iq(("get", "urn:test", "q", "host"), lambda st: st.result())  # the key is free again


async def test_stanza_chain_runs_by_priority_and_stops_at_the_first_taker():
    w = World()
    order: list[str] = []
    w.table.add_hook("message/bare", lambda st: order.append("low") or True, priority=-1)
    w.table.add_hook("message/bare", lambda st: order.append("high") and None, priority=10)

    async def middle(st: Stanza) -> bool:
        order.append("middle")
        return False

    w.table.add_hook("message/bare", middle)
    await w.route(message("romeo@example.org"))
    assert order == ["high", "middle", "low"]


async def test_handler_exceptions_become_stanza_errors():
    w = World()
    s, c = w.online("juliet@example.org/a")

    def refuse(st: Stanza) -> None:
        raise StanzaError("not-allowed")

    def bug(st: Stanza) -> None:
        raise RuntimeError("bug")

    w.table.add_iq(("get", "urn:test", "refuse", "host"), refuse)
    w.table.add_iq(("get", "urn:test", "bug", "host"), bug)
    for name in ("refuse", "bug"):
        el = Element("iq", {"type": "get", "id": name, "to": DOMAIN, "from": s.jid.full})
        SubElement(el, "{urn:test}" + name)
        await w.route(el, origin=s)
    assert [condition(m) for m in c.sent] == ["not-allowed", "internal-server-error"]


async def test_fold_threads_a_value_through_sync_and_async_handlers_in_priority_order():
    bus = EventBus()
    bus.on("count", lambda v, k: v + [f"a{k}"], priority=5)

    async def b(v: list[str], k: int) -> list[str]:
        await asyncio.sleep(0)
        return v + [f"b{k}"]

    bus.on("count", b)
    h = bus.on("count", lambda v, k: v + [f"c{k}"], priority=-5)
    assert bus.fold("nothing", 7) == 7
    assert await bus.fold("count", [], 1) == ["a1", "b1", "c1"]
    h.remove()
    assert await bus.fold("count", [], 2) == ["a2", "b2"]


async def test_outbound_filter_rewrites_or_drops_what_sessions_send():
    w = World()
    _, a = w.online("juliet@example.org/a")

    def tag(session: Session, el: Element) -> Element | None:
        if el.findtext("body") == "drop":
            return None
        SubElement(el, "{urn:test}seen", by=session.jid.resource or "")
        return el

    h = w.events.add_filter(tag)
    await w.route(message("juliet@example.org/a", body="one"))
    await w.route(message("juliet@example.org/a", body="drop"))
    h.remove()
    await w.route(message("juliet@example.org/a", body="two"))
    assert [m.findtext("body") for m in a.sent] == ["one", "two"]
    assert a.sent[0].find("{urn:test}seen").get("by") == "a" and a.sent[1].find("{urn:test}seen") is None


async def test_filters_apply_to_multi_resource_delivery_too():
    w = World()
    _, a = w.online("juliet@example.org/a")
    _, b = w.online("juliet@example.org/b")
    w.events.add_filter(lambda s, el: el if s.jid.resource == "a" else None)
    await w.route(message("juliet@example.org"))
    assert len(a.sent) == 1 and b.sent == []


# -- sessions apart from streams --------------------------------------------------------------------
async def test_detached_session_queues_and_keeps_its_registry_place_until_reattached():
    w = World()
    s, first = w.online("juliet@example.org/a")
    assert s.detach() is first
    await w.route(message("juliet@example.org/a", body="1"))
    await w.route(message("juliet@example.org", body="2"))  # still available: the bare JID reaches it
    assert first.sent == [] and s.queued == 2
    assert w.sessions.get(JID.parse("juliet@example.org/a")) is s
    second = Carrier()
    s.attach(second)
    await w.route(message("juliet@example.org/a", body="3"))
    assert [m.findtext("body") for m in second.sent] == ["1", "2", "3"] and s.queued == 0


async def test_registry_returns_the_replaced_session_and_removes_only_the_registered_one():
    w = World()
    old, _ = w.online("juliet@example.org/a")
    new = Session(JID.parse("juliet@example.org/a"), w.events.filters)
    assert w.sessions.add(new) is old
    assert w.sessions.remove(old) is False and w.sessions.get(new.jid) is new
    assert w.sessions.remove(new) is True and w.sessions.count() == 0
    with pytest.raises(AttributeError):
        w.sessions.update(new, jid=None)


# -- SessionRegistry.deliver_each: group chat fan-out -------------------------------------------------
def _groupchat() -> Element:
    el = Element("message", {"from": "room@conference.example.org/nurse", "type": "groupchat", "id": "g1"})
    SubElement(el, "body").text = "a <b> & 'c'"
    return el


def test_deliver_each_serializes_once_with_each_to() -> None:
    w = World()
    (s1, c1), (s2, c2) = w.online("juliet@example.org/a"), w.online("romeo@example.org/b")
    el = _groupchat()
    w.sessions.deliver_each([(s1, "juliet@example.org/a"), (s2, "romeo@example.org/b")], el)
    for c, to in ((c1, "juliet@example.org/a"), (c2, "romeo@example.org/b")):
        (got,) = c.sent
        assert got.get("to") == to and got.get("from") == "room@conference.example.org/nurse"
        assert got.findtext("body") == "a <b> & 'c'"


def test_deliver_each_queues_addressed_copies_for_detached_sessions() -> None:
    w = World()
    (s1, c1), (s2, _c2) = w.online("juliet@example.org/a"), w.online("romeo@example.org/b")
    s2.detach()
    w.sessions.deliver_each([(s1, "juliet@example.org/a"), (s2, "romeo@example.org/b")], _groupchat())
    (queued,) = s2.take_queue()
    assert queued.get("to") == "romeo@example.org/b"
    assert c1.sent[0].get("to") == "juliet@example.org/a"


def test_deliver_each_goes_through_the_filters_when_installed() -> None:
    w = World()
    (s1, c1), (s2, c2) = w.online("juliet@example.org/a"), w.online("romeo@example.org/b")
    seen: list[str] = []

    def f(session: Session, el: Element) -> Element | None:
        seen.append(el.get("to", ""))
        return None if session is s2 else el

    w.events.add_filter(f, 0)
    el = _groupchat()
    w.sessions.deliver_each([(s1, "juliet@example.org/a"), (s2, "romeo@example.org/b")], el)
    assert seen == ["juliet@example.org/a", "romeo@example.org/b"]
    assert [e.get("to") for e in c1.sent] == ["juliet@example.org/a"] and c2.sent == []
    assert el.get("to") is None  # the caller's element is not addressed
