"""RFC 6121 §2: roster management (get, set, remove, pushes) with §2.6 roster versioning.

* Roster get (§2.1.3, §2.2): the account's own resources only (§2.1.5: anyone else gets
  ``<forbidden/>``).  A get marks the session an "interested resource" (§2.2), which then receives
  roster pushes.  With §2.6 versioning the client sends ``ver``: if it equals the current version the
  result is empty (§2.6.3), otherwise the whole roster comes back with the current ``ver`` (this server
  sends no incremental pushes instead); a result always carries ``ver``, also to a client that sent
  none.  The stream features carry ``<ver
  xmlns='urn:xmpp:features:rosterver'/>`` (§2.6.1) and ``<sub xmlns='urn:xmpp:features:pre-approval'/>``
  (§3.4.1).
* Roster set (§2.3, §2.4): exactly one ``<item/>`` (§2.3.3 ``<bad-request/>``), duplicate groups are
  ``<bad-request/>``, an empty group, an over-long group or name ``<not-acceptable/>`` (§2.3.3).  The
  ``subscription`` attribute is ignored unless it is "remove" (§2.1.2.5: "the server MUST ignore all
  values of the 'subscription' attribute other than 'remove'"); ``ask`` and ``approved`` are ignored
  too (§2.1.2.1, §2.1.2.2: the subscription state changes only through presence stanzas).  Clients do
  send them (slixmpp echoes ``subscription``, Smack echoes ``ask`` when renaming a pending contact), so
  rejecting them would break real clients.  Items are bare JIDs; a full JID is ``<bad-request/>``.  The
  user's own bare JID may be an item (nothing in RFC 6121 forbids it; the self-subscription is implicit,
  §4.2.2 / §4.3.1, and subscription stanzas to oneself are ignored by the presence module).
* Remove (§2.5): ``subscription='remove'``; ``<item-not-found/>`` for an unknown item (§2.5.3).  The
  server cancels the subscriptions both ways (§2.5.2): ``unsubscribe`` to the contact if the user was
  subscribed to it (or asked to be), ``unsubscribed`` if the contact was subscribed to the user (or had
  asked to be), and unavailable presence from the user's available resources, since the contact's
  subscription ends (§3.2.2).
* Pushes (§2.1.6) go to every interested resource with the new ``ver``; the result of a set is sent
  before its push (as in the examples of §2.3.2).

Other modules (presence) use the API: ``lock``, ``get_roster``, ``get_item``, ``set_item``,
``remove_item``, ``push``.  Rosters of users with at least one session are cached in memory; a
read-modify-write of a roster item must hold ``lock(host, user)`` (the lock is not re-entrant, and no
stanza may be routed while holding it, since routing can re-enter another user's handler).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from ..jid import JID, InvalidJID
from ..module import Module, ModuleContext, fold, hook, iq_handler
from ..stanza import Stanza, StanzaError
from ..storage.base import RosterItem
from ..xml import ns

#: server-configured limits of RFC 6121 §2.3.3 (characters)
MAX_NAME_LENGTH = 1023
MAX_GROUP_LENGTH = 1023

_QUERY = f"{{{ns.ROSTER}}}query"
_ITEM = f"{{{ns.ROSTER}}}item"
_GROUP = f"{{{ns.ROSTER}}}group"


@dataclass(slots=True)
class RosterSet:
    """A validated roster set request (RFC 6121 §2.1.5)."""

    jid: str  # bare JID, normalized
    remove: bool
    name: str | None
    groups: list[str]


def parse_roster_set(query: Element) -> RosterSet:
    """Validate a roster set's ``<query/>`` (RFC 6121 §2.3.3, §2.4.3, §2.5.3); raises ``StanzaError``."""
    items = [c for c in query if c.tag == _ITEM]
    if len(items) != 1:
        raise StanzaError("bad-request", "a roster set carries exactly one item")
    item = items[0]
    raw = item.get("jid")
    if not raw:
        raise StanzaError("bad-request", "the item has no jid")
    try:
        jid = JID.parse(raw)
    except InvalidJID:
        raise StanzaError("jid-malformed", "the item's jid is not a valid JID") from None
    if jid.resource is not None:
        raise StanzaError("bad-request", "roster items are bare JIDs")
    if item.get("subscription") == "remove":
        return RosterSet(jid.bare, True, None, [])
    name = item.get("name") or None
    if name is not None and len(name) > MAX_NAME_LENGTH:
        raise StanzaError("not-acceptable", f"the name is longer than {MAX_NAME_LENGTH} characters")
    groups: list[str] = []
    for g in item.findall(_GROUP):
        text = g.text or ""
        if not text:
            raise StanzaError("not-acceptable", "a group name is empty")
        if len(text) > MAX_GROUP_LENGTH:
            raise StanzaError("not-acceptable", f"a group name is longer than {MAX_GROUP_LENGTH} characters")
        if text in groups:
            raise StanzaError("bad-request", "duplicate group")
        groups.append(text)
    return RosterSet(jid.bare, False, name, groups)


def item_element(item: RosterItem | str) -> Element:
    """The ``<item/>`` of a roster result or push (RFC 6121 §2.1.2); a str is a removed item's JID."""
    if isinstance(item, str):
        return Element(_ITEM, jid=item, subscription="remove")
    el = Element(_ITEM, jid=item.jid, subscription=item.subscription)
    if item.name:
        el.set("name", item.name)
    if item.ask:
        el.set("ask", "subscribe")
    if item.approved:
        el.set("approved", "true")
    for g in item.groups:
        SubElement(el, _GROUP).text = g
    return el


def _newer(a: str, b: str) -> str:
    """The later of two roster versions (integers as strings, see ``RosterStore``)."""
    if a.isdigit() and b.isdigit():
        return a if int(a) > int(b) else b
    return b


class _Cached:
    __slots__ = ("ver", "items")

    def __init__(self, ver: str, items: dict[str, RosterItem]) -> None:
        self.ver = ver
        self.items = items


class KeyedLocks:
    """One ``asyncio.Lock`` per key, existing only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Any, list[Any]] = {}

    @asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._locks.get(key) is entry:
                del self._locks[key]


#: cluster event: a roster changed on another worker (``ctx.sessions.broadcast``)
CHANGED = "roster-changed"


class Roster(Module):
    """RFC 6121 §2 roster management and the roster API used by the presence module."""

    name = "roster"
    provides = ["roster"]

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self._cache: dict[tuple[str, str], _Cached] = {}
        # Write stamps: a load that overlapped a write reads again before caching (see _load).
        self._stamps: dict[tuple[str, str], int] = {}
        self._stamp = itertools.count(1)
        self._locks = KeyedLocks()
        self._push_ids = itertools.count(1)

    # -- API ------------------------------------------------------------------------------------
    def lock(self, host: str, user: str) -> Any:
        """Async context manager serializing read-modify-write of one user's roster."""
        return self._locks.hold((host, user))

    def cached(self, host: str, user: str) -> dict[str, RosterItem] | None:
        """The cached items (do not mutate) when the user is online, else None.  Never awaits."""
        c = self._cache.get((host, user))
        return None if c is None else c.items

    async def get_roster(self, host: str, user: str) -> dict[str, RosterItem]:
        """Items keyed by contact bare JID (do not mutate them: copy with ``dataclasses.replace``)."""
        return (await self.get_versioned(host, user))[1]

    async def get_versioned(self, host: str, user: str) -> tuple[str, dict[str, RosterItem]]:
        """(version, items); cached while the user has a session (RFC 6121 §2.6 versions)."""
        c = self._cache.get((host, user))
        if c is not None:
            return c.ver, c.items
        return await self._load(host, user)

    async def get_item(self, host: str, user: str, contact: str) -> RosterItem | None:
        c = self._cache.get((host, user))
        if c is not None:
            return c.items.get(contact)
        if self._online(host, user):
            return (await self._load(host, user))[1].get(contact)
        return await self.storage.roster.get_item(host, user, contact)

    async def set_item(self, host: str, user: str, item: RosterItem, push: bool = True) -> str:
        """Store ``item`` (insert or replace), update the cache, push it (§2.1.6); returns the version."""
        key = (host, user)
        item = replace(item, groups=list(item.groups))
        self._stamps[key] = next(self._stamp)
        try:
            ver = await self.storage.roster.set_item(host, user, item)
        finally:
            self._stamps[key] = next(self._stamp)
        self.ctx.sessions.broadcast(CHANGED, host, user)  # other workers' caches (before the push)
        c = self._cache.get(key)
        if c is not None:
            c.items[item.jid] = item
            c.ver = _newer(c.ver, ver)
        if push:
            self.push(host, user, item, ver)
        return ver

    async def remove_item(self, host: str, user: str, contact: str, push: bool = True) -> str:
        """Delete the item (no error if missing), push the removal (§2.5.2); returns the version."""
        key = (host, user)
        self._stamps[key] = next(self._stamp)
        try:
            ver = await self.storage.roster.remove_item(host, user, contact)
        finally:
            self._stamps[key] = next(self._stamp)
        self.ctx.sessions.broadcast(CHANGED, host, user)  # other workers' caches (before the push)
        c = self._cache.get(key)
        if c is not None:
            c.items.pop(contact, None)
            c.ver = _newer(c.ver, ver)
        if push:
            self.push(host, user, contact, ver)
        return ver

    def push(self, host: str, user: str, item: RosterItem | str, ver: str) -> None:
        """RFC 6121 §2.1.6 roster push of ``item`` (a str: that JID was removed) to every interested
        resource.  No 'from': a push is from the account itself."""
        registry = self.ctx.sessions
        sessions = [s for s in registry.resources(f"{user}@{host}").values() if s.interested]
        if not sessions:
            return
        query = Element(_QUERY, ver=ver)
        query.append(item_element(item))
        for s in sessions:
            iq = Element("iq", {"type": "set", "id": f"push{next(self._push_ids)}", "to": s.jid.full})
            iq.append(query)
            registry.deliver(s, iq)

    # -- cache ----------------------------------------------------------------------------------
    def _online(self, host: str, user: str) -> bool:
        return bool(self.ctx.sessions.resources(f"{user}@{host}"))

    async def _load(self, host: str, user: str) -> tuple[str, dict[str, RosterItem]]:
        """Read the roster; cache it when the user is online.  A write that started or finished
        while we were reading may be missing from what we read, so then read again."""
        key = (host, user)
        for _ in range(5):
            stamp = self._stamps.get(key)
            ver, items = await self.storage.roster.get(host, user)
            c = self._cache.get(key)
            if c is not None:  # loaded by someone else meanwhile, and kept up to date since
                return c.ver, c.items
            if self._stamps.get(key) != stamp:
                continue
            if self._online(host, user):
                self._cache[key] = _Cached(ver, items)
            return ver, items
        return ver, items

    @hook(CHANGED)
    def changed_elsewhere(self, host: str, user: str) -> None:
        """Another worker changed this roster (issue 12): what is cached here is stale; a load that
        is reading meanwhile reads again (the stamp changed)."""
        key = (host, user)
        if key in self._cache or key in self._stamps:
            self._cache.pop(key, None)
            self._stamps[key] = next(self._stamp)

    def _forget(self, host: str, user: str) -> None:
        self._cache.pop((host, user), None)
        self._stamps.pop((host, user), None)

    # -- protocol -------------------------------------------------------------------------------
    @staticmethod
    def _owner(st: Stanza) -> tuple[str, str]:
        """RFC 6121 §2.1.5 / §2.3.3: only the account itself may get or set its roster."""
        to = st.to
        if st.from_ is None or to is None or to.local is None or st.from_.bare != to.bare:
            raise StanzaError("forbidden", "only the account itself may manage its roster")
        return to.domain, to.local

    @iq_handler("get", ns.ROSTER, "query", to="bare")
    async def roster_get(self, st: Stanza) -> Element:
        """RFC 6121 §2.1.3 roster get, §2.6.3 with a version."""
        host, user = self._owner(st)
        if st.origin is not None and st.origin.jid == st.from_:
            self.ctx.sessions.update(st.origin, interested=True)  # §2.2: an "interested resource" from now on
        ver, items = await self.get_versioned(host, user)
        query_el = st.payload
        assert query_el is not None
        client_ver = query_el.get("ver")
        if client_ver is not None and client_ver == ver:
            return st.result()  # §2.6.3: up to date, no items
        # §2.6.3: the current version, whenever versioning is advertised (§2.6.1), even to a client
        # that sent none (clients of Prosody and ejabberd expect it)
        query = Element(_QUERY, ver=ver)
        for item in items.values():
            query.append(item_element(item))
        return st.result(query)

    @iq_handler("set", ns.ROSTER, "query", to="bare")
    async def roster_set(self, st: Stanza) -> None:
        """RFC 6121 §2.3 add, §2.4 update, §2.5 delete."""
        host, user = self._owner(st)
        query = st.payload
        assert query is not None
        req = parse_roster_set(query)
        if req.remove:
            await self._remove(st, host, user, req.jid)
            return None
        async with self.lock(host, user):
            old = await self.get_item(host, user, req.jid)
            if old is None:
                limit = self.ctx.limits.max_roster_items if self.ctx.limits is not None else 0
                if limit and len(await self.get_roster(host, user)) >= limit:
                    # [limits] max_roster_items (XEP-0205 §3: a quota is local service policy)
                    raise StanzaError("policy-violation", f"the roster is full ({limit} items)")
                item = RosterItem(jid=req.jid, name=req.name, groups=req.groups)
            else:
                item = replace(old, name=req.name, groups=req.groups)
            ver = await self.set_item(host, user, item, push=False)
            self.ctx.router.reply(st, st.result())
            self.push(host, user, item, ver)
        return None

    async def _remove(self, st: Stanza, host: str, user: str, contact: str) -> None:
        """RFC 6121 §2.5.2: delete, push, and cancel the subscriptions in both directions."""
        bare = f"{user}@{host}"
        async with self.lock(host, user):
            item = await self.get_item(host, user, contact)
            if item is None:
                raise StanzaError("item-not-found", "no such roster item")  # §2.5.3
            pending = await self.storage.roster.get_pending_in(host, user)
            ver = await self.remove_item(host, user, contact, push=False)
            if contact in pending:
                await self.storage.roster.remove_pending_in(host, user, contact)
            self.ctx.router.reply(st, st.result())
            self.push(host, user, contact, ver)
        if contact == bare:
            return
        out = []
        if item.subscription in ("to", "both") or item.ask:
            out.append(Element("presence", {"type": "unsubscribe", "from": bare, "to": contact}))
        if item.subscription in ("from", "both") or contact in pending:
            out.append(Element("presence", {"type": "unsubscribed", "from": bare, "to": contact}))
        if item.subscription in ("from", "both"):
            for s in self.ctx.sessions.resources(bare).values():
                if s.available:
                    out.append(Element("presence", {"type": "unavailable", "from": s.jid.full, "to": contact}))
        router = self.ctx.router
        for el in out:
            r = router.send(el)
            if r is not None:
                await r

    # -- events ---------------------------------------------------------------------------------
    @fold("stream-features")
    def stream_features(self, features: Element, stream: Any) -> Element:
        """RFC 6121 §2.6.1 roster versioning and §3.4.1 pre-approval support."""
        features.append(Element(f"{{{ns.ROSTER_VER}}}ver"))
        features.append(Element(f"{{{ns.PRE_APPROVAL}}}sub"))
        return features

    @hook("session-ended", priority=-100)
    def session_ended(self, session: Any) -> None:
        """Forget the cached roster when the user's last session is gone (runs after presence)."""
        jid = session.jid
        if jid is not None and jid.local is not None and not self._online(jid.domain, jid.local):
            self._forget(jid.domain, jid.local)

    @hook("user-forgotten")
    def user_forgotten(self, host: str, user: str) -> None:
        """The account was deleted on another worker (issue 12), which pushes the removal: the rosters
        cached here forget it."""
        self._forget(host, user)
        bare = f"{user}@{host}"
        for key, c in list(self._cache.items()):
            if bare in c.items:
                self._cache.pop(key, None)

    @hook("user-deleted")
    async def user_deleted(self, host: str, user: str) -> None:
        """Forget the account's roster; storage has removed it from the rosters of local contacts
        (``AccountStore.delete``): update their cached rosters and push the removal (§2.5.2)."""
        self._forget(host, user)
        bare = f"{user}@{host}"
        for key, c in list(self._cache.items()):
            if bare not in c.items:
                continue
            ver, _items = await self.storage.roster.get(*key)
            c = self._cache.get(key)  # type: ignore[assignment]
            if c is not None:
                c.items.pop(bare, None)
                c.ver = _newer(c.ver, ver)
            self.push(key[0], key[1], bare, ver)
