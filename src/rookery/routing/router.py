"""Stanza routing: RFC 6120 §10 (server rules for processing XML stanzas) and RFC 6121 §8 (delivery
rules for message, presence and iq to local bare and full JIDs).

The router looks the destination domain up in the route table (``routing.routes``): local accounts
and internal services dispatch through their own ``HandlerTable`` (iq by ``(type, namespace, name,
target)``, other stanzas by ``"<kind>/<target>"`` chains, target ``host``/``bare``/``full``); external
components and remote domains are forwarded.  It reaches sessions only through the
``SessionRegistry`` (``deliver(ref, element)``).  After the delivery rules pick targets it fires
``message-delivered(stanza, targets)``; a message no resource takes goes through the
``delivery-failed`` fold (offline storage) before it is bounced.

A handler returns ``None``/``False`` (not handled: the next one runs), ``True`` or an element (handled;
for an iq the element is the reply), or a coroutine, which is awaited and its result read the same
way.  A raised ``StanzaError`` is the reply; any other exception is logged and answered
``<internal-server-error/>``.  The online-to-online message path touches no storage and formats no
log strings.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from inspect import iscoroutine
from typing import Any
from xml.etree.ElementTree import Element

from ..jid import JID, InvalidJID
from ..stanza import Stanza, StanzaError
from .delivery import message_targets
from .hooks import EventBus, Handler, HandlerTable
from .registry import SessionRef, SessionRegistry
from .routes import LOCAL, SERVICE, Route, RouteTable
from .tasks import Tasks

log = logging.getLogger(__name__)

AccountExists = Callable[[str, str], Awaitable[bool]]

_NOT_HANDLED = (None, False)


class Router:
    def __init__(self, sessions: SessionRegistry, routes: RouteTable, events: EventBus, tasks: Tasks,
                 account_exists: AccountExists) -> None:
        self.sessions = sessions
        self.routes = routes
        self.events = events
        self.tasks = tasks
        self._account_exists = account_exists
        # hot path: the route of a domain is one dict lookup, no method call
        self._by_domain = routes.by_domain
        self._remote = routes.remote
        self._event_chains = events.chains  # the same dict for the bus's life

    def spawn(self, aw: Awaitable[Any]) -> Any:
        return self.tasks.spawn(aw)

    # -- stanza chains ------------------------------------------------------------------------
    def run_chain(self, table: HandlerTable, event: str, st: Stanza) -> bool | Awaitable[bool]:
        """Run a stanza chain.  True/awaitable = handled, False = nobody took it."""
        chain = table.chains.get(event)
        if not chain:
            return False
        for i, fn in enumerate(chain):
            try:
                r = fn(st)
            except Exception as e:
                self._failed(st, e, event)
                return True
            if r is None or r is False:
                continue
            if iscoroutine(r):
                return self._continue_chain(event, r, chain[i + 1:], st)
            return True
        return False

    async def _continue_chain(self, event: str, first: Awaitable[Any], rest: list[Handler], st: Stanza) -> bool:
        """The rest of a chain once a handler went asynchronous (same rules as ``run_chain``)."""
        r: Any = first
        for fn in (None, *rest):
            try:
                if fn is not None:
                    r = fn(st)
                if iscoroutine(r):
                    r = await r
            except Exception as e:
                self._failed(st, e, event)
                return True
            if r is not None and r is not False:
                return True
        return False

    # -- entry points -------------------------------------------------------------------------
    def from_local(self, st: Stanza) -> Awaitable[Any] | None:
        """A stanza a local client sent (``from`` already stamped): the sender's domain's
        ``pre-<kind>`` chain, then route."""
        frm = st.from_
        assert frm is not None
        table = (self._by_domain.get(frm.domain) or self._remote).table
        if table is not None:
            handled = self.run_chain(table, "pre-" + st.kind, st)
            if handled is True:
                return None
            if handled is not False:
                return self._route_after(handled, st)
        return self.route(st)

    async def _route_after(self, handled: Awaitable[bool], st: Stanza) -> None:
        if not await handled:
            r = self.route(st)
            if r is not None:
                await r

    def send(self, el: Element) -> Awaitable[Any] | None:
        """Route a server-generated element (its ``from``/``to`` set by the caller)."""
        try:
            to = JID.parse(el.get("to", "")) if el.get("to") else None
            frm = JID.parse(el.get("from", "")) if el.get("from") else None
        except InvalidJID:
            log.warning("dropping server-generated stanza with bad address")
            return None
        if to is None:
            return None
        return self.route(Stanza(el, frm, to))

    def reply(self, st: Stanza, el: Element) -> None:
        """Send a reply back to where ``st`` came from."""
        origin: SessionRef | None = st.origin
        if origin is not None and st.from_ is not None and origin.jid == st.from_:
            self.sessions.deliver(origin, el)
        else:
            r = self.send(el)
            if r is not None:
                self.spawn(r)

    def route(self, st: Stanza) -> Awaitable[Any] | None:
        """RFC 6120 §10.4-10.5: by the route of the destination domain."""
        to = st.to
        if to is None:
            return None
        route = self._by_domain.get(to.domain) or self._remote
        table = route.table
        if table is None:
            return self._forward(route, st)
        if to.local is None:
            target = "host"
        elif to.resource is None:
            target = "bare"
        else:
            target = "full"
        kind = st.kind
        if kind == "iq":
            return self._route_iq(route, table, st, target)
        handled = self.run_chain(table, kind + "/" + target, st)
        if handled is True:
            return None
        if handled is not False:
            return self._default_after(handled, route, st, target)
        return self._default(route, st, target)

    async def _iq_after(self, handled: Awaitable[bool], st: Stanza) -> None:
        if not await handled:
            self.reply(st, st.error("service-unavailable"))

    async def _default_after(self, handled: Awaitable[bool], route: Route, st: Stanza, target: str) -> None:
        if not await handled:
            r = self._default(route, st, target)
            if r is not None:
                await r

    def _default(self, route: Route, st: Stanza, target: str) -> Awaitable[Any] | None:
        if route.kind == SERVICE:
            # a service's stanzas nobody handled: RFC 6120 §8.3 service-unavailable for messages
            if st.kind == "message" and st.type != "error":
                self.reply(st, st.error("service-unavailable"))
            return None
        if st.kind == "message":
            if target == "host":
                return None
            return self.deliver_message(st)
        # presence nobody handled: to a full JID goes through if that resource is online (§8.5.3.1)
        if target == "full":
            assert st.to is not None
            s = self.sessions.get(st.to)
            if s is not None:
                self.sessions.deliver(s, st.el)
        return None

    # -- message delivery, RFC 6121 §8.5 ------------------------------------------------------
    def deliver_message(self, st: Stanza) -> Awaitable[Any] | None:
        to = st.to
        assert to is not None
        mtype = st.type
        sessions = self.sessions
        if to.resource is not None:
            s = sessions.get(to)
            if s is not None:
                sessions.deliver(s, st.el)
                if "message-delivered" in self._event_chains:
                    return self.events.fire("message-delivered", st, [s])
                return None
            # §8.5.3.2.1: no such resource
            if mtype == "error":
                return None
            if mtype == "groupchat":
                self.reply(st, st.error("service-unavailable"))
                return None
        if mtype == "error":
            # §8.5.2.1.1: an error message to a bare JID is silently dropped
            return None
        resources = sessions.resources(to.bare)
        if resources:
            if mtype == "groupchat":
                self.reply(st, st.error("service-unavailable"))
                return None
            targets = message_targets(resources.values(), mtype)
            if targets:
                sessions.deliver_many(targets, st.el)
                if "message-delivered" in self._event_chains:
                    return self.events.fire("message-delivered", st, targets)
                return None
        return self._undeliverable_message(st)

    async def _undeliverable_message(self, st: Stanza) -> None:
        """§8.5.2.2 / §8.5.1: no available resource, or no such account: ``delivery-failed`` (offline
        storage), else an error."""
        to = st.to
        assert to is not None and to.local is not None
        exists = await self._account_exists(to.domain, to.local)
        if exists and st.type in ("normal", "chat"):
            handled = self.events.fold("delivery-failed", False, st)
            if iscoroutine(handled):
                handled = await handled
            if handled:
                return
        if st.type in ("normal", "chat", "groupchat"):
            self.reply(st, st.error("service-unavailable"))

    # -- iq, RFC 6120 §8.2.3 / RFC 6121 §8.5 --------------------------------------------------
    def _route_iq(self, route: Route, table: HandlerTable, st: Stanza, target: str) -> Awaitable[Any] | None:
        itype = st.type
        local = route.kind == LOCAL
        if itype == "get" or itype == "set":
            el = st.el
            if len(el) != 1:
                # §8.2.3: exactly one payload child
                self.reply(st, st.error("bad-request"))
                return None
            tag = el[0].tag
            if tag[:1] == "{":
                ns, _, name = tag[1:].partition("}")
            else:
                ns, name = "jabber:client", tag
            fn = table.iq.get((itype, ns, name, target))
            if fn is not None:
                return self.call_iq(fn, st)
            if target == "full" and local:
                assert st.to is not None
                s = self.sessions.get(st.to)
                if s is not None:
                    self.sessions.deliver(s, st.el)
                    return None
            if not local:
                # a service's iq no handler took by its payload: its ``iq/<target>`` chain may
                # (a MUC room relays iqs to occupants, XEP-0045 §7.8)
                handled = self.run_chain(table, "iq/" + target, st)
                if handled is True:
                    return None
                if handled is not False:
                    return self._iq_after(handled, st)
            self.reply(st, st.error("service-unavailable"))
            return None
        if itype in ("result", "error"):
            if target == "full" and local:
                assert st.to is not None
                s = self.sessions.get(st.to)
                if s is not None:
                    self.sessions.deliver(s, st.el)
                    return None
            # results to the server or a service: for the module that asked (``iq-result/host`` …);
            # one nobody asked for is dropped (RFC 6120 §8.2.3)
            handled = self.run_chain(table, "iq-" + itype + "/" + target, st)
            if handled is not True and handled is not False:
                return handled
            return None
        self.reply(st, st.error("bad-request", "unknown iq type"))
        return None

    def call_iq(self, fn: Handler, st: Stanza) -> Awaitable[Any] | None:
        try:
            r = fn(st)
        except Exception as e:
            self._failed(st, e, "iq")
            return None
        if iscoroutine(r):
            return self._finish_iq(r, st)
        if r is not None:
            self.reply(st, r)
        return None

    async def _finish_iq(self, coro: Awaitable[Any], st: Stanza) -> None:
        try:
            r = await coro
        except Exception as e:
            self._failed(st, e, "iq")
            return
        if r is not None:
            self.reply(st, r)

    def _failed(self, st: Stanza, exc: Exception, what: str) -> None:
        """A handler raised: ``StanzaError`` is the reply; anything else is logged and answered
        ``<internal-server-error/>`` (the session lives on).  Errors are never answered with errors
        (RFC 6120 §8.3.1)."""
        if not isinstance(exc, StanzaError):
            log.error("handler for %s failed", what, exc_info=exc)
            exc = StanzaError("internal-server-error")
        if st.type != "error":
            self.reply(st, st.error(exc))

    # -- components and remote domains ------------------------------------------------------
    def _forward(self, route: Route, st: Stanza) -> Awaitable[Any] | None:
        fwd = route.forward
        if fwd is not None:
            return fwd(st)
        # no federation: RFC 6120 §10.4.3 remote-server-not-found
        if st.type != "error" and not (st.kind == "presence" and st.type in ("unavailable", "probe")):
            self.reply(st, st.error("remote-server-not-found"))
        return None
