"""Stanza routing: RFC 6120 §10 (server rules for processing XML stanzas) and RFC 6121 §8
(delivery rules for message, presence and iq to local bare and full JIDs).

The router knows sessions (``SessionRegistry``), never sockets.  Handlers are found by dict lookup:
iq get/set by ``(type, namespace, name, target)``, everything else by event name
``"<kind>/<target>"`` where target is ``host``, ``bare`` or ``full``.  The online-to-online message
path touches no storage and formats no log strings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from inspect import iscoroutine
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from ..jid import JID, InvalidJID
from ..stanza import Stanza, StanzaError
from ..xml.serializer import serialize
from .sessions import SessionRegistry

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


class Router:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.sessions = SessionRegistry()
        self.hosts: set[str] = set(server.config.domains)
        self.iq: dict[tuple[str, str, str, str], Handler] = {}
        self.hooks: dict[str, list[tuple[int, Handler]]] = {}
        self._chains: dict[str, list[Handler]] = {}
        self._pending_iq: dict[str, asyncio.Future] = {}
        self._iq_counter = 0
        self.tasks: set[asyncio.Task] = set()

    # -- registration -------------------------------------------------------------------------
    def add_iq_handler(self, key: tuple[str, str, str, str], fn: Handler) -> None:
        if key in self.iq:
            raise ValueError(f"two modules handle iq {key}")
        self.iq[key] = fn

    def add_hook(self, event: str, priority: int, fn: Handler) -> None:
        lst = self.hooks.setdefault(event, [])
        lst.append((priority, fn))
        lst.sort(key=lambda p: -p[0])
        self._chains[event] = [f for _, f in lst]

    def chain(self, event: str) -> list[Handler]:
        return self._chains.get(event, [])

    def spawn(self, coro: Awaitable) -> asyncio.Task:
        """Run a coroutine in the background, logging its failure."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- events -------------------------------------------------------------------------------
    def fire(self, event: str, *args: Any) -> Awaitable | None:
        """Run an event's handlers with ``args`` (non-stanza events).  Returns an awaitable when any
        handler is async (the caller may await it or hand it to ``spawn``)."""
        coros = []
        for fn in self.chain(event):
            try:
                r = fn(*args)
            except Exception:
                log.exception("handler for %s failed", event)
                continue
            if iscoroutine(r):
                coros.append(r)
        if coros:
            return _gather_logged(event, coros)
        return None

    def fire_stanza(self, event: str, st: Stanza) -> bool | Awaitable:
        """Run a stanza event chain.  True/awaitable = handled, False = nobody took it."""
        chain = self._chains.get(event)
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

    async def _continue_chain(self, event: str, coro: Awaitable, rest: list[Handler], st: Stanza) -> bool:
        try:
            r = await coro
        except Exception as e:
            self._failed(st, e, event)
            return True
        if r is None or r is False:
            for fn in rest:
                try:
                    r = fn(st)
                    if iscoroutine(r):
                        r = await r
                except Exception as e:
                    self._failed(st, e, event)
                    return True
                if r is not None and r is not False:
                    return True
            return False
        return True

    # -- entry points -------------------------------------------------------------------------
    def from_local(self, st: Stanza) -> Awaitable | None:
        """A stanza a local client sent (``from`` already stamped): ``pre-<kind>`` hooks, then route."""
        handled = self.fire_stanza("pre-" + st.kind, st)
        if handled is True:
            return None
        if handled is not False:
            return self._route_after(handled, st)  # type: ignore[arg-type]
        return self.route(st)

    async def _route_after(self, handled: Awaitable[bool], st: Stanza) -> None:
        if not await handled:
            r = self.route(st)
            if r is not None:
                await r

    def send(self, el: Element) -> Awaitable | None:
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
        origin = st.origin
        if origin is not None and st.from_ is not None and origin.jid == st.from_:
            origin.send(el)
        else:
            r = self.send(el)
            if r is not None:
                self.spawn(r)

    def route(self, st: Stanza) -> Awaitable | None:
        """RFC 6120 §10.4-10.5: deliver to a local entity, or (later) to a remote domain."""
        to = st.to
        if to is None:
            return None
        if to.domain not in self.hosts:
            return self._route_remote(st)
        if to.local is None:
            target = "host"
        elif to.resource is None:
            target = "bare"
        else:
            target = "full"
        kind = st.kind
        if kind == "iq":
            return self._route_iq(st, target)
        handled = self.fire_stanza(kind + "/" + target, st)
        if handled is True:
            return None
        if handled is not False:
            return self._default_after(handled, st, target)  # type: ignore[arg-type]
        return self._default(st, target)

    async def _default_after(self, handled: Awaitable[bool], st: Stanza, target: str) -> None:
        if not await handled:
            r = self._default(st, target)
            if r is not None:
                await r

    def _default(self, st: Stanza, target: str) -> Awaitable | None:
        if st.kind == "message":
            if target == "host":
                return None
            return self.deliver_message(st)
        # presence nobody handled: to a full JID goes through if that resource is online (§8.5.3.1)
        if target == "full":
            assert st.to is not None
            s = self.sessions.get(st.to)
            if s is not None:
                s.send(st.el)
        return None

    # -- message delivery, RFC 6121 §8.5 ------------------------------------------------------
    def deliver_message(self, st: Stanza) -> Awaitable | None:
        to = st.to
        assert to is not None
        mtype = st.type
        if to.resource is not None:
            s = self.sessions.get(to)
            if s is not None:
                s.send(st.el)
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
        resources = self.sessions.resources(to.bare)
        if resources:
            if mtype == "groupchat":
                self.reply(st, st.error("service-unavailable"))
                return None
            targets = [s for s in resources.values() if s.available and s.priority >= 0]
            if targets and mtype != "headline":
                top = max(s.priority for s in targets)
                targets = [s for s in targets if s.priority == top]
            if targets:
                if len(targets) == 1:
                    targets[0].send(st.el)
                else:
                    data = serialize(st.el)
                    for s in targets:
                        s.send_data(data)
                return None
        return self._undeliverable_message(st)

    async def _undeliverable_message(self, st: Stanza) -> None:
        """§8.5.2.2 / §8.5.1: no available resource, or no such account: offline storage or error."""
        to = st.to
        assert to is not None and to.local is not None
        exists = await self.server.storage.accounts.exists(to.domain, to.local)
        if exists and st.type in ("normal", "chat"):
            handled = self.fire_stanza("message/offline", st)
            if handled is not True and handled is not False:
                handled = await handled  # type: ignore[misc]
            if handled:
                return
        if st.type in ("normal", "chat", "groupchat"):
            self.reply(st, st.error("service-unavailable"))

    # -- iq, RFC 6120 §8.2.3 / RFC 6121 §8.5 --------------------------------------------------
    def _route_iq(self, st: Stanza, target: str) -> Awaitable | None:
        itype = st.type
        if itype == "get" or itype == "set":
            payload = st.payload
            if payload is None or len([c for c in st.el]) != 1:
                # §8.2.3: exactly one payload child
                self.reply(st, st.error("bad-request"))
                return None
            tag = payload.tag
            if tag[:1] == "{":
                ns, _, name = tag[1:].partition("}")
            else:
                ns, name = "jabber:client", tag
            fn = self.iq.get((itype, ns, name, target))
            if fn is not None:
                return self.call_iq(fn, st)
            if target == "full":
                assert st.to is not None
                s = self.sessions.get(st.to)
                if s is not None:
                    s.send(st.el)
                    return None
            self.reply(st, st.error("service-unavailable"))
            return None
        if itype in ("result", "error"):
            if target == "full":
                assert st.to is not None
                s = self.sessions.get(st.to)
                if s is not None:
                    s.send(st.el)
                    return None
            fut = self._pending_iq.pop(st.id or "", None)
            if fut is not None and not fut.done():
                fut.set_result(st)
            return None  # a result nobody asked for is dropped (RFC 6120 §8.2.3)
        self.reply(st, st.error("bad-request", "unknown iq type"))
        return None

    def call_iq(self, fn: Handler, st: Stanza) -> Awaitable | None:
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

    async def _finish_iq(self, coro: Awaitable, st: Stanza) -> None:
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

    async def request(self, el: Element, timeout: float = 30.0) -> Stanza:
        """Send a server-originated iq and wait for its result/error (raises TimeoutError)."""
        self._iq_counter += 1
        iq_id = f"rk{self._iq_counter}"
        el.set("id", iq_id)
        fut = asyncio.get_running_loop().create_future()
        self._pending_iq[iq_id] = fut
        try:
            r = self.send(el)
            if r is not None:
                await r
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending_iq.pop(iq_id, None)

    # -- remote -------------------------------------------------------------------------------
    def _route_remote(self, st: Stanza) -> Awaitable | None:
        """Federation (s2s) is not part of this build: RFC 6120 §10.4.3 remote-server-not-found."""
        if st.type != "error" and not (st.kind == "presence" and st.type in ("unavailable", "probe")):
            self.reply(st, st.error("remote-server-not-found"))
        return None


async def _gather_logged(event: str, coros: list) -> None:
    for r in await asyncio.gather(*coros, return_exceptions=True):
        if isinstance(r, BaseException):
            log.error("async handler for %s failed", event, exc_info=r)
