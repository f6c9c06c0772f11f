"""XEP-0163: Personal Eventing Protocol — every account's bare JID is a pubsub service.

The protocol is the shared core's (``rookery.pubsub.engine``, XEP-0060); this module adds PEP's
rules:

* §3 / XEP-0060 §7.1.5: publishing to a node that does not exist creates it (auto-create), with the
  ``publish-options`` as its configuration; only the account itself creates, configures and (unless
  a node's publish model says otherwise) publishes; it is the owner of all its nodes.
* §2 defaults: ``pubsub#access_model`` presence (contacts with a "from"/"both" subscription),
  ``max_items`` 1 (option ``default_max_items``), last item sent "on_sub_and_presence".
* §4 notifications: besides explicit subscribers, every available resource of the account and of
  its contacts allowed by the access model whose entity capabilities (XEP-0115, the ``caps``
  module) list ``<node>+notify`` gets the event (XEP-0060 §9.2 filtered notifications), sent to the
  full JID.
* §4.3.2 last published item: when a session's capabilities become known or change (the
  ``caps-changed`` event, on its available presence), the last item of each node it newly wants
  ``+notify`` for is sent, from the account itself and from every local contact whose presence it
  receives (subscription "to"/"both"), as the node's access model allows; and when a local contact
  approves the account's presence subscription (inbound ``subscribed``), that contact's last items.
* Common uses are plain PEP nodes with the clients' publish-options: bookmarks (XEP-0402
  ``urn:xmpp:bookmarks:1``, whitelist, ``max_items`` "max"), avatars (XEP-0084 ``urn:xmpp:avatar:data``
  and ``:metadata``; payloads up to ``max_payload_size``), vCard4 (XEP-0292 ``urn:xmpp:vcard4``),
  private nodes (XEP-0223: ``persist_items`` with ``access_model`` whitelist).
* XEP-0411 compatibility: private XML (XEP-0049) ``<storage xmlns='storage:bookmarks'/>`` reads
  and writes the XEP-0402 bookmarks node (the ``private`` module asks this module through the
  ``pep`` service).
* Other modules see publications through the ``pep-published`` event (account bare JID, node name,
  the published items), fired after the notifications, and publish on an account's behalf with the
  ``pep`` service's ``publish_own`` (XEP-0398 avatar conversion uses both).

Nodes and items live in the module's ``nodes`` map store, per account (deleted with it).
"""

from __future__ import annotations

import time
from typing import Any
from xml.etree.ElementTree import Element, ParseError, SubElement, fromstring

from pydantic import Field

from ..jid import JID, InvalidJID
from ..module import Module, ModuleContext, Options, hook, iq_handler
from ..pubsub.core import EVENT, OWNER, PUBSUB, Item, Node
from ..pubsub.engine import FEATURES, PubSubEngine, ServiceHandle
from ..stanza import Stanza
from ..xml import serialize

BOOKMARKS2 = "urn:xmpp:bookmarks:1"
BOOKMARKS_LEGACY = "storage:bookmarks"

#: XEP-0163 §5: PEP adds auto-create, auto-subscribe, filtered (+notify) and presence-based notifications
PEP_FEATURES = sorted(set(FEATURES) | {"auto-create", "auto-subscribe", "filtered-notifications",
                                       "presence-notifications"})


class PEPOptions(Options):
    #: most items a PEP node keeps (what pubsub#max_items "max" means: bookmarks)
    max_items: int = Field(1000, ge=1)
    #: pubsub#max_items of an auto-created node
    default_max_items: int = Field(1, ge=1)
    #: largest item payload, in bytes (serialized XML; avatars need room)
    max_payload_size: int = Field(256 * 1024, ge=1)
    #: most PEP nodes an account may have (0: no limit)
    max_nodes_per_user: int = Field(100, ge=0)


#: cluster event: an account's PEP service was written on another worker (issue 12)
CHANGED = "pep-changed"


class PEPEngine(PubSubEngine):
    auto_create = True
    #: every worker serves PEP (the account's bare JID): a write on one drops the others' copies
    changed_event = CHANGED

    def __init__(self, ctx: ModuleContext, view: Any, module: PEP) -> None:
        super().__init__(ctx, view)
        self.module = module

    def is_super(self, handle: ServiceHandle, bare: str) -> bool:
        return bare == handle.service.jid

    def may_create(self, handle: ServiceHandle, requester: JID) -> bool:
        return requester.bare == handle.service.jid

    def nodes_counted(self, handle: ServiceHandle, bare: str) -> int | None:
        return len(handle.service.nodes)

    def default_config(self, handle: ServiceHandle) -> dict[str, Any]:
        cfg = super().default_config(handle)
        cfg["pubsub#access_model"] = "presence"
        cfg["pubsub#send_last_published_item"] = "on_sub_and_presence"
        return cfg

    async def implicit_recipients(self, handle: ServiceHandle, node: Node) -> list[str]:
        """XEP-0163 §4: the available resources, of the account and of its allowed contacts, whose
        capabilities ask for ``<node>+notify``."""
        caps = self.module.caps
        if caps is None:
            return []
        sessions = self.ctx.sessions
        owner = JID.parse(handle.service.jid)
        assert owner.local is not None
        want = node.name  # the session's ``pep.notify``, published for every worker (issue 12)
        out = [s.jid.full for s in sessions.resources(owner.bare).values()
               if s.available and want in (s.ext.get("pep.notify") or ())]
        roster = await self.module.roster.get_roster(owner.domain, owner.local)
        for contact, item in roster.items():
            if item.subscription not in ("from", "both"):
                continue
            resources = sessions.resources(contact)
            if not resources:
                continue
            targets = [s.jid.full for s in resources.values()
                       if s.available and want in (s.ext.get("pep.notify") or ())]
            if targets and self.contact_allowed(handle, node, contact, item):
                out += targets
        return out

    async def notify_items(self, handle: ServiceHandle, node: Node, items: list[Item]) -> None:
        await super().notify_items(handle, node, items)
        r = self.ctx.fire("pep-published", handle.service.jid, node.name, list(items))
        if r is not None:
            self.ctx.spawn(r)  # never inside the service's lock

    def contact_allowed(self, handle: ServiceHandle, node: Node, contact: str, item: Any) -> bool:
        """The access model for a contact whose roster item (in the owner's roster) is known."""
        aff = self.affiliation(handle, node, contact)
        if aff == "outcast":
            return False
        if aff in ("owner", "publisher", "member"):
            return True
        model = node.access_model
        if model == "open":
            return True
        if model == "presence":
            return item is not None and item.subscription in ("from", "both")
        if model == "roster":
            return item is not None and bool(set(node.get("pubsub#roster_groups_allowed") or []) & set(item.groups))
        if model == "authorize":
            return any(s.jid.partition("/")[0] == contact and s.state == "subscribed"
                       for s in node.subscriptions.values())
        return False


class PEP(Module):
    """XEP-0163 on every account's bare JID."""

    name = "pep"
    depends = ["roster", "caps"]
    provides = ["pep"]
    account_identities = [("pubsub", "pep", None)]
    account_features = [PUBSUB] + [f"{PUBSUB}#{f}" for f in PEP_FEATURES] + ["urn:xmpp:bookmarks:1#compat"]
    Options = PEPOptions

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.engine = PEPEngine(ctx, ctx.open_store("nodes", "map"), self)

    @property
    def roster(self) -> Any:
        return self.ctx.service("roster")

    @property
    def caps(self) -> Any:
        return self.ctx.service("caps") if self.ctx.has_service("caps") else None

    async def service_of(self, account: JID) -> ServiceHandle:
        assert account.local is not None
        return await self.engine.service(account.domain, account.local, account.bare)

    # -- the protocol ----------------------------------------------------------------------------
    @iq_handler("get", PUBSUB, "pubsub", to="bare")
    @iq_handler("set", PUBSUB, "pubsub", to="bare")
    @iq_handler("get", OWNER, "pubsub", to="bare")
    @iq_handler("set", OWNER, "pubsub", to="bare")
    async def pubsub(self, request: Stanza) -> Element | None:
        to = request.to
        assert to is not None
        return await self.engine.handle(request, await self.service_of(to))

    # -- §4.3.2 last published items ---------------------------------------------------------------
    @hook("caps-changed")
    async def caps_changed(self, session: Any) -> None:
        caps = self.caps
        feats = caps.features_of(session) if caps is not None else None
        if not feats:
            return
        notify = {f[:-7] for f in feats if f.endswith("+notify")}
        before = set(session.ext.get("pep.notify") or ())
        sessions = self.ctx.sessions
        current = sessions.get(session.jid) is session
        if current and (notify != before or "pep.notify" not in session.ext):
            # XEP-0163 §4 implicit recipients, read on every worker (issue 12): a sorted list (JSON)
            sessions.publish(session, "pep.notify", sorted(notify))
        new = notify - before
        if not new:
            return
        jid: JID = session.jid
        assert jid.local is not None
        sources = [jid.bare_jid()]
        roster = await self.roster.get_roster(jid.domain, jid.local)
        for contact, item in sorted(roster.items()):
            if item.subscription in ("to", "both"):
                try:
                    c = JID.parse(contact)
                except InvalidJID:
                    continue
                if c.local is not None and self.ctx.enabled_for(c.domain):
                    sources.append(c)
        for src in sources:
            handle = await self.service_of(src)
            wanted = [handle.service.nodes[n] for n in sorted(new) if n in handle.service.nodes]
            wanted = [n for n in wanted if n.items and n.get("pubsub#send_last_published_item") == "on_sub_and_presence"]
            if not wanted:
                continue
            item = None
            if src.bare != jid.bare:
                item = await self.engine.roster_item(src.bare, jid.bare)
            for node in wanted:
                if src.bare == jid.bare or self.engine.contact_allowed(handle, node, jid.bare, item):
                    last = node.last_item()
                    assert last is not None
                    if self.ctx.sessions.get(jid) is not session:
                        return
                    self.engine.send_event(handle, node, self.engine.items_event(node, [last]), [jid.full])

    @hook("presence/bare", priority=10)
    def subscribed(self, st: Stanza) -> None:
        """A contact approved a presence subscription (``subscribed`` to a local account): the new
        subscriber's sessions get the contact's last items they want (never handles the stanza)."""
        if st.type == "subscribed" and st.from_ is not None and st.to is not None:
            self.ctx.spawn(self._after_subscribed(st.from_.bare_jid(), st.to.bare_jid()))
        return None

    async def _after_subscribed(self, contact: JID, user: JID) -> None:
        if contact.local is None or not self.ctx.enabled_for(contact.domain):
            return
        caps = self.caps
        if caps is None:
            return
        handle = await self.service_of(contact)
        item = await self.engine.roster_item(contact.bare, user.bare)
        for session in list(self.ctx.sessions.resources(user.bare).values()):
            for name in sorted(session.ext.get("pep.notify") or ()):
                node = handle.service.nodes.get(name)
                if node is None or not node.items or node.get("pubsub#send_last_published_item") != "on_sub_and_presence":
                    continue
                if self.engine.contact_allowed(handle, node, user.bare, item):
                    last = node.last_item()
                    assert last is not None
                    self.engine.send_event(handle, node, self.engine.items_event(node, [last]), [session.jid.full])

    @hook("user-deleted")
    def user_deleted(self, host: str, user: str) -> None:
        self.engine.forget(host, user)

    @hook(CHANGED)
    @hook("user-forgotten")
    def changed_elsewhere(self, host: str, user: str) -> None:
        """Another worker wrote this account's PEP service (issue 12): reload it on next use."""
        self.engine.forget(host, user)

    async def publish_own(self, account: JID, name: str, item_id: str, payload: Element,
                          config: dict[str, Any] | None = None) -> None:
        """Publish ``payload`` as item ``item_id`` of the account's node ``name`` on its behalf (the
        node is created with ``config`` over the defaults when missing), with notifications."""
        handle = await self.service_of(account)
        async with handle.lock:
            node = handle.service.nodes.get(name)
            if node is None:
                cfg = self.engine.default_config(handle)
                cfg.update(config or {})
                node = Node(name, cfg, {account.bare: "owner"})
                handle.service.nodes[name] = node
                await handle.store.save_node(node)
            item = Item(item_id, account.bare, serialize(payload, ""), time.time())
            for dropped in handle.service.add_item(node, item, self.engine.hard_max_items(handle)):
                await handle.store.delete_item(node, dropped.id)
            await handle.store.save_item(node, item)
            await self.engine.notify_items(handle, node, [item])

    async def node_of(self, account: JID, name: str) -> Node | None:
        """The account's node ``name`` (None when it has none); read it, do not change it."""
        return (await self.service_of(account)).service.nodes.get(name)

    # -- XEP-0411: private XML bookmarks <-> XEP-0402 ----------------------------------------------
    async def legacy_bookmarks_or_none(self, account: JID) -> Element | None:
        """The XEP-0402 bookmarks as one XEP-0048 ``<storage xmlns='storage:bookmarks'/>``; None when
        the account has no bookmarks node."""
        storage = Element(f"{{{BOOKMARKS_LEGACY}}}storage")
        handle = await self.service_of(account)
        node = handle.service.nodes.get(BOOKMARKS2)
        if node is None:
            return None
        for item in node.items.values():
            if item.payload is None:
                continue
            try:
                c = fromstring(item.payload)
            except ParseError:
                continue
            conf = Element(f"{{{BOOKMARKS_LEGACY}}}conference", jid=item.id)
            for attr in ("name", "autojoin"):
                if c.get(attr) is not None:
                    conf.set(attr, c.get(attr, ""))
            nick = c.find(f"{{{BOOKMARKS2}}}nick")
            if nick is not None and nick.text:
                n = Element(f"{{{BOOKMARKS_LEGACY}}}nick")
                n.text = nick.text
                conf.append(n)
            password = c.find(f"{{{BOOKMARKS2}}}password")
            if password is not None and password.text:
                p = Element(f"{{{BOOKMARKS_LEGACY}}}password")
                p.text = password.text
                conf.append(p)
            storage.append(conf)
        return storage

    async def set_legacy_bookmarks(self, account: JID, storage: Element) -> None:
        """Replace the XEP-0402 bookmarks with the conferences of a XEP-0048 ``<storage/>``: items
        published (with notifications) for each conference, retracted for the ones no longer there."""
        handle = await self.service_of(account)
        wanted: dict[str, Element] = {}
        for conf in storage.findall(f"{{{BOOKMARKS_LEGACY}}}conference"):
            jid = conf.get("jid")
            if not jid:
                continue
            c = Element(f"{{{BOOKMARKS2}}}conference")
            if conf.get("name"):
                c.set("name", conf.get("name", ""))
            if conf.get("autojoin") in ("1", "true"):
                c.set("autojoin", "true")
            for tag in ("nick", "password"):
                el = conf.find(f"{{{BOOKMARKS_LEGACY}}}{tag}")
                if el is not None and el.text:
                    SubElement(c, f"{{{BOOKMARKS2}}}{tag}").text = el.text
            wanted[jid] = c
        async with handle.lock:
            node = handle.service.nodes.get(BOOKMARKS2)
            if node is None:
                cfg = self.engine.default_config(handle)
                cfg.update({"pubsub#access_model": "whitelist", "pubsub#max_items": "max",
                            "pubsub#send_last_published_item": "never", "pubsub#persist_items": True})
                node = Node(BOOKMARKS2, cfg, {account.bare: "owner"})
                handle.service.nodes[BOOKMARKS2] = node
                await handle.store.save_node(node)
            hard_max = self.engine.hard_max_items(handle)
            gone = [i for i in node.items if i not in wanted]
            for item_id in gone:
                node.items.pop(item_id, None)
                await handle.store.delete_item(node, item_id)
            for jid, c in wanted.items():
                old = node.items.get(jid)
                data = serialize(c)
                if old is not None and old.payload == data:
                    continue
                item = Item(jid, account.bare, data, time.time())
                for dropped in handle.service.add_item(node, item, hard_max):
                    await handle.store.delete_item(node, dropped.id)
                await handle.store.save_item(node, item)
                await self.engine.notify_items(handle, node, [item])
            if gone and node.get("pubsub#notify_retract"):
                ev = Element(f"{{{EVENT}}}event")
                items = SubElement(ev, f"{{{EVENT}}}items", node=BOOKMARKS2)
                for item_id in gone:
                    SubElement(items, f"{{{EVENT}}}retract", id=item_id)
                await self.engine.notify(handle, node, ev)
