"""XEP-0191: Blocking Command (urn:xmpp:blocking).

§3.2 "User Retrieves Block List": an iq-get ``<blocklist/>`` to one's own account answers the items;
the resource becomes *interested* (``session.ext["blocking"]``) and gets the pushes of §3.3/§3.4.
§3.3 "User Blocks JID": ``<block/>`` with at least one ``<item jid/>`` (none: ``<bad-request/>``; a JID
that does not parse: ``<jid-malformed/>``), stored per user (the module's ``blocklist`` keyval store,
cached in memory while the user is online), answered, then pushed to every interested resource.
Before the block takes effect each available resource sends unavailable presence to the blocked
contacts allowed to see its presence (RFC 6121: a "from"/"both" subscription, or directed presence).
§3.4 "User Unblocks JID": ``<unblock/>`` with items, or empty (§3.5 "unblock all"); afterwards the
available resources' current presence goes to the unblocked contacts allowed to see it.
A request for another account's block list is ``<forbidden/>`` (``<service-unavailable/>`` when that
account does not exist, RFC 6121 §8.5.1).

§3.3 enforcement, for stanzas from a blocked JID to the user: presence (of any type) is dropped
without an answer; messages and iq get/set are answered ``<service-unavailable/>``; iq result/error
and error messages are dropped.  Stanzas the user sends to a blocked JID are not routed: the answer is
``<not-acceptable/>`` with ``<blocked xmlns='urn:xmpp:blocking:errors'/>``.  Presence the server sends
on the user's behalf (broadcasts, probes, probe answers) to a blocked JID is dropped, so none flows
either way.  Where: the ``pre-message``/``pre-presence``/``pre-iq`` chains of the sender's domain
(local senders, either direction: iqs to an account are answered by the server on its behalf and
never reach a chain on the recipient side), the ``presence/*`` chains of the recipient's
domain (server-generated presence), the ``delivery-failed`` fold (nothing from a blocked JID is
stored offline), and an outbound filter, installed only while an online user's list is not empty,
that drops whatever else from a blocked JID would reach a session.  The ``pre-message`` hook is
installed only while an online user's list is not empty too (messages to offline users are checked
on ``delivery-failed``), so while nobody online blocks anyone the message path pays nothing.

§6 "JID Matching" (XEP-0016 order): an item ``user@domain/resource`` matches that JID only;
``user@domain`` any resource of it; ``domain/resource`` that JID only; ``domain`` the domain and every
JID at it.  A user's own resources are never blocked from each other (§5), nor is the server itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Iterable
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from ..jid import JID, InvalidJID
from ..module import Module, fold, hook, iq_handler
from ..stanza import Stanza, StanzaError
from ._switch import Switch

NS = "urn:xmpp:blocking"
ERRORS = "urn:xmpp:blocking:errors"
_ITEM = f"{{{NS}}}item"
_EMPTY: frozenset[str] = frozenset()
#: cluster event: an account's block list changed on another worker (``ctx.sessions.broadcast``)
CHANGED = "blocklist-changed"


def matches(items: frozenset[str] | set[str], jid: str) -> bool:
    """§6: does the (normalized) JID string ``jid`` match a blocklist item?"""
    if not items:
        return False
    if jid in items:
        return True
    bare, sep, _ = jid.partition("/")
    if sep and bare in items:
        return True
    domain = bare.rpartition("@")[2]
    return domain != jid and domain in items


def blocked_error(st: Stanza) -> Element:
    """§3.3: ``<not-acceptable/>`` + ``<blocked xmlns='urn:xmpp:blocking:errors'/>``."""
    return st.error(StanzaError("not-acceptable", app=Element(f"{{{ERRORS}}}blocked")))


class Blocking(Module):
    """XEP-0191 Blocking Command."""

    name = "blocking"
    features = [NS]

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.store = ctx.open_store("blocklist", "keyval")
        #: bare JID -> its blocklist, for accounts with a session (loaded at bind)
        self.cache: dict[str, frozenset[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._push_ids = itertools.count()
        #: the <blocked/> error being delivered to its sender right now (not filtered)
        self._passing: Element | None = None
        #: cached non-empty lists; the outbound filter and the ``pre-message`` hook are installed
        #: only while there is one (messages to offline users are checked on ``delivery-failed``)
        self._nonempty = 0
        self._active = Switch(ctx, lambda c: [c.filter(self.filter, priority=100),
                                              c.hook("pre-message", self.pre_message, priority=2000)])

    def _cache_set(self, bare: str, items: frozenset[str]) -> None:
        items = items or _EMPTY
        old = self.cache.get(bare)
        self.cache[bare] = items
        self._nonempty += bool(items) - bool(old)
        self._toggle_filter()

    def _cache_drop(self, bare: str) -> None:
        if self.cache.pop(bare, None):
            self._nonempty -= 1
            self._toggle_filter()

    def _toggle_filter(self) -> None:
        self._active.set(self._nonempty > 0)

    # -- the list ----------------------------------------------------------------------------
    async def load(self, host: str, user: str) -> frozenset[str]:
        bare = f"{user}@{host}"
        cached = self.cache.get(bare)
        if cached is not None:
            return cached
        raw = await self.store.get(host, user)
        items = frozenset(json.loads(raw)) if raw else _EMPTY
        items = items or _EMPTY
        if self.ctx.sessions.resources(bare) and bare not in self.cache:
            self._cache_set(bare, items)
        return items

    async def _save(self, host: str, user: str, items: frozenset[str]) -> None:
        if items:
            await self.store.set(host, user, json.dumps(sorted(items)))
        else:
            await self.store.delete(host, user)
        bare = f"{user}@{host}"
        # other workers (issue 12) cache the list of an account with a session anywhere: the new one
        # reaches them before the reply and the pushes (the link keeps order)
        self.ctx.sessions.broadcast(CHANGED, bare, sorted(items))
        self._changed(bare, items)

    def _changed(self, bare: str, items: frozenset[str]) -> None:
        if self.ctx.sessions.resources(bare):
            self._cache_set(bare, items)
        else:
            self._cache_drop(bare)

    @hook(CHANGED)
    def changed_elsewhere(self, bare: str, items: list[str]) -> None:
        """Another worker changed this account's block list (issue 12): a load in progress here
        keeps this list (it caches only what is not cached yet)."""
        self._changed(bare, frozenset(items))

    def _lock(self, bare: str) -> asyncio.Lock:
        lock = self._locks.get(bare)
        if lock is None:
            lock = self._locks[bare] = asyncio.Lock()
        return lock

    @hook("session-bound")
    def session_bound(self, session: Any) -> None:
        jid = session.jid
        if jid.bare not in self.cache:
            self.ctx.spawn(self.load(jid.domain, jid.local))

    @hook("session-ended")
    @hook("session-gone")  # another worker's session (issue 12): the list was cached for it too
    def session_ended(self, session: Any) -> None:
        bare = session.jid.bare
        if not self.ctx.sessions.resources(bare):
            self._cache_drop(bare)
            lock = self._locks.get(bare)
            if lock is not None and not lock.locked():
                del self._locks[bare]

    @hook("user-deleted")
    @hook("user-forgotten")  # deleted on another worker (issue 12)
    def user_deleted(self, host: str, user: str) -> None:
        self._cache_drop(f"{user}@{host}")

    # -- §3.2-§3.5 the iqs -----------------------------------------------------------------
    async def _own(self, request: Stanza) -> tuple[str, str]:
        frm, to = request.from_, request.to
        assert to is not None and to.local is not None
        if frm is None or frm.bare != to.bare or request.origin is None:
            if not await self.storage.accounts.exists(to.domain, to.local):
                raise StanzaError("service-unavailable")
            raise StanzaError("forbidden", "that is another account's block list")
        return to.domain, to.local

    @iq_handler("get", NS, "blocklist", to="bare")
    async def get_blocklist(self, request: Stanza) -> Element:
        host, user = await self._own(request)
        items = await self.load(host, user)
        if not request.origin.ext.get("blocking"):
            self.ctx.sessions.publish(request.origin, "blocking", True)  # pushed to from any worker
        out = Element(f"{{{NS}}}blocklist")
        for jid in sorted(items):
            SubElement(out, _ITEM, jid=jid)
        return request.result(out)

    @staticmethod
    def _items(payload: Element) -> list[str]:
        out = []
        for item in payload.iter(_ITEM):
            try:
                out.append(JID.parse(item.get("jid", "")).full)
            except InvalidJID:
                raise StanzaError("jid-malformed", f"not a JID: {item.get('jid', '')!r}") from None
        return out

    @iq_handler("set", NS, "block", to="bare")
    async def block(self, request: Stanza) -> None:
        host, user = await self._own(request)
        payload = request.el[0]
        new = self._items(payload)
        if not new:
            raise StanzaError("bad-request", "<block/> needs at least one <item/>")
        bare = f"{user}@{host}"
        async with self._lock(bare):
            old = await self.load(host, user)
            added = [j for j in dict.fromkeys(new) if j not in old]
            if added:
                # §3.3: unavailable presence to those who could see ours, before the block applies
                await self._send_presence(host, user, frozenset(added), available=False)
                await self._save(host, user, old | frozenset(added))
        self.ctx.router.reply(request, request.result())
        self._push(bare, "block", new)
        return None

    @iq_handler("set", NS, "unblock", to="bare")
    async def unblock(self, request: Stanza) -> None:
        host, user = await self._own(request)
        payload = request.el[0]
        gone = self._items(payload)
        bare = f"{user}@{host}"
        async with self._lock(bare):
            old = await self.load(host, user)
            removed = frozenset(gone) & old if gone else old
            if removed:
                await self._save(host, user, old - removed)
                # §3.4: our current presence to those allowed to see it
                await self._send_presence(host, user, removed, available=True)
        self.ctx.router.reply(request, request.result())
        self._push(bare, "unblock", gone)
        return None

    def _push(self, bare: str, what: str, jids: Iterable[str]) -> None:
        """§3.3/§3.4/§3.5: to every resource that requested the block list."""
        targets = [s for s in self.ctx.sessions.resources(bare).values() if s.ext.get("blocking")]
        if not targets:
            return
        payload = Element(f"{{{NS}}}{what}")
        for j in dict.fromkeys(jids):
            SubElement(payload, _ITEM, jid=j)
        for s in targets:
            iq = Element("iq", {"type": "set", "id": f"block-push{next(self._push_ids)}", "to": s.jid.full})
            iq.append(payload)
            self.ctx.sessions.deliver(s, iq)

    async def _send_presence(self, host: str, user: str, items: frozenset[str], available: bool) -> None:
        """Presence of each available resource to the contacts matching ``items`` that may see it
        (roster subscription "from"/"both", or directed presence)."""
        bare = f"{user}@{host}"
        sessions = [s for s in self.ctx.sessions.resources(bare).values() if s.available]
        if not sessions:
            return
        allowed: set[str] = set()
        if self.ctx.has_service("roster"):
            roster = await self.ctx.service("roster").get_roster(host, user)
            allowed = {c for c, item in roster.items() if item.subscription in ("from", "both")}
        router = self.ctx.router
        for s in sessions:
            targets = {c for c in allowed | set(s.ext.get("presence.directed", ())) if matches(items, c)}
            for contact in sorted(targets):
                if available:
                    if s.presence is None:
                        continue
                    el = Element("presence", dict(s.presence.attrib))
                    el.extend(s.presence)
                    el.set("from", s.jid.full)
                    el.set("to", contact)
                else:
                    el = Element("presence", {"type": "unavailable", "from": s.jid.full, "to": contact})
                r = router.send(el)
                if r is not None:
                    await r

    # -- enforcement ---------------------------------------------------------------------------
    def _blocks(self, owner: JID, other: str) -> bool | Awaitable[bool]:
        """Does ``owner``'s account block ``other``?  From the cache, else from storage."""
        bare = owner.bare
        if owner.local is None or other.partition("/")[0] == bare or other == owner.domain:
            return False
        items = self.cache.get(bare)
        if items is not None:
            return matches(items, other)
        if not self.ctx.enabled_for(owner.domain):
            return False
        return self._blocks_stored(owner, other)

    async def _blocks_stored(self, owner: JID, other: str) -> bool:
        assert owner.local is not None
        return matches(await self.load(owner.domain, owner.local), other)

    def _sender_blocks(self, frm: JID | None, to: JID) -> bool:
        """Server-generated stanzas on behalf of a local user with a session (cached list only)."""
        if frm is None or frm.local is None:
            return False
        items = self.cache.get(frm.bare)
        return items is not None and frm.bare != to.bare and matches(items, to.full)

    # outbound: the user sends to a blocked JID (§3.3 <blocked/>), or to someone who blocks them
    def _outbound(self, st: Stanza, items: frozenset[str] | None = None) -> bool | Awaitable[bool]:
        frm, to = st.from_, st.to
        if frm is None or to is None or st.origin is None or to.bare == frm.bare:
            return False
        if items is None:
            items = self.cache.get(frm.bare)
            if items is None:
                return self._outbound_async(st)
        if matches(items, to.full):
            if st.type != "error":
                # the error comes "from" the blocked JID: let it through our own filter
                err = self._passing = blocked_error(st)
                try:
                    self.ctx.router.reply(st, err)
                finally:
                    self._passing = None
            return True
        if st.kind != "presence" and to.local is not None and self.ctx.enabled_for(to.domain):
            # a local recipient's list, here on the sender's side: an iq to an account is answered
            # by the server on its behalf, and messages need no chain of their own on the way in
            r = self._blocks(to, frm.full)
            if r is True:
                return self._bounce(st)
            if r is not False:
                return self._inbound_after(r, st)
        return False

    async def _outbound_async(self, st: Stanza) -> bool:
        frm = st.from_
        assert frm is not None and frm.local is not None
        r = self._outbound(st, await self.load(frm.domain, frm.local))
        if not isinstance(r, bool):
            return await r
        return r

    def pre_message(self, st: Stanza) -> bool | Awaitable[bool]:
        """Installed while an online user's list is not empty."""
        to, frm = st.to, st.from_
        if to is not None and frm is not None:
            # the hot path: both accounts online, neither blocks anyone
            cache = self.cache
            if cache.get(frm.bare) is _EMPTY and cache.get(to.bare) is _EMPTY:
                return False
        return self._outbound(st)

    @hook("pre-presence", priority=2000)
    def pre_presence(self, st: Stanza) -> bool | Awaitable[bool]:
        return self._outbound(st)

    @hook("pre-iq", priority=2000)
    def pre_iq(self, st: Stanza) -> bool | Awaitable[bool]:
        return self._outbound(st)

    # inbound: to a local account or resource
    def _bounce(self, st: Stanza) -> bool:
        """§3.3: presence dropped silently; messages and iq get/set: service-unavailable."""
        if st.kind == "message" and st.type != "error":
            self.ctx.router.reply(st, st.error("service-unavailable"))
        elif st.kind == "iq" and st.type in ("get", "set"):
            self.ctx.router.reply(st, st.error("service-unavailable"))
        return True

    async def _inbound_after(self, r: Awaitable[bool], st: Stanza) -> bool:
        if await r:
            return self._bounce(st)
        return False

    def _inbound(self, st: Stanza) -> bool | Awaitable[bool]:
        frm, to = st.from_, st.to
        if frm is None or to is None:
            return False
        if self._sender_blocks(frm, to):
            return True  # e.g. our presence broadcast to a contact we block: dropped
        r = self._blocks(to, frm.full)
        if r is True:
            return self._bounce(st)
        if r is False:
            return False
        return self._inbound_after(r, st)

    @fold("delivery-failed", priority=2000)
    def undeliverable(self, handled: bool, st: Stanza) -> bool | Awaitable[bool]:
        """A message for offline storage: nothing from a blocked JID is stored."""
        if handled or st.from_ is None or st.to is None:
            return handled
        r = self._blocks(st.to, st.from_.full)
        if r is True:
            return self._bounce(st)
        if r is False:
            return False
        return self._inbound_after(r, st)

    @hook("presence/bare", priority=2000)
    def presence_bare(self, st: Stanza) -> bool | Awaitable[bool]:
        return self._inbound(st)

    @hook("presence/full", priority=2000)
    def presence_full(self, st: Stanza) -> bool | Awaitable[bool]:
        return self._inbound(st)

    def filter(self, session: Any, el: Element) -> Element | None:
        """Whatever else from a blocked JID would reach a session (iqs to a full JID, iq results,
        stanzas from other servers): dropped, messages and iq get/set answered (§3.3)."""
        jid = session.jid
        items = self.cache.get(jid.bare)
        if not items or el is self._passing:
            return el
        frm = el.get("from")
        if frm is None or frm.partition("/")[0] == jid.bare or frm == jid.domain or not matches(items, frm):
            return el
        tag, typ = el.tag, el.get("type")
        if (tag == "message" and typ != "error") or (tag == "iq" and typ in ("get", "set")):
            err = Element(tag, {"type": "error", "from": jid.full, "to": frm})
            if el.get("id") is not None:
                err.set("id", el.get("id", ""))
            err.append(StanzaError("service-unavailable").to_element())
            r = self.ctx.router.send(err)
            if r is not None:
                self.ctx.spawn(r)
        return None
