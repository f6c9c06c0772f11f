"""RFC 6121 §3 (presence subscriptions) and §4 (exchanging presence information).

Subscriptions follow the state machine of RFC 6121 Appendix A, written below as pure functions
(``outbound`` for A.2, ``inbound`` for A.3) over ``SubState``.  A subscription stanza a local client
sends arrives on the ``pre-presence`` hook: the user's server updates the user's roster (pushing the
change, §2.1.6), stamps ``from`` with the user's bare JID and routes it (§3.1.2); the contact's
server side is the ``presence/bare`` hook (subscription stanzas to a full JID are treated as sent to
the bare JID, §3.1.3), even when both accounts are on this server.  Details:

* §3.1.3: an inbound ``subscribe`` is auto-answered ``subscribed`` when the contact already has a
  "from" subscription, or a pre-approval (§3.4); otherwise it is stored (``add_pending_in``) and
  delivered to the available resources now and to every resource that sends initial presence until
  the contact answers.
* §3.1.6, §3.2.3, §3.3.3: an inbound ``subscribed``, ``unsubscribed`` or ``unsubscribe`` that changes
  the state goes to the user's *interested* resources (those that requested the roster), before the
  roster push.
* §3.1.5: approving (``subscribed``) or §3.4 pre-approving creates the roster item if needed; after an
  approval the contact's available resources send their presence to the new subscriber.
* §3.2.2 / §3.3.3: when a subscription ends, the side whose presence is no longer shared sends
  unavailable presence from its available resources.
* Subscription stanzas to one's own bare JID are ignored (the self-subscription is implicit, §4.2.2);
  to an account that does not exist they are silently dropped (§8.5.1).

Presence (§4): a client's presence without ``to`` (or to its own bare JID) is broadcast: initial
presence (§4.2.2) to the contacts with a "from"/"both" subscription and to all of the user's available
resources (including the sender), plus the presence of the user's other available resources to the new
one, probes (§4.3.1) to the contacts with "to"/"both", the pending subscription requests (§3.1.3), then
the ``initial-presence``(session) event.  Subsequent presence (§4.4.2) goes to the same contacts and
resources; unavailable presence (§4.5.2) too, and to every entity the session sent directed presence
to (§4.6.3).  A session that ends without unavailable presence is treated as if it had sent one
(§4.5.3).  ``<priority/>`` must be an integer in -128..127 (§4.7.2.3), else ``<bad-request/>``; an
unknown ``type`` is ``<bad-request/>`` too.  Directed presence (§4.6) is routed as is and its
recipient remembered on the session.  Presence errors are routed, never broadcast.

Probes (§4.3.2): the contact's server answers with the last presence of each available resource, or
with the last unavailable presence it received (kept in the key-value store), or unavailable from the
bare JID; a prober without a "from"/"both" subscription (or a missing account) gets ``unsubscribed``.

Inbound presence (§4.2.3, §4.4.3, §8.5.2.1.1, §8.5.3.1): to a bare JID it goes to every available
resource (of any priority); to a full JID to that resource, if connected, else it is dropped.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, ParseError, fromstring

from ..jid import JID
from ..module import Module, hook
from ..stanza import Stanza, StanzaError
from ..storage.base import RosterItem
from ..xml import serialize

if TYPE_CHECKING:
    from .roster import Roster

SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})
#: RFC 6121 §4.7.1: the values of the 'type' attribute ("available" = no type)
PRESENCE_TYPES = SUBSCRIPTION_TYPES | {"available", "unavailable", "probe", "error"}
_PRIORITY = re.compile(r"[+-]?[0-9]{1,5}")
_KV_STORE = "presence"
_KV_UNAVAILABLE = "unavailable"


# -- RFC 6121 Appendix A: the subscription state machine, as pure functions ---------------------
@dataclass(frozen=True, slots=True)
class SubState:
    """A contact's subscription state in a user's roster (RFC 6121 Appendix A.1), plus the §3.4
    pre-approval.  ``to``: the user receives the contact's presence; ``from_``: the contact receives
    the user's; ``pending_out``: the user asked and awaits an answer; ``pending_in``: the contact asked."""

    to: bool = False
    from_: bool = False
    pending_out: bool = False
    pending_in: bool = False
    approved: bool = False

    @classmethod
    def of(cls, item: RosterItem | None, pending_in: bool = False) -> SubState:
        if item is None:
            return cls(pending_in=pending_in)
        sub = item.subscription
        return cls(
            to=sub in ("to", "both"),
            from_=sub in ("from", "both"),
            pending_out=bool(item.ask) and sub in ("none", "from"),
            pending_in=pending_in and sub in ("none", "to"),
            approved=bool(item.approved) and sub in ("none", "to"),
        )

    @property
    def subscription(self) -> str:
        """The roster 'subscription' attribute (RFC 6121 §2.1.2.5)."""
        if self.to:
            return "both" if self.from_ else "to"
        return "from" if self.from_ else "none"

    @property
    def name(self) -> str:
        """The state's name in Appendix A, e.g. "None + Pending Out+In" or "From + Pending Out"."""
        base = self.subscription.capitalize()
        pending = ("Out" if self.pending_out else "") + ("+In" if self.pending_out and self.pending_in else
                                                       "In" if self.pending_in else "")
        return f"{base} + Pending {pending}" if pending else base


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of a subscription stanza: the new state; whether the stanza goes on (routed to
    the contact for outbound, delivered to the user's resources for inbound); and the stanza type the
    server answers with on the user's behalf (inbound ``subscribe`` with a subscription or pre-approval)."""

    state: SubState
    forward: bool
    auto_reply: str | None = None


def outbound(state: SubState, ptype: str) -> Transition:
    """RFC 6121 Appendix A.2: the user's server processing a subscription stanza the user sends."""
    if ptype == "subscribe":  # A.2.1: always routed
        return Transition(state if state.to else replace(state, pending_out=True), True)
    if ptype == "unsubscribe":  # A.2.2: always routed
        return Transition(replace(state, to=False, pending_out=False), True)
    if ptype == "subscribed":  # A.2.3
        if state.pending_in:
            return Transition(replace(state, from_=True, pending_in=False, approved=False), True)
        if state.from_:
            return Transition(state, False)
        return Transition(replace(state, approved=True), False)  # §3.4.2 pre-approval
    if ptype == "unsubscribed":  # A.2.4
        if state.pending_in or state.from_:
            return Transition(replace(state, from_=False, pending_in=False, approved=False), True)
        return Transition(replace(state, approved=False), False)  # cancels a pre-approval (§3.4)
    raise ValueError(f"not a subscription stanza type: {ptype!r}")


def inbound(state: SubState, ptype: str) -> Transition:
    """RFC 6121 Appendix A.3: the user's server processing a subscription stanza from a contact."""
    if ptype == "subscribe":  # A.3.1
        if state.from_:
            return Transition(state, False, "subscribed")  # §3.1.3: already subscribed, auto-reply
        if state.approved:  # §3.4.2: pre-approved
            return Transition(replace(state, from_=True, approved=False, pending_in=False), False, "subscribed")
        if state.pending_in:
            return Transition(state, False)
        return Transition(replace(state, pending_in=True), True)
    if ptype == "unsubscribe":  # A.3.2
        if state.pending_in or state.from_:
            return Transition(replace(state, from_=False, pending_in=False), True)
        return Transition(state, False)
    if ptype == "subscribed":  # A.3.3
        if state.pending_out and not state.to:
            return Transition(replace(state, to=True, pending_out=False), True)
        return Transition(state, False)
    if ptype == "unsubscribed":  # A.3.4
        if state.pending_out or state.to:
            return Transition(replace(state, to=False, pending_out=False), True)
        return Transition(state, False)
    raise ValueError(f"not a subscription stanza type: {ptype!r}")


def apply_state(item: RosterItem | None, jid: str, state: SubState) -> RosterItem:
    """The roster item carrying ``state`` (a new one when ``item`` is None)."""
    if item is None:
        item = RosterItem(jid=jid)
    return replace(item, subscription=state.subscription, ask=state.pending_out, approved=state.approved,
                   groups=list(item.groups))


def parse_priority(el: Element) -> int:
    """RFC 6121 §4.7.2.3: ``<priority/>`` is an integer in -128..127 (0 when absent)."""
    p = el.find("priority")
    if p is None:
        return 0
    text = (p.text or "").strip()
    if not _PRIORITY.fullmatch(text) or not -128 <= int(text) <= 127:
        raise StanzaError("bad-request", "priority must be an integer between -128 and 127")
    return int(text)


def copy_presence(el: Element, **attrs: str | None) -> Element:
    """A copy of ``el`` (children shared, never mutated) with attributes set (None removes one).
    Use ``from_=`` for 'from'."""
    out = Element(el.tag, el.attrib)
    out.text = el.text
    out.extend(el)
    for k, v in attrs.items():
        k = "from" if k == "from_" else k
        if v is None:
            out.attrib.pop(k, None)
        else:
            out.set(k, v)
    return out


def _directed(session: Any) -> set[str]:
    """The entities a session sent directed presence to (§4.6.3), kept in its extension slots."""
    d: set[str] | None = session.ext.get("presence.directed")
    if d is None:
        d = session.ext["presence.directed"] = set()
    return d


class Presence(Module):
    """RFC 6121 §3 subscriptions and §4 presence."""

    name = "presence"
    depends = ["roster"]

    @property
    def roster(self) -> Roster:
        return self.ctx.service("roster")  # type: ignore[no-any-return]

    # -- helpers ---------------------------------------------------------------------------------
    def _sessions(self, bare: str) -> Iterable[Any]:
        return self.ctx.sessions.resources(bare).values()

    def _gone(self, session: Any) -> bool:
        return self.ctx.sessions.get(session.jid) is not session

    async def _route(self, els: Iterable[Element], ordered: bool = True) -> None:
        """Route server-generated stanzas and wait for their handling.  ``ordered``: each one is
        fully handled before the next is routed (a ``subscribed`` reaches the subscriber, with its
        roster push, before the presence that follows it); else they are handled concurrently."""
        pending = []
        send = self.ctx.router.send
        for el in els:
            r = send(el)
            if r is not None:
                if ordered:
                    await r
                else:
                    pending.append(r)
        if pending:
            await asyncio.gather(*pending)

    def _deliver_available(self, bare: str, el: Element) -> None:
        """To every available resource of ``bare`` (RFC 6121 §8.5.2.1.1: any priority)."""
        targets = [s for s in self._sessions(bare) if s.available]
        if targets:
            self.ctx.sessions.deliver_many(targets, el)

    def _deliver_interested(self, bare: str, el: Element) -> None:
        """To every interested resource of ``bare`` (those that requested the roster, RFC 6121 §2.1.6)."""
        targets = [s for s in self._sessions(bare) if s.interested]
        if targets:
            self.ctx.sessions.deliver_many(targets, el)

    async def _exists(self, host: str, user: str) -> bool:
        if self.ctx.sessions.resources(f"{user}@{host}"):
            return True
        return bool(await self.storage.accounts.exists(host, user))

    def _presence_of_available(self, bare: str, to: str) -> list[Element]:
        """The last presence of each available resource of ``bare``, addressed to ``to``."""
        return [copy_presence(s.presence, to=to, from_=s.jid.full)
                for s in self._sessions(bare) if s.available and s.presence is not None]

    def _unavailable_from_available(self, bare: str, to: str) -> list[Element]:
        return [Element("presence", {"type": "unavailable", "from": s.jid.full, "to": to})
                for s in self._sessions(bare) if s.available]

    # -- stanzas from local clients ----------------------------------------------------------------
    @hook("pre-presence")
    def outbound_presence(self, st: Stanza) -> bool | Awaitable[bool]:
        """Presence a local client sent (``from`` = its full JID)."""
        ptype = st.type
        if ptype not in PRESENCE_TYPES:
            raise StanzaError("bad-request", "unknown presence type")
        session, frm, to = st.origin, st.from_, st.to
        if session is None or frm is None or frm.local is None or ptype == "error":
            return False  # errors are routed as they are, never broadcast
        own = frm.bare
        if ptype == "available" or ptype == "unavailable":
            if to is None or (to.resource is None and to.bare == own):
                if ptype == "available":
                    return self._available(session, st.el, parse_priority(st.el))
                return self._unavailable(session, st.el, ended=False)
            # §4.6.2 directed presence: remember the recipient, route as is
            if to.bare != own:
                if ptype == "available":
                    _directed(session).add(to.full)
                else:
                    _directed(session).discard(to.full)
            return False
        if to is None:
            return True  # a probe or subscription stanza needs an addressee: nothing to do
        if ptype == "probe":
            return False  # routed; the contact's side answers (§4.3.2)
        if to.bare == own:
            return True  # the subscription to oneself is implicit (§4.2.2): ignore
        return self._outbound_subscription(st, to.bare_jid())

    async def _available(self, session: Any, el: Element, priority: int) -> bool:
        """RFC 6121 §4.2.2 initial and §4.4.2 subsequent presence broadcast."""
        jid: JID = session.jid
        host, user, bare = jid.domain, jid.local, jid.bare
        assert user is not None
        items = await self.roster.get_roster(host, user)
        if self._gone(session):
            return True
        pres = copy_presence(el, to=None, from_=jid.full, type=None)
        initial = not session.available
        registry = self.ctx.sessions
        registry.update(session, priority=priority, available=True, presence=pres)
        out = [copy_presence(pres, to=contact) for contact, item in items.items()
               if item.subscription in ("from", "both") and contact != bare]
        self._deliver_available(bare, copy_presence(pres, to=bare))
        if initial:
            for other in self._presence_of_available(bare, jid.full):
                if other.get("from") != jid.full:
                    registry.deliver(session, other)
            out += [Element("presence", {"type": "probe", "from": jid.full, "to": contact})
                    for contact, item in items.items()
                    if item.subscription in ("to", "both") and contact != bare]
        await self._route(out, ordered=False)
        if initial and not self._gone(session):
            # §3.1.3: subscription requests received while the user was away
            pending = await self.storage.roster.get_pending_in(host, user)
            for data in pending.values():
                try:
                    registry.deliver(session, fromstring(data))
                except ParseError:
                    self.log.warning("unreadable pending subscription request for %s", bare)
            r = self.ctx.fire("initial-presence", session)
            if r is not None:
                await r
        return True

    async def _unavailable(self, session: Any, el: Element, ended: bool,
                           items: dict[str, RosterItem] | None = None) -> bool:
        """RFC 6121 §4.5.2 (client sent unavailable) and §4.5.3 (session ended without it)."""
        jid: JID = session.jid
        host, user, bare = jid.domain, jid.local, jid.bare
        assert user is not None
        if session.available and items is None:
            items = await self.roster.get_roster(host, user)
            if not ended and self._gone(session):
                return True  # the session-ended handler has done it
        pres = copy_presence(el, to=None, from_=jid.full)
        pres.set("type", "unavailable")
        was_available = session.available
        self.ctx.sessions.update(session, available=False, presence=None)
        out: list[Element] = []
        sent_to: set[str] = set()
        if was_available:
            assert items is not None
            for contact, item in items.items():
                if item.subscription in ("from", "both") and contact != bare:
                    out.append(copy_presence(pres, to=contact))
                    sent_to.add(contact)
            self._deliver_available(bare, copy_presence(pres, to=bare))
            if not ended:
                self.ctx.sessions.deliver(session, copy_presence(pres, to=bare))  # the sender is no longer "available"
        directed = _directed(session)
        out += [copy_presence(pres, to=d) for d in sorted(directed) if d not in sent_to]
        directed.clear()
        await self._route(out)
        if was_available and not any(s.available for s in self._sessions(bare)):
            # §4.3.2: kept to answer probes while the user is offline
            await self.storage.kv.set(_KV_STORE, host, user, _KV_UNAVAILABLE, serialize(pres))
        return True

    async def _outbound_subscription(self, st: Stanza, contact: JID) -> bool:
        """RFC 6121 §3.1.2, §3.1.5, §3.2.2, §3.3.2, §3.4.2: the user's server, Appendix A.2."""
        frm = st.from_
        assert frm is not None and frm.local is not None
        host, user, bare, ptype = frm.domain, frm.local, frm.bare, st.type
        roster = self.roster
        async with roster.lock(host, user):
            item = await roster.get_item(host, user, contact.bare)
            pending = False
            if ptype in ("subscribed", "unsubscribed"):
                pending = contact.bare in await self.storage.roster.get_pending_in(host, user)
            state = SubState.of(item, pending)
            t = outbound(state, ptype)
            new = t.state
            create = item is None and ptype in ("subscribe", "subscribed")
            if create or (item is not None and SubState.of(item) != replace(new, pending_in=False)):
                await roster.set_item(host, user, apply_state(item, contact.bare, new))
            if state.pending_in and not new.pending_in:
                await self.storage.roster.remove_pending_in(host, user, contact.bare)
        if not t.forward:
            return True
        el = st.el
        el.set("from", bare)
        el.set("to", contact.bare)
        out = [el]
        if ptype == "subscribed":
            out += self._presence_of_available(bare, contact.bare)  # §3.1.5
        elif ptype == "unsubscribed" and state.from_:
            out += self._unavailable_from_available(bare, contact.bare)  # §3.2.2
        await self._route(out)
        return True

    # -- stanzas to local accounts -----------------------------------------------------------------
    @hook("presence/bare")
    def inbound_bare(self, st: Stanza) -> bool | Awaitable[bool]:
        """Presence to a local account's bare JID (RFC 6121 §8.5.2)."""
        ptype = st.type
        to = st.to
        assert to is not None
        if ptype in ("available", "unavailable", "error"):
            self._deliver_available(to.bare, st.el)
            return True
        if st.from_ is None:
            return True
        if ptype == "probe":
            return self._probe(st)
        if ptype in SUBSCRIPTION_TYPES:
            return self._inbound_subscription(st)
        return True

    @hook("presence/full")
    def inbound_full(self, st: Stanza) -> bool | Awaitable[bool]:
        """Presence to a local full JID (RFC 6121 §8.5.3): subscription stanzas and probes are
        handled as if sent to the bare JID (§3.1.3, §4.3.2); the rest goes to that resource if it is
        connected, else is dropped (§8.5.3.2.1)."""
        ptype = st.type
        to = st.to
        assert to is not None
        if ptype in SUBSCRIPTION_TYPES or ptype == "probe":
            return self.inbound_bare(st)
        s = self.ctx.sessions.get(to)
        if s is not None:
            self.ctx.sessions.deliver(s, st.el)
        return True

    async def _inbound_subscription(self, st: Stanza) -> bool:
        """RFC 6121 §3.1.3, §3.1.6, §3.2.3, §3.3.3, §3.4.2: the contact's server, Appendix A.3."""
        to, frm = st.to, st.from_
        assert to is not None and frm is not None and to.local is not None
        host, user, bare, ptype = to.domain, to.local, to.bare, st.type
        sender = frm.bare
        if sender == bare or not await self._exists(host, user):
            return True  # §4.2.2 implicit self-subscription; §8.5.1 no such account: ignore
        el = st.el
        el.set("from", sender)
        el.set("to", bare)
        roster = self.roster
        async with roster.lock(host, user):
            item = await roster.get_item(host, user, sender)
            pending = False
            pending_count = 0
            if ptype in ("subscribe", "unsubscribe"):
                all_pending = await self.storage.roster.get_pending_in(host, user)
                pending, pending_count = sender in all_pending, len(all_pending)
            state = SubState.of(item, pending)
            t = inbound(state, ptype)
            new = t.state
            limit = self.ctx.limits.max_pending_subscriptions if self.ctx.limits is not None else 0
            if new.pending_in and not state.pending_in and limit and pending_count >= limit:
                # [limits] max_pending_subscriptions: refused as local policy (RFC 6120 §8.3.3.12)
                err = st.error("policy-violation", "too many pending subscription requests")
                err.set("from", bare)
                err.set("to", frm.full)
                r = self.ctx.router.send(err)
                if r is not None:
                    await r
                return True
            if t.forward and ptype != "subscribe":
                # §3.1.6, §3.2.3, §3.3.3: to the interested resources, before the roster push
                self._deliver_interested(bare, el)
            if item is not None and SubState.of(item) != replace(new, pending_in=False):
                await roster.set_item(host, user, apply_state(item, sender, new))
            if new.pending_in and not state.pending_in:
                await self.storage.roster.add_pending_in(host, user, sender, serialize(el))
            elif state.pending_in and not new.pending_in:
                await self.storage.roster.remove_pending_in(host, user, sender)
        if t.forward and ptype == "subscribe":
            self._deliver_available(bare, el)  # §3.1.3: to the available resources
        out: list[Element] = []
        if t.auto_reply is not None:
            out.append(Element("presence", {"type": t.auto_reply, "from": bare, "to": sender}))
            out += self._presence_of_available(bare, sender)  # §3.1.5
        if ptype == "unsubscribe" and state.from_ and not new.from_:
            out += self._unavailable_from_available(bare, sender)  # §3.3.3
        if out:
            await self._route(out)
        return True

    async def _probe(self, st: Stanza) -> bool:
        """RFC 6121 §4.3.2: the contact's server answering a presence probe."""
        to, frm = st.to, st.from_
        assert to is not None and frm is not None and to.local is not None
        host, user, bare = to.domain, to.local, to.bare
        if frm.bare != bare:
            if self.ctx.sessions.resources(bare):
                item = await self.roster.get_item(host, user, frm.bare)
            else:
                item = await self.storage.roster.get_item(host, user, frm.bare)
            if item is None or item.subscription not in ("from", "both"):
                # not authorized (or no such account, §8.5.1): reveal nothing
                await self._route([Element("presence", {"type": "unsubscribed", "from": bare, "to": frm.bare})])
                return True
        out = [el for el in self._presence_of_available(bare, frm.full) if el.get("from") != frm.full]
        if not out and frm.bare != bare:
            last = await self.storage.kv.get(_KV_STORE, host, user, _KV_UNAVAILABLE)
            el: Element | None = None
            if last:
                try:
                    el = fromstring(last)
                except ParseError:
                    el = None
            if el is None:
                el = Element("presence", {"type": "unavailable", "from": bare})
            el.set("to", frm.full)
            out = [el]
        for el in out:
            el.set("to", frm.full)
        await self._route(out)
        return True

    # -- session lifecycle -----------------------------------------------------------------------
    @hook("session-ended")
    def session_ended(self, session: Any) -> Awaitable[bool] | None:
        """RFC 6121 §4.5.3: a session gone without unavailable presence is treated as if it had sent
        it.  The roster is taken now, before the roster module drops its cache."""
        jid = getattr(session, "jid", None)
        if jid is None or jid.local is None:
            return None
        if not session.available and not session.ext.get("presence.directed"):
            return None
        cached = self.roster.cached(jid.domain, jid.local)
        items = dict(cached) if cached is not None else None
        return self._unavailable(session, Element("presence", type="unavailable"), ended=True, items=items)
