"""XEP-0160: Best Practices for Handling Offline Messages, with XEP-0203 delay stamps.

§2 "Process Flow": the router folds ``"delivery-failed"`` over a ``normal``/``chat`` message to an
existing local account that has no available resource of non-negative priority (RFC 6121 §8.5.2.2);
this module stores it with a XEP-0203 ``<delay xmlns='urn:xmpp:delay' from='domain' stamp='...'>Offline
Storage</delay>`` (§2: RECOMMENDED) and reports True, or False when the account's queue is full
(``offline.max_messages``), on which the router answers ``<service-unavailable/>`` (§2 step 3).
Messages whose only content is XEP-0085 chat states are not stored (§3 "Handling of Message Types") but
silently dropped (RFC 6121 §8.5.2.2.1 allows either), as are messages carrying a XEP-0334
``<no-store/>`` or ``<no-permanent-store/>`` hint.

Stored messages are delivered, oldest first, to the resource that next sends available presence with
non-negative priority (§2 step 5), in batches each removed from storage only once handed to the
transport (crash-safe): on the ``"initial-presence"`` event the presence module fires after
broadcasting a session's initial presence, and when an already available resource raises its
priority from negative to non-negative.  §4 "Service Discovery": the server advertises ``msgoffline``.

With XEP-0198 stream management enabled on the session (the ``smacks`` service), a batch is removed
only once the client acknowledged it (§4 "Acks"; the server asks with ``<r/>``), waiting at most
``ACK_WAIT`` seconds: what is not acknowledged by then, or when the session ends, stays stored (and
stream management does not route it again: one stored copy) and comes again on the next delivery.
A server killed while it waits loses nothing that the client did not confirm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any
from xml.etree.ElementTree import Element, ParseError, fromstring

from pydantic import Field

from ..module import Module, ModuleContext, Options, fold, hook
from ..routing.registry import SessionRef
from ..stanza import Stanza
from ..xml import ns, serialize
from .time import format_datetime

BATCH = 100  # stored messages read, sent and removed at a time
ACK_WAIT = 60.0  # seconds a batch waits for the client's XEP-0198 acknowledgement
CHATSTATES = "http://jabber.org/protocol/chatstates"
HINTS = "urn:xmpp:hints"
_DELAY = f"{{{ns.DELAY}}}delay"
_NO_STORE = (f"{{{HINTS}}}no-store", f"{{{HINTS}}}no-permanent-store")
# children that do not count as content when deciding whether a chat message is only a chat state
_NEUTRAL = {"thread", f"{{{HINTS}}}no-copy", "{urn:xmpp:sid:0}origin-id"}


def _priority(el: Element) -> int:
    p = el.find("priority")
    try:
        return int((p.text or "0").strip()) if p is not None else 0
    except ValueError:
        return 0


def is_chat_state_only(el: Element) -> bool:
    """True when the message's content is nothing but XEP-0085 chat-state notifications."""
    has_state = False
    for child in el:
        tag = child.tag
        if tag.startswith(f"{{{CHATSTATES}}}"):
            has_state = True
        elif tag not in _NEUTRAL:
            return False
    return has_state


def stamp(el: Element, domain: str, when: float | None = None) -> Element:
    """A copy of ``el`` with the XEP-0203 offline-storage delay (any ``delay`` ``domain`` put on
    it before, or a client forged in its name, is replaced)."""
    out = Element(el.tag, dict(el.attrib))
    out.text = el.text
    out.extend(c for c in el if not (c.tag == _DELAY and c.get("from") == domain))
    d = Element(_DELAY, {"from": domain, "stamp": format_datetime(when, fraction=True)})
    d.text = "Offline Storage"
    out.append(d)
    return out


class OfflineOptions(Options):
    #: most messages kept per user; further ones bounce with <service-unavailable/> (§2 step 3)
    max_messages: int = Field(1000, ge=0)


class Offline(Module):
    """XEP-0160 offline message store and delivery."""

    name = "offline"
    features = [ns.OFFLINE]
    Options = OfflineOptions

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self._delivering: set[tuple[str, str]] = set()

    @fold("delivery-failed")
    def store(self, handled: bool, st: Stanza) -> Awaitable[bool] | bool:
        """A message no resource took (RFC 6121 §8.5.2.2): store it (True: handled, no error)."""
        if handled or not self.ctx.enabled_for(st.to.domain if st.to else ""):
            return handled
        el = st.el
        if is_chat_state_only(el) or any(el.find(t) is not None for t in _NO_STORE):
            return True  # §3: not stored, dropped
        return self._store(st)

    async def _store(self, st: Stanza) -> bool:
        to = st.to
        assert to is not None and to.local is not None
        data = serialize(stamp(st.el, to.domain))
        return bool(await self.storage.offline.push(to.domain, to.local, data))

    @hook("initial-presence")
    def initial_presence(self, session: Any) -> Awaitable[None] | None:
        if getattr(session, "priority", 0) < 0:
            return None
        if self._tracker(session) is not None:
            # waiting for acknowledgements must not hold up the session's input (the acks)
            self.ctx.spawn(self.deliver(session))
            return None
        return self.deliver(session)

    def _tracker(self, session: Any) -> Any:
        """The session's XEP-0198 state (the ``smacks`` service), None without it."""
        if not self.ctx.has_service("smacks"):
            return None
        return self.ctx.service("smacks").tracker(session)

    @hook("pre-presence", priority=1000)
    def presence_update(self, st: Stanza) -> None:
        """An available resource going from negative to non-negative priority gets the messages
        stored meanwhile (§2 step 5).  Never handles the stanza."""
        session = st.origin
        if (
            st.to is None
            and st.type == "available"
            and session is not None
            and getattr(session, "available", False)
            and getattr(session, "priority", 0) < 0
            and _priority(st.el) >= 0
        ):
            self.ctx.spawn(self.deliver(session))
        return None

    async def deliver(self, session: SessionRef) -> None:
        """Send every stored message of the session's account to it, oldest first, in batches; a batch
        is removed from storage only once it was handed to the transport, so a crash at any moment
        loses none (issue F5; at worst a message comes twice, which clients de-duplicate by id)."""
        jid = session.jid
        assert jid.local is not None
        sessions = self.ctx.sessions
        key = (jid.domain, jid.local)
        if sessions.get(jid) is not session or key in self._delivering:
            return  # gone, or a delivery to this account is under way (it takes what is stored)
        self._delivering.add(key)
        sm = self.ctx.service("smacks") if self.ctx.has_service("smacks") else None
        try:
            while True:
                batch = await self.storage.offline.peek(jid.domain, jid.local, BATCH)
                if not batch or sessions.get(jid) is not session:
                    return  # done, or the session ended: the rest stays stored
                tracker = sm.tracker(session) if sm is not None else None
                sent: list[tuple[Any, int | None]] = []  # (stored id, stream management position)
                for item_id, data in batch:
                    try:
                        el = fromstring(data)
                    except ParseError:
                        self.log.warning("dropping unreadable offline message for %s", jid.bare)
                        sent.append((item_id, None))
                        continue
                    sessions.deliver(session, el)
                    if tracker is not None:
                        tracker.stored_elsewhere(tracker.out)
                        sent.append((item_id, tracker.out))
                    else:
                        sent.append((item_id, None))
                if tracker is None:
                    await asyncio.sleep(0)  # one loop turn: the transports write what is pending
                    await self.storage.offline.remove(jid.domain, jid.local, [i for i, _ in sent])
                    continue
                assert sm is not None
                positions = [p for _, p in sent if p is not None]
                if positions and not await sm.wait_acked(session, tracker, positions[-1], ACK_WAIT):
                    done = [i for i, p in sent if p is None or tracker.is_acked(p)]
                    if done:
                        await self.storage.offline.remove(jid.domain, jid.local, done)
                    self.log.info("%s acknowledged %d of %d offline messages; the rest stays stored",
                                  session.jid, len(done), len(sent))
                    return
                await self.storage.offline.remove(jid.domain, jid.local, [i for i, _ in sent])
        finally:
            self._delivering.discard(key)
