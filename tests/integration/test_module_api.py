"""Integration tests of the module API v2 seams (docs/modules.md) against a real server on loopback,
with raw-XML clients over real sockets: service domains with their own handler tables, modules started
and stopped at run time, asynchronous fold hooks (stream features), outbound filters, stream element
handlers, detaching and re-attaching a session (the XEP-0198 seam), per-domain modules and module
options.

The test modules are defined here and started with ``modules.start_module(cls)`` on a server of
their own (``rookery_server_factory``), so no other test sees them."""

from __future__ import annotations

import asyncio
import copy
from typing import Any
from xml.etree.ElementTree import Element, SubElement

import pytest
from xmpp_helpers import HEADER, STREAM_NS, RawClient, error_condition, eventually
from xmpp_helpers import tls_login as login

from rookery.config import DEFAULT_MODULES
from rookery.jid import JID
from rookery.module import Module, element_handler, fold, hook, iq_handler, stream_filter
from rookery.stanza import Stanza
from rookery.streams.sasl import make_credentials

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
VERSION = "jabber:iq:version"
PING = "urn:xmpp:ping"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
C = "{jabber:client}"
T = 3.0  # every wait for the server is bounded by this many seconds


# -- test modules ---------------------------------------------------------------------------------
class EchoService(Module):
    """An internal service on ``echo.<domain>``: answers disco for itself and its "rooms", echoes
    messages sent to a room."""

    name = "echo"
    subdomain = "echo"
    service_identity = ("component", "generic", "Echo")

    @iq_handler("get", DISCO_INFO, "query", to="host", on="service")
    def service_info(self, st: Stanza) -> Element:
        q = Element(f"{{{DISCO_INFO}}}query")
        category, type_, name = self.service_identity
        SubElement(q, f"{{{DISCO_INFO}}}identity", category=category, type=type_, name=name or "")
        SubElement(q, f"{{{DISCO_INFO}}}feature", var="urn:test:echo")
        return st.result(q)

    @iq_handler("get", DISCO_INFO, "query", to="bare", on="service")
    def room_info(self, st: Stanza) -> Element:
        assert st.to is not None
        q = Element(f"{{{DISCO_INFO}}}query")
        SubElement(q, f"{{{DISCO_INFO}}}identity", category="conference", type="text", name=st.to.local or "")
        return st.result(q)

    @hook("message/bare", on="service")
    def echo(self, st: Stanza) -> bool:
        assert st.to is not None and st.from_ is not None
        out = Element("message", {"from": st.to.bare, "to": st.from_.full, "type": st.type})
        SubElement(out, "body").text = "echo: " + (st.el.findtext("body") or "")
        r = self.ctx.router.send(out)
        if r is not None:
            self.ctx.spawn(r)
        return True


class SlowFeature(Module):
    """An asynchronous ``stream-features`` fold, first in the chain (the sync ones run after it)."""

    name = "test-features"

    @fold("stream-features", priority=100)
    async def add_feature(self, features: Element, stream: Any) -> Element:
        await asyncio.sleep(0.05)
        features.append(Element("{urn:test:feature}x"))
        return features


class Marker(Module):
    """An outbound filter marking every message (a copy: the routed element may be shared)."""

    name = "test-filter"

    @stream_filter()
    def mark(self, session: Any, el: Element) -> Element:
        if el.tag != "message":
            return el
        el = copy.copy(el)
        el.append(Element("{urn:test:filter}seen"))
        return el


class Elements(Module):
    """A non-stanza top-level element handler."""

    name = "test-elements"

    @element_handler("{urn:test:elements}r")
    def on_r(self, stream: Any, el: Element) -> None:
        stream.send(Element("{urn:test:elements}a", h="1"))


class Resumption(Module):
    """The XEP-0198 seam, minimally: ``<keep/>`` marks a session to be kept detached when its
    connection is lost; ``<resume jid='...'/>`` (after SASL, before bind) re-attaches it."""

    name = "test-resume"

    @fold("session-stream-lost")
    def keep_detached(self, keep: bool, session: Any) -> bool:
        return True if session.ext.get("test.keep") else keep

    @element_handler("{urn:test:resume}keep")
    def on_keep(self, stream: Any, el: Element) -> None:
        if stream.session is None:
            stream.stream_error("not-authorized")
            return
        stream.session.ext["test.keep"] = True
        stream.send(Element("{urn:test:resume}kept"))

    @element_handler("{urn:test:resume}resume")
    def on_resume(self, stream: Any, el: Element) -> None:
        session = self.ctx.sessions.get(JID.parse(el.get("jid", "")))
        if session is None or not stream.authenticated:
            stream.send(Element("{urn:test:resume}failed"))
            return
        stream.send(Element("{urn:test:resume}resumed"))
        stream.resume(session)

    @element_handler("{urn:test:resume}steal")
    def on_steal(self, stream: Any, el: Element) -> None:
        """No checks of its own: ``stream.resume`` must refuse what is not this account's to take."""
        session = self.ctx.sessions.get(JID.parse(el.get("jid", "")))
        try:
            stream.resume(session)
        except ValueError as e:
            stream.send(Element("{urn:test:resume}refused", reason=str(e)))
            return
        stream.send(Element("{urn:test:resume}resumed"))


class AsyncKeep(Module):
    """Like ``Resumption``'s fold, but asynchronous (a module that looks something up first)."""

    name = "test-async-keep"

    @fold("session-stream-lost")
    async def keep_detached(self, keep: bool, session: Any) -> bool:
        await asyncio.sleep(0)
        return True


class Clash(Module):
    """A service whose start must fail: its element handler is already taken (by ``Elements``)."""

    name = "clash"
    subdomain = "clash"

    @iq_handler("get", DISCO_INFO, "query", to="host", on="service")
    def info(self, st: Stanza) -> Element:
        return st.result(Element(f"{{{DISCO_INFO}}}query"))

    @element_handler("{urn:test:elements}r")
    def on_r(self, stream: Any, el: Element) -> None:
        stream.send(Element("{urn:test:elements}clash"))


# -- helpers --------------------------------------------------------------------------------------
def identities(iq: Element) -> list[tuple[str | None, str | None]]:
    return [(i.get("category"), i.get("type")) for i in iq.iter(f"{{{DISCO_INFO}}}identity")]


def features_of(iq: Element) -> set[str]:
    return {f.get("var", "") for f in iq.iter(f"{{{DISCO_INFO}}}feature")}


def items_of(iq: Element) -> set[str]:
    return {i.get("jid", "") for i in iq.iter(f"{{{DISCO_ITEMS}}}item")}


async def disco(c: RawClient, what: str, to: str, id: str) -> Element:
    return await c.iq(f"<iq type='get' id='{id}' to='{to}'><query xmlns='{what}'/></iq>", T)


async def close_all(*clients: RawClient) -> None:
    for c in clients:
        await c.close()


def is_message(el: Element) -> bool:
    return el.tag == C + "message"


# -- 1. a service domain with its own handler table ---------------------------------------------
async def test_service_domain_answers_its_own_disco_and_messages(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, EchoService)
    jid, pw = s.make_user()
    c = await login(s, jid, pw)
    try:
        # disco#info to the service host: the service's table, not the server's disco
        r = await disco(c, DISCO_INFO, "echo.localhost", "i1")
        assert r.get("type") == "result", r.attrib
        assert r.get("from") == "echo.localhost"
        assert identities(r) == [("component", "generic")]
        assert features_of(r) == {"urn:test:echo"}

        # disco#info to a "room" (a bare JID on the service): the service's to="bare" handler, not
        # the account disco of the local domains (account/registered, or service-unavailable)
        r = await disco(c, DISCO_INFO, "room@echo.localhost", "i2")
        assert r.get("type") == "result", r.attrib
        assert r.get("from") == "room@echo.localhost"
        assert identities(r) == [("conference", "text")]
        assert ("account", "registered") not in identities(r)

        # the account disco still answers for accounts
        r = await disco(c, DISCO_INFO, jid, "i3")
        assert r.get("type") == "result", r.attrib
        assert ("account", "registered") in identities(r) and ("conference", "text") not in identities(r)

        # the server's disco#items lists the service domain
        r = await disco(c, DISCO_ITEMS, "localhost", "i4")
        assert r.get("type") == "result", r.attrib
        assert "echo.localhost" in items_of(r)

        # a message to a room is echoed by the service
        c.send("<message to='room@echo.localhost' type='chat' id='m1'><body>hello</body></message>")
        m = await c.recv_until(is_message, T)
        assert m.get("from") == "room@echo.localhost"
        assert m.get("to") == c.jid
        assert m.get("type") == "chat"
        assert m.findtext(C + "body") == "echo: hello"
    finally:
        await close_all(c)


# -- 2. stop and start at run time ------------------------------------------------------------------
async def test_stopping_a_service_unroutes_it_and_starting_again_restores_it(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, EchoService)
    jid, pw = s.make_user()
    c = await login(s, jid, pw)
    try:
        r = await disco(c, DISCO_INFO, "echo.localhost", "a1")
        assert r.get("type") == "result"

        s.call(s.server.modules.stop_module, "echo")
        assert not s.call_sync(lambda: "echo" in s.server.modules.modules)
        # an unrouted domain is remote, and there is no federation
        r = await disco(c, DISCO_INFO, "echo.localhost", "a2")
        assert r.get("type") == "error"
        assert error_condition(r) == "remote-server-not-found"
        c.send("<message to='room@echo.localhost' type='chat' id='m2'><body>anyone?</body></message>")
        m = await c.recv_until(is_message, T)
        assert m.get("type") == "error"
        assert error_condition(m) == "remote-server-not-found"
        r = await disco(c, DISCO_ITEMS, "localhost", "a3")
        assert r.get("type") == "result"
        assert "echo.localhost" not in items_of(r)

        s.call(s.server.modules.start_module, EchoService)
        r = await disco(c, DISCO_INFO, "room@echo.localhost", "a4")
        assert r.get("type") == "result", r.attrib
        assert identities(r) == [("conference", "text")]
        r = await disco(c, DISCO_ITEMS, "localhost", "a5")
        assert "echo.localhost" in items_of(r)
        c.send("<message to='room@echo.localhost' type='chat' id='m3'><body>again</body></message>")
        m = await c.recv_until(is_message, T)
        assert m.get("type") == "chat"
        assert m.findtext(C + "body") == "echo: again"
    finally:
        await close_all(c)


async def test_stopping_a_module_others_depend_on_is_refused(rookery_server_factory):
    s = rookery_server_factory()
    assert "roster" in s.call_sync(lambda: s.server.modules.modules["presence"].depends)
    with pytest.raises(ValueError, match="presence"):
        s.call(s.server.modules.stop_module, "roster")
    assert s.call_sync(lambda: "roster" in s.server.modules.modules)
    # and roster still works
    jid, pw = s.make_user()
    c = await login(s, jid, pw)
    try:
        r = await c.iq("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>", T)
        assert r.get("type") == "result", r.attrib
    finally:
        await close_all(c)


# -- 3. an asynchronous fold hook: stream features ------------------------------------------------
async def test_async_stream_features_fold_is_in_the_features_after_auth(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, SlowFeature)
    jid, pw = s.make_user()
    c = RawClient()
    try:
        f = await c.authenticate(s.direct_tls_port, jid, pw, tls=True)
        assert f.tag == f"{{{STREAM_NS}}}features"
        tags = [child.tag for child in f]
        assert "{urn:test:feature}x" in tags
        assert f"{{{BIND}}}bind" in tags
        # the sync folds after the async one ran too (roster versioning, caps)
        assert "{urn:xmpp:features:rosterver}ver" in tags
        assert "{http://jabber.org/protocol/caps}c" in tags
    finally:
        await close_all(c)


async def test_async_stream_features_come_before_a_pipelined_bind(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, SlowFeature)
    jid, pw = s.make_user()
    c = RawClient()
    try:
        await c.connect(s.direct_tls_port, tls=True)
        await c.open_stream("localhost")
        res = await c.auth_plain(jid.partition("@")[0], pw)
        assert res.tag.endswith("}success"), res.tag
        # the restarted stream's header and a bind, in one write: the features (held by the async
        # fold) must come complete, and first
        f = await c.open_stream(header=HEADER.format(to="localhost")
                                + f"<iq type='set' id='b1'><bind xmlns='{BIND}'><resource>p</resource></bind></iq>")
        assert f.tag == f"{{{STREAM_NS}}}features"
        assert "{urn:test:feature}x" in [child.tag for child in f]
        r = await c.recv(T)
        assert r.tag == C + "iq" and r.get("id") == "b1" and r.get("type") == "result", (r.tag, r.attrib)
        assert r.findtext(f".//{{{BIND}}}jid") == f"{jid}/p"
    finally:
        await close_all(c)


# -- 4. an outbound filter ------------------------------------------------------------------------
async def test_outbound_filter_marks_messages_until_stopped(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, Marker)
    ja, pa = s.make_user()
    jb, pb = s.make_user()
    a = await login(s, ja, pa)
    b = await login(s, jb, pb)
    try:
        a.send(f"<message to='{b.jid}' type='chat' id='f1'><body>one</body></message>")
        m = await b.recv_until(is_message, T)
        assert m.findtext(C + "body") == "one"
        assert m.find("{urn:test:filter}seen") is not None
        # other stanzas pass through untouched
        r = await a.iq(f"<iq type='get' id='p1' to='localhost'><ping xmlns='{PING}'/></iq>", T)
        assert r.get("type") == "result"
        assert r.find("{urn:test:filter}seen") is None

        s.call(s.server.modules.stop_module, "test-filter")
        a.send(f"<message to='{b.jid}' type='chat' id='f2'><body>two</body></message>")
        m = await b.recv_until(is_message, T)
        assert m.findtext(C + "body") == "two"
        assert m.find("{urn:test:filter}seen") is None
    finally:
        await close_all(a, b)


# -- 5. a non-stanza element handler -------------------------------------------------------------
async def test_element_handler_answers_after_bind_and_unknown_elements_are_stream_errors(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, Elements)
    jid, pw = s.make_user()
    c = await login(s, jid, pw)
    try:
        c.send("<r xmlns='urn:test:elements'/>")
        a = await c.recv(T)
        assert a.tag == "{urn:test:elements}a"
        assert a.get("h") == "1"
        # the stream still works
        r = await c.iq(f"<iq type='get' id='p2' to='localhost'><ping xmlns='{PING}'/></iq>", T)
        assert r.get("type") == "result"

        c.send("<zzz xmlns='urn:test:elements'/>")
        assert await c.stream_error(T) == "unsupported-stanza-type"
    finally:
        await close_all(c)


# -- 6. detach and re-attach a session (the XEP-0198 seam) ---------------------------------------
async def test_session_kept_detached_queues_and_resumes_on_a_new_connection(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, Resumption)
    srv = s.server
    jid, pw = s.make_user("juliet", "balcony")
    jb, pb = s.make_user()
    a = await login(s, jid, pw, resource="balcony")
    b = await login(s, jb, pb)
    a2 = RawClient()
    full = a.jid
    fj = JID.parse(full)

    def session_id() -> int | None:
        ref = srv.sessions.get(fj)
        return id(ref) if ref is not None else None

    def attached() -> bool:
        ref = srv.sessions.get(fj)
        return ref is not None and ref.attached

    try:
        first = s.call_sync(session_id)
        assert first is not None
        a.send("<keep xmlns='urn:test:resume'/>")
        k = await a.recv(T)
        assert k.tag == "{urn:test:resume}kept"

        a.writer.transport.abort()  # the TCP connection is gone, no closing handshake
        await eventually(lambda: not s.call_sync(attached))
        assert s.call_sync(session_id) == first  # still registered: detached, not ended

        b.send(f"<message to='{full}' type='chat' id='q1'><body>first</body></message>")
        b.send(f"<message to='{full}' type='chat' id='q2'><body>second</body></message>")
        await eventually(lambda: s.call_sync(lambda: srv.sessions.get(fj).queued) == 2)
        await b.expect_nothing(0.2)  # queued, not bounced

        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<resume xmlns='urn:test:resume' jid='{full}'/>")
        got = await a2.collect_until(lambda g: len(g) >= 3, T)
        assert got[0].tag == "{urn:test:resume}resumed"
        assert [(m.tag, m.get("id"), m.findtext(C + "body")) for m in got[1:]] == [
            (C + "message", "q1", "first"), (C + "message", "q2", "second")]
        assert all(m.get("from") == b.jid for m in got[1:])
        assert s.call_sync(session_id) == first
        assert s.call_sync(attached)

        # the resumed session is live on the new connection
        b.send(f"<message to='{full}' type='chat' id='q3'><body>third</body></message>")
        m = await a2.recv_until(is_message, T)
        assert m.get("id") == "q3" and m.findtext(C + "body") == "third"
        # and it sends as the same full JID
        a2.send(f"<message to='{b.jid}' type='chat' id='q4'><body>back</body></message>")
        m = await b.recv_until(is_message, T)
        assert m.get("from") == full and m.findtext(C + "body") == "back"
        assert s.call_sync(session_id) == first
    finally:
        await close_all(a2, b)


async def test_session_not_kept_ends_when_its_connection_is_lost(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, Resumption)
    srv = s.server
    jid, pw = s.make_user("juliet", "balcony")
    a = await login(s, jid, pw, resource="balcony")
    fj = JID.parse(a.jid)
    assert s.call_sync(lambda: srv.sessions.get(fj) is not None)
    a.writer.transport.abort()
    await eventually(lambda: s.call_sync(lambda: srv.sessions.get(fj) is None))
    # a new connection cannot resume it
    a2 = RawClient()
    try:
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<resume xmlns='urn:test:resume' jid='{fj.full}'/>")
        r = await a2.recv(T)
        assert r.tag == "{urn:test:resume}failed"
    finally:
        await close_all(a2)


# -- 7. per-domain modules (virtual hosts) -------------------------------------------------------
async def test_modules_enabled_per_domain(rookery_server_factory):
    s = rookery_server_factory(domains=["localhost", "example.test"],
                               vhosts={"example.test": {"modules": ["roster", "presence", "disco", "ping"]}})
    pw = "eve-secret"
    assert s.call(s.server.storage.accounts.create, "example.test", "eve", make_credentials(pw, iterations=4096))
    c = await login(s, "eve@example.test", pw)
    try:
        assert c.jid.startswith("eve@example.test/")
        r = await c.iq(f"<iq type='get' id='v1' to='example.test'><query xmlns='{VERSION}'/></iq>", T)
        assert r.get("type") == "error", r.attrib
        assert error_condition(r) == "service-unavailable"
        r = await c.iq(f"<iq type='get' id='v2' to='localhost'><query xmlns='{VERSION}'/></iq>", T)
        assert r.get("type") == "result", r.attrib
        assert r.findtext(f"{{{VERSION}}}query/{{{VERSION}}}name") == "Rookery"

        r = await disco(c, DISCO_INFO, "example.test", "d1")
        assert r.get("type") == "result"
        assert PING in features_of(r)
        assert VERSION not in features_of(r)
        r = await disco(c, DISCO_INFO, "localhost", "d2")
        assert VERSION in features_of(r)

        r = await c.iq(f"<iq type='get' id='p3' to='example.test'><ping xmlns='{PING}'/></iq>", T)
        assert r.get("type") == "result", r.attrib
        assert r.get("from") == "example.test"
    finally:
        await close_all(c)


# -- 8. module options ------------------------------------------------------------------------------
async def version_os(c: RawClient, to: str, id: str) -> Element | None:
    r = await c.iq(f"<iq type='get' id='{id}' to='{to}'><query xmlns='{VERSION}'/></iq>", T)
    assert r.get("type") == "result", r.attrib
    return r.find(f"{{{VERSION}}}query/{{{VERSION}}}os")


async def test_module_options_from_the_modules_table(rookery_server_factory):
    s = rookery_server_factory(modules={"enabled": list(DEFAULT_MODULES), "version": {"show_os": True}})
    assert s.call_sync(lambda: s.server.modules.modules["version"].ctx.options.show_os) is True
    jid, pw = s.make_user()
    c = await login(s, jid, pw)
    try:
        os_el = await version_os(c, "localhost", "o1")
        assert os_el is not None and os_el.text
    finally:
        await close_all(c)


async def test_module_options_per_virtual_host(rookery_server_factory):
    s = rookery_server_factory(domains=["localhost", "example.test"],
                               vhosts={"localhost": {"options": {"version": {"show_os": True}}}})
    jid, pw = s.make_user()
    c = await login(s, jid, pw)
    try:
        os_el = await version_os(c, "localhost", "o2")
        assert os_el is not None and os_el.text
        assert await version_os(c, "example.test", "o3") is None
    finally:
        await close_all(c)


async def test_resume_refuses_another_accounts_session_and_an_attached_one(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, Resumption)
    srv = s.server
    jid, pw = s.make_user("juliet", "balcony")
    jb, pb = s.make_user("romeo", "ladder")
    a = await login(s, jid, pw, resource="balcony")
    fj = JID.parse(a.jid)
    thief = RawClient()
    a2 = RawClient()
    try:
        # an attached session cannot be taken over, not even by its own account
        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<steal xmlns='urn:test:resume' jid='{fj.full}'/>")
        r = await a2.recv(T)
        assert r.tag == "{urn:test:resume}refused", r.tag
        assert s.call_sync(lambda: srv.sessions.get(fj).stream is not None)

        a.send("<keep xmlns='urn:test:resume'/>")
        assert (await a.recv(T)).tag == "{urn:test:resume}kept"
        a.writer.transport.abort()
        await eventually(lambda: s.call_sync(lambda: srv.sessions.get(fj).stream is None))
        b = await login(s, jb, pb)
        try:
            b.send(f"<message to='{fj.full}' type='chat' id='s1'><body>for juliet</body></message>")
            await eventually(lambda: s.call_sync(lambda: srv.sessions.get(fj).queued) == 1)
        finally:
            await close_all(b)

        # another account cannot take a detached session
        await thief.authenticate(s.direct_tls_port, jb, pb, tls=True)
        thief.send(f"<steal xmlns='urn:test:resume' jid='{fj.full}'/>")
        r = await thief.recv(T)
        assert r.tag == "{urn:test:resume}refused", r.tag
        await thief.expect_nothing(0.2)
        assert s.call_sync(lambda: srv.sessions.get(fj).stream is None)
        assert s.call_sync(lambda: srv.sessions.get(fj).queued) == 1

        # its own account can (a2 has no session yet)
        a2.send(f"<steal xmlns='urn:test:resume' jid='{fj.full}'/>")
        got = await a2.collect_until(lambda g: len(g) >= 2, T)
        assert [e.tag for e in got] == [C + "message", "{urn:test:resume}resumed"]
        assert got[0].findtext(C + "body") == "for juliet"
    finally:
        await close_all(thief, a2)


async def test_detached_session_replaced_by_a_new_bind_hands_over_its_queue(rookery_server_factory):
    """RFC 6120 §7.7.2.2 against a detached session: the new session wins, the old one ends, and
    what was queued for the old one is re-routed (here: to the new session with that full JID) — but
    after the bind result: until it, the client has no session and does not know its full JID."""
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, Resumption)
    srv = s.server
    jid, pw = s.make_user("juliet", "balcony")
    jb, pb = s.make_user()
    a = await login(s, jid, pw, resource="balcony")
    b = await login(s, jb, pb)
    fj = JID.parse(a.jid)
    a2 = RawClient()
    try:
        old = s.call_sync(lambda: id(srv.sessions.get(fj)))
        a.send("<keep xmlns='urn:test:resume'/>")
        assert (await a.recv(T)).tag == "{urn:test:resume}kept"
        a.writer.transport.abort()
        await eventually(lambda: s.call_sync(lambda: srv.sessions.get(fj).stream is None))
        b.send(f"<message to='{fj.full}' type='chat' id='r1'><body>queued</body></message>")
        await eventually(lambda: s.call_sync(lambda: srv.sessions.get(fj).queued) == 1)

        await a2.authenticate(s.direct_tls_port, jid, pw, tls=True)
        a2.send(f"<iq type='set' id='bind'><bind xmlns='{BIND}'><resource>balcony</resource></bind></iq>")
        got = await a2.collect_until(lambda g: len(g) >= 2, T)
        assert [(e.tag, e.get("id")) for e in got] == [(C + "iq", "bind"), (C + "message", "r1")]
        assert got[0].findtext(f".//{{{BIND}}}jid") == fj.full
        assert got[1].findtext(C + "body") == "queued"
        assert s.call_sync(lambda: id(srv.sessions.get(fj))) != old
        await b.expect_nothing(0.2)  # nothing bounced
    finally:
        await close_all(b, a2)


async def test_async_session_stream_lost_fold_keeps_the_session(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, AsyncKeep)
    srv = s.server
    jid, pw = s.make_user()
    a = await login(s, jid, pw)
    fj = JID.parse(a.jid)
    a.writer.transport.abort()
    await eventually(lambda: s.call_sync(lambda: srv.sessions.get(fj) is None
                                         or srv.sessions.get(fj).stream is None))
    await asyncio.sleep(0.1)
    assert s.call_sync(lambda: srv.sessions.get(fj) is not None), "the session was ended, not kept"


async def test_a_module_that_fails_to_start_leaves_nothing_behind(rookery_server_factory):
    s = rookery_server_factory()
    s.call(s.server.modules.start_module, Elements)
    with pytest.raises(ValueError, match="urn:test:elements"):
        s.call(s.server.modules.start_module, Clash)
    assert s.call_sync(lambda: "clash" not in s.server.modules.modules)
    jid, pw = s.make_user()
    c = await login(s, jid, pw)
    try:
        # the element handler in place is still the first module's
        c.send("<r xmlns='urn:test:elements'/>")
        assert (await c.recv(T)).tag == "{urn:test:elements}a"
        # clash.localhost must not be routed: a domain nobody serves is remote
        r = await disco(c, DISCO_INFO, "clash.localhost", "x1")
        assert error_condition(r) == "remote-server-not-found", (r.get("type"), error_condition(r))
        # once the element is free, the same module starts
        s.call(s.server.modules.stop_module, "test-elements")
        s.call(s.server.modules.start_module, Clash)
        r = await disco(c, DISCO_INFO, "clash.localhost", "x2")
        assert r.get("type") == "result", r.attrib
    finally:
        await close_all(c)
