"""XEP-0060: Publish-Subscribe — the protocol, shared by the ``pubsub`` service and PEP (XEP-0163).

``PubSubEngine`` answers ``<pubsub xmlns='http://jabber.org/protocol/pubsub'/>`` (§6 subscriber and
§7 publisher use cases: subscribe, unsubscribe, subscription options, items, publish with
publish-options, retract, create, the entity's own subscriptions and affiliations) and
``<pubsub xmlns='…#owner'/>`` (§8: configure, default, delete, purge, subscriptions and
affiliations management) for one ``Service`` at a time, and sends the event notifications (§7.1.2,
§7.2.2, §8.4.2, §8.5.2, §8.2.5).  Errors are the ones the XEP names, with their
``pubsub#errors`` conditions.

The two modules differ only in policy, which they give by overriding: who counts as an owner of
every node (the service's admins; the PEP account), who may create nodes, the default
configuration, whether a publish to a missing node creates it (PEP, §7.1.5 / XEP-0163 §3), roster
lookups for the presence and roster access models, and extra recipients of notifications (PEP's
``+notify`` contacts, XEP-0163 §4).

Notifications to many subscribers are serialized once: the same ``<message/>`` for every
recipient but ``to`` (``SessionRegistry.deliver_each`` when the registry has it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from xml.etree.ElementTree import Element, ParseError, SubElement, fromstring

from ..jid import JID, InvalidJID
from ..routing.delivery import message_targets
from ..stanza import Stanza, StanzaError
from ..xml import serialize
from .core import (
    AFFILIATIONS,
    DEFAULT_CONFIG,
    EVENT,
    NODE_CONFIG,
    OWNER,
    PUBLISH_OPTIONS,
    PUBSUB,
    RSM,
    SUBSCRIBE_AUTHORIZATION,
    SUBSCRIBE_OPTIONS,
    Item,
    Node,
    Service,
    Subscription,
    X,
    build_form,
    coerce,
    form_type,
    form_values,
    new_id,
    parse_bool,
    parse_config,
    pubsub_error,
    same_value,
    unsupported,
)
from .store import ServiceStore

log = logging.getLogger(__name__)

_P = f"{{{PUBSUB}}}"
_O = f"{{{OWNER}}}"
_E = f"{{{EVENT}}}"

#: the pubsub#* features this engine implements (XEP-0060 §10), for disco
FEATURES = [
    "access-authorize", "access-open", "access-presence", "access-roster", "access-whitelist",
    "config-node", "config-node-max", "create-and-configure", "create-nodes", "delete-items",
    "delete-nodes", "instant-nodes", "item-ids", "last-published", "manage-subscriptions",
    "member-affiliation", "meta-data", "modify-affiliations", "outcast-affiliation",
    "persistent-items", "publish", "publish-only-affiliation", "publish-options",
    "publisher-affiliation", "purge-nodes", "retract-items", "retrieve-affiliations",
    "retrieve-default", "retrieve-items", "retrieve-subscriptions", "rsm", "subscribe",
    "subscription-notifications", "subscription-options", "transient-nodes",
]

SUB_OPTION_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {"pubsub#deliver": ("boolean", ())}


def _local_tag(el: Element) -> tuple[str, str]:
    ns_, _, name = el.tag[1:].partition("}") if el.tag.startswith("{") else ("", "", el.tag)
    return ns_, name


def _bare(jid: str) -> str:
    return jid.partition("/")[0]


class ServiceHandle:
    """A loaded service and where it is stored."""

    __slots__ = ("service", "store", "host", "user", "lock")

    def __init__(self, service: Service, store: ServiceStore, host: str, user: str) -> None:
        self.service = service
        self.store = store
        self.host = host
        self.user = user
        #: one change at a time per service: a request's checks and its writes see the same state
        self.lock = asyncio.Lock()


class PubSubEngine:
    """One per module; ``view`` is the module's ``map`` store."""

    #: publishing to a node that does not exist creates it (PEP)
    auto_create = False
    #: most services kept in memory (least recently used ones are dropped; they reload from storage)
    cache_size = 2000
    #: the cluster event that tells the other workers a service was written (they drop their copy and
    #: reload it from storage: issue 12); None: the service lives on one worker only (``pubsub.D``)
    changed_event: str | None = None

    def __init__(self, ctx: Any, view: Any) -> None:
        self.ctx = ctx
        self.view = view
        self._services: OrderedDict[tuple[str, str], ServiceHandle] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[ServiceHandle]] = {}

    # -- policy (overridden by the modules) ------------------------------------------------------
    def options(self, handle: ServiceHandle) -> Any:
        return self.ctx.options_for(handle.host)

    def hard_max_items(self, handle: ServiceHandle) -> int:
        return int(self.options(handle).max_items)

    def is_super(self, handle: ServiceHandle, bare: str) -> bool:
        """Owner of every node (service admins; the PEP account itself)."""
        return False

    def may_create(self, handle: ServiceHandle, requester: JID) -> bool:
        return True

    def default_config(self, handle: ServiceHandle) -> dict[str, Any]:
        cfg = dict(DEFAULT_CONFIG)
        cfg["pubsub#max_items"] = str(min(int(self.options(handle).default_max_items),
                                          self.hard_max_items(handle)))
        return cfg

    async def roster_item(self, owner: str, contact: str) -> Any:
        """``owner``'s roster item for ``contact`` (both bare JIDs), or None (not a local account)."""
        try:
            o = JID.parse(owner)
        except InvalidJID:
            return None
        if o.local is None or not self.ctx.enabled_for(o.domain):
            return None
        return await self.ctx.storage.roster.get_item(o.domain, o.local, contact)

    def nodes_counted(self, handle: ServiceHandle, bare: str) -> int | None:
        """The nodes ``bare`` has against ``max_nodes_per_user`` (None: no limit for it)."""
        if self.is_super(handle, bare):
            return None
        return sum(1 for n in handle.service.nodes.values() if n.affiliations.get(bare) == "owner")

    async def implicit_recipients(self, handle: ServiceHandle, node: Node) -> list[str]:
        """Full JIDs that get notifications without a subscription (PEP: ``+notify``)."""
        return []

    # -- services --------------------------------------------------------------------------------
    async def service(self, host: str, user: str, jid: str) -> ServiceHandle:
        key = (host, user)
        h = self._services.get(key)
        if h is not None:
            self._services.move_to_end(key)
            return h
        fut = self._loading.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            svc = Service(jid)
            store = ServiceStore(self.view, host, user, self._changer(host, user) if self.changed_event else None)
            await store.load(svc)
            h = ServiceHandle(svc, store, host, user)
            self._services[key] = h
            if len(self._services) > self.cache_size:
                # the least recently used go, but never one a request is working on
                for k in [k for k, v in self._services.items() if not v.lock.locked()][: len(self._services) - self.cache_size]:
                    del self._services[k]
            fut.set_result(h)
            return h
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._loading[key]

    def _changer(self, host: str, user: str) -> Any:
        event, sessions = self.changed_event, self.ctx.sessions

        def changed() -> None:
            sessions.broadcast(event, host, user)

        return changed

    def forget(self, host: str, user: str) -> None:
        self._services.pop((host, user), None)

    async def forget_entity(self, handle: ServiceHandle, bare: str) -> None:
        """Remove ``bare``'s subscriptions and affiliations (an account was deleted); nodes it was the
        only owner of are deleted, without notifications."""
        async with handle.lock:
            for node in list(handle.service.nodes.values()):
                owners = node.owners()
                if owners == [bare]:
                    del handle.service.nodes[node.name]
                    await handle.store.delete_node(node)
                    continue
                for jid in [j for j in node.subscriptions if _bare(j) == bare]:
                    del node.subscriptions[jid]
                    await handle.store.delete_subscription(node, jid)
                if bare in node.affiliations:
                    del node.affiliations[bare]
                    await handle.store.save_node(node)

    # -- helpers ---------------------------------------------------------------------------------
    def affiliation(self, handle: ServiceHandle, node: Node, bare: str) -> str:
        if self.is_super(handle, bare):
            return "owner"
        return node.affiliation(bare)

    def _node(self, handle: ServiceHandle, name: str | None) -> Node:
        if not name:
            raise pubsub_error("bad-request", "nodeid-required")
        node = handle.service.nodes.get(name)
        if node is None:
            raise StanzaError("item-not-found", "no such node")
        return node

    def _owner_node(self, handle: ServiceHandle, name: str | None, requester: JID) -> Node:
        node = self._node(handle, name)
        if self.affiliation(handle, node, requester.bare) != "owner":
            raise StanzaError("forbidden", "only an owner may do this")
        return node

    async def check_access(self, handle: ServiceHandle, node: Node, requester: str, *,
                           subscribing: bool = False) -> None:
        """§6.1.3 / §6.5.9: may ``requester`` (bare) subscribe to or retrieve items of ``node``?
        Raises the XEP's error; for the authorize model a subscriber is let through (pending)."""
        aff = self.affiliation(handle, node, requester)
        if aff == "outcast":
            raise StanzaError("forbidden", "you are banned from this node")
        if aff in ("owner", "publisher", "member"):
            return
        model = node.access_model
        if model == "open":
            return
        if model == "presence":
            for owner in node.owners() or [handle.service.jid]:
                item = await self.roster_item(owner, requester)
                if item is not None and item.subscription in ("from", "both"):
                    return
            raise pubsub_error("not-authorized", "presence-subscription-required")
        if model == "roster":
            allowed = set(node.get("pubsub#roster_groups_allowed") or [])
            for owner in node.owners() or [handle.service.jid]:
                item = await self.roster_item(owner, requester)
                if item is not None and allowed.intersection(item.groups):
                    return
            raise pubsub_error("not-authorized", "not-in-roster-group")
        if model == "whitelist":
            raise pubsub_error("not-allowed", "closed-node")
        if model == "authorize":
            if subscribing:
                return
            for sub in node.subscriptions.values():
                if _bare(sub.jid) == requester and sub.state == "subscribed":
                    return
            raise pubsub_error("not-authorized", "not-subscribed")

    async def may_see(self, handle: ServiceHandle, node: Node, requester: str) -> bool:
        try:
            await self.check_access(handle, node, requester)
        except StanzaError:
            return False
        return True

    # -- entry point -----------------------------------------------------------------------------
    async def handle(self, request: Stanza, handle: ServiceHandle) -> Element | None:
        """Answer an iq whose payload is ``<pubsub/>`` (either namespace) for this service."""
        frm = request.from_
        if frm is None:
            raise StanzaError("bad-request")
        payload = request.el[0]
        owner_ns = payload.tag == _O + "pubsub"
        children = [c for c in payload if c.tag.startswith("{")]
        if not children:
            raise StanzaError("bad-request", "empty <pubsub/>")
        verb_el = children[0]
        ns_, verb = _local_tag(verb_el)
        if ns_ != (OWNER if owner_ns else PUBSUB):
            raise StanzaError("bad-request", f"unexpected {verb_el.tag}")
        key = (request.type, "owner" if owner_ns else "user", verb)
        fn = _DISPATCH.get(key)
        if fn is None:
            raise StanzaError("feature-not-implemented", f"{verb} is not supported here")
        async with handle.lock:
            result: Element | None = await fn(self, request, handle, frm, verb_el, payload)
        return result

    # -- §7.1 publish ----------------------------------------------------------------------------
    async def _publish(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                       payload: Element) -> Element:
        name = el.get("node")
        if not name:
            raise pubsub_error("bad-request", "nodeid-required")
        items = el.findall(_P + "item")
        if len(items) > 1:
            raise pubsub_error("bad-request", "invalid-payload", text="one item per publish")
        item_el = items[0] if items else None
        popts_el = payload.find(_P + "publish-options")
        popts: dict[str, list[str]] = {}
        if popts_el is not None:
            x = popts_el.find(X)
            if x is not None:
                if form_type(x) not in (PUBLISH_OPTIONS, None):
                    raise pubsub_error("bad-request", "invalid-options")
                popts = {k: v for k, v in form_values(x).items() if k != "FORM_TYPE"}
        hard_max = self.hard_max_items(handle)
        node = handle.service.nodes.get(name)
        created = False
        if node is None:
            if not self.auto_create:
                raise StanzaError("item-not-found", "no such node")
            config = self.default_config(handle)
            try:
                for var, values in popts.items():
                    config[var] = coerce(var, values, hard_max)
            except (KeyError, ValueError) as e:
                raise pubsub_error("conflict", "precondition-not-met", text=str(e)) from None
            await self._check_create(handle, frm, name)
            node = Node(name, config, {frm.bare: "owner"})
            created = True
        else:
            self._check_preconditions(node, popts, hard_max)
        aff = self.affiliation(handle, node, frm.bare)
        if not created and not self._may_publish(node, aff, frm.bare):
            raise StanzaError("forbidden", "you may not publish to this node")
        # the payload (§7.1.3.6, §7.1.3.7)
        body: Element | None = None
        if item_el is not None:
            kids = list(item_el)
            if len(kids) > 1:
                raise pubsub_error("bad-request", "invalid-payload", text="one payload element per item")
            body = kids[0] if kids else None
        needs_payload = node.persistent or bool(node.get("pubsub#deliver_payloads"))
        if body is None and needs_payload:
            raise pubsub_error("bad-request", "item-required" if item_el is None else "payload-required")
        if body is not None and not needs_payload:
            raise pubsub_error("bad-request", "item-forbidden")
        data = serialize(body, "") if body is not None else None
        max_size = int(self.options(handle).max_payload_size)
        if data is not None and len(data.encode("utf-8")) > max_size:
            raise pubsub_error("not-acceptable", "payload-too-big", text=f"payloads are limited to {max_size} bytes")
        item_id = (item_el.get("id") if item_el is not None else None) or new_id()
        if created:
            handle.service.nodes[name] = node
            await handle.store.save_node(node)
        item = Item(item_id, frm.bare, data, time.time())
        dropped = handle.service.add_item(node, item, hard_max)
        await handle.store.save_item(node, item)
        for old in dropped:
            await handle.store.delete_item(node, old.id)
        await self.notify_items(handle, node, [item])
        out = Element(_P + "pubsub")
        pub = SubElement(out, _P + "publish", node=name)
        SubElement(pub, _P + "item", id=item_id)
        return request.result(out)

    def _check_preconditions(self, node: Node, popts: dict[str, list[str]], hard_max: int) -> None:
        """§7.1.5: every publish-option must equal the node's configuration."""
        for var, values in popts.items():
            try:
                want = coerce(var, values, hard_max)
            except (KeyError, ValueError):
                raise pubsub_error("conflict", "precondition-not-met", text=f"{var} is not supported") from None
            if not same_value(node.get(var), want):
                raise pubsub_error("conflict", "precondition-not-met", text=f"{var} differs")

    def _may_publish(self, node: Node, aff: str, bare: str) -> bool:
        if aff in ("owner", "publisher", "publish-only"):
            return True
        if aff == "outcast":
            return False
        model = node.get("pubsub#publish_model")
        if model == "open":
            return True
        if model == "subscribers":
            return aff == "member" or any(_bare(s.jid) == bare and s.state == "subscribed"
                                          for s in node.subscriptions.values())
        return False

    # -- §7.2 retract ------------------------------------------------------------------------------
    async def _retract(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                       payload: Element) -> Element:
        node = self._node(handle, el.get("node"))
        ids = [i.get("id") for i in el.findall(_P + "item")]
        if not ids or not all(ids):
            raise pubsub_error("bad-request", "item-required")
        aff = self.affiliation(handle, node, frm.bare)
        for item_id in ids:
            item = node.items.get(item_id or "")
            if item is None:
                raise StanzaError("item-not-found", "no such item")
            if aff not in ("owner", "publisher") and _bare(item.publisher) != frm.bare:
                raise StanzaError("forbidden", "you may not retract this item")
        for item_id in ids:
            assert item_id is not None
            node.items.pop(item_id, None)
            await handle.store.delete_item(node, item_id)
        notify = el.get("notify")
        if (notify is not None and notify in ("1", "true")) or (notify is None and node.get("pubsub#notify_retract")):
            ev = Element(_E + "event")
            items = SubElement(ev, _E + "items", node=node.name)
            for item_id in ids:
                assert item_id is not None
                SubElement(items, _E + "retract", id=item_id)
            await self.notify(handle, node, ev)
        return request.result()

    # -- §8.1 create -------------------------------------------------------------------------------
    async def _check_create(self, handle: ServiceHandle, frm: JID, name: str | None) -> None:
        if not self.may_create(handle, frm):
            raise StanzaError("forbidden", "you may not create nodes here")
        limit = int(self.options(handle).max_nodes_per_user)
        used = self.nodes_counted(handle, frm.bare)
        if limit and used is not None:
            if used >= limit:
                raise StanzaError("resource-constraint", f"at most {limit} nodes per user", type="cancel")

    async def _create(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                      payload: Element) -> Element:
        name = el.get("node")
        if name is not None and name in handle.service.nodes:
            raise StanzaError("conflict", "the node exists")
        await self._check_create(handle, frm, name)
        config = self.default_config(handle)
        conf_el = payload.find(_P + "configure")
        if conf_el is not None:
            x = conf_el.find(X)
            if x is not None:
                config.update(self._parse_config(handle, x))
        instant = not name
        if not name:
            name = new_id()
        node = Node(name, config, {frm.bare: "owner"})
        handle.service.nodes[name] = node
        await handle.store.save_node(node)
        if instant:
            out = Element(_P + "pubsub")
            SubElement(out, _P + "create", node=name)
            return request.result(out)
        return request.result()

    def _parse_config(self, handle: ServiceHandle, x: Element) -> dict[str, Any]:
        if x.get("type") not in (None, "submit"):
            raise StanzaError("bad-request", "the configuration form must be submitted")
        ft = form_type(x)
        if ft is not None and ft != NODE_CONFIG:
            raise StanzaError("bad-request", "not a node configuration form")
        try:
            return parse_config(x, self.hard_max_items(handle))
        except ValueError as e:
            raise StanzaError("not-acceptable", str(e)) from None

    # -- §8.2 configure, §8.3 default ------------------------------------------------------------
    def config_form(self, node: Node | None, config: dict[str, Any]) -> Element:
        x = build_form(NODE_CONFIG, {k: config.get(k, v) for k, v in DEFAULT_CONFIG.items()})
        return x

    async def _configure_get(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                             payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        out = Element(_O + "pubsub")
        conf = SubElement(out, _O + "configure", node=node.name)
        conf.append(self.config_form(node, {**DEFAULT_CONFIG, **node.config}))
        return request.result(out)

    async def _configure_set(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                             payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        x = el.find(X)
        if x is None:
            raise StanzaError("bad-request", "a configuration form is needed")
        if x.get("type") == "cancel":
            return request.result()
        changes = self._parse_config(handle, x)
        was_persistent = node.persistent
        node.config.update(changes)
        hard_max = self.hard_max_items(handle)
        dropped = []
        while len(node.items) > node.max_items(hard_max):
            dropped.append(node.items.popitem(last=False)[1])
        await handle.store.save_node(node)
        for old in dropped:
            await handle.store.delete_item(node, old.id, stored=was_persistent)
        if was_persistent and not node.persistent:
            for item_id in node.items:
                await handle.store.delete_item(node, item_id, stored=True)
        elif node.persistent and not was_persistent:
            for item in node.items.values():
                await handle.store.save_item(node, item)
        if node.get("pubsub#notify_config"):
            ev = Element(_E + "event")
            c = SubElement(ev, _E + "configuration", node=node.name)
            if node.get("pubsub#deliver_payloads"):
                c.append(build_form(NODE_CONFIG, {k: node.get(k) for k in DEFAULT_CONFIG}, type="result"))
            await self.notify(handle, node, ev)
        return request.result()

    async def _default_get(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                           payload: Element) -> Element:
        out = Element(_O + "pubsub")
        d = SubElement(out, _O + "default")
        d.append(self.config_form(None, self.default_config(handle)))
        return request.result(out)

    # -- §8.4 delete, §8.5 purge -----------------------------------------------------------------
    async def _delete(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                      payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        if node.get("pubsub#notify_delete"):
            ev = Element(_E + "event")
            d = SubElement(ev, _E + "delete", node=node.name)
            redirect = el.find(_O + "redirect")
            if redirect is not None and redirect.get("uri"):
                SubElement(d, _E + "redirect", uri=redirect.get("uri", ""))
            await self.notify(handle, node, ev)
        del handle.service.nodes[node.name]
        await handle.store.delete_node(node)
        return request.result()

    async def _purge(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                     payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        if not node.persistent:
            raise unsupported("persistent-items")
        for item_id in list(node.items):
            await handle.store.delete_item(node, item_id)
        node.items.clear()
        if node.get("pubsub#notify_retract"):
            ev = Element(_E + "event")
            SubElement(ev, _E + "purge", node=node.name)
            await self.notify(handle, node, ev)
        return request.result()

    # -- §8.8 subscriptions and §8.9 affiliations, owner side ------------------------------------
    async def _owner_subscriptions_get(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                                       payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        out = Element(_O + "pubsub")
        subs = SubElement(out, _O + "subscriptions", node=node.name)
        for s in node.subscriptions.values():
            SubElement(subs, _O + "subscription", jid=s.jid, subscription=s.state, subid=s.subid)
        return request.result(out)

    async def _owner_subscriptions_set(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                                       payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        changes: list[tuple[str, str]] = []
        for s in el.findall(_O + "subscription"):
            jid, state = s.get("jid"), s.get("subscription")
            if not jid or state not in ("subscribed", "none", "pending", "unconfigured"):
                raise StanzaError("bad-request", "each subscription needs a jid and a known state")
            try:
                jid = JID.parse(jid).full
            except InvalidJID:
                raise pubsub_error("bad-request", "invalid-jid") from None
            changes.append((jid, state))
        for jid, state in changes:
            old = node.subscriptions.get(jid)
            if state == "none":
                if old is not None:
                    del node.subscriptions[jid]
                    await handle.store.delete_subscription(node, jid)
                continue
            if old is None:
                old = node.subscriptions[jid] = Subscription(jid, new_id())
            old.state = "subscribed" if state != "pending" else "pending"
            await handle.store.save_subscription(node, old)
        for jid, state in changes:
            self._send_subscription_state(handle, node, jid, state)
        return request.result()

    async def _owner_affiliations_get(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                                      payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        out = Element(_O + "pubsub")
        affs = SubElement(out, _O + "affiliations", node=node.name)
        for jid, aff in node.affiliations.items():
            SubElement(affs, _O + "affiliation", jid=jid, affiliation=aff)
        return request.result(out)

    async def _owner_affiliations_set(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                                      payload: Element) -> Element:
        node = self._owner_node(handle, el.get("node"), frm)
        changes: list[tuple[str, str]] = []
        for a in el.findall(_O + "affiliation"):
            jid, aff = a.get("jid"), a.get("affiliation")
            if not jid or aff not in AFFILIATIONS:
                raise StanzaError("bad-request", "each affiliation needs a jid and a known affiliation")
            try:
                changes.append((JID.parse(jid).bare, aff))
            except InvalidJID:
                raise pubsub_error("bad-request", "invalid-jid") from None
        new = dict(node.affiliations)
        for jid, aff in changes:
            if aff == "none":
                new.pop(jid, None)
            else:
                new[jid] = aff
        if not any(a == "owner" for a in new.values()) and not self.is_super(handle, frm.bare):
            raise StanzaError("not-acceptable", "a node keeps at least one owner")
        node.affiliations = new
        for jid, aff in changes:
            if aff == "outcast":
                for sj in [sj for sj in node.subscriptions if _bare(sj) == jid]:
                    del node.subscriptions[sj]
                    await handle.store.delete_subscription(node, sj)
        await handle.store.save_node(node)
        return request.result()

    # -- §6.1 subscribe, §6.2 unsubscribe, §6.3 options -------------------------------------------
    def _subscriber(self, frm: JID, el: Element) -> str:
        jid = el.get("jid")
        if not jid:
            raise pubsub_error("bad-request", "invalid-jid", text="a jid is needed")
        try:
            j = JID.parse(jid)
        except InvalidJID:
            raise pubsub_error("bad-request", "invalid-jid") from None
        if j.bare != frm.bare:
            raise pubsub_error("bad-request", "invalid-jid", text="the jid must be your own")
        return j.full

    async def _subscribe(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                         payload: Element) -> Element:
        name = el.get("node")
        if not name:
            raise pubsub_error("bad-request", "nodeid-required")
        jid = self._subscriber(frm, el)
        node = self._node(handle, name)
        if not node.get("pubsub#subscribe"):
            raise StanzaError("not-allowed", "this node takes no subscriptions")
        await self.check_access(handle, node, frm.bare, subscribing=True)
        deliver = True
        opts = payload.find(_P + "options")
        if opts is not None and opts.find(X) is not None:
            deliver = self._parse_sub_options(opts)
        sub = node.subscriptions.get(jid)
        if sub is None:
            aff = self.affiliation(handle, node, frm.bare)
            pending = node.access_model == "authorize" and aff not in ("owner", "publisher", "member")
            sub = Subscription(jid, new_id(), "pending" if pending else "subscribed", deliver)
            node.subscriptions[jid] = sub
            await handle.store.save_subscription(node, sub)
            if pending:
                self._ask_owners(handle, node, sub)
        elif opts is not None:
            sub.deliver = deliver
            await handle.store.save_subscription(node, sub)
        out = Element(_P + "pubsub")
        SubElement(out, _P + "subscription", node=name, jid=jid, subid=sub.subid, subscription=sub.state)
        if sub.state == "subscribed" and node.get("pubsub#send_last_published_item") != "never":
            last = node.last_item()
            if last is not None:
                ev = self.items_event(node, [last])
                asyncio.get_running_loop().call_soon(self.send_event, handle, node, ev, [jid])
        return request.result(out)

    def _parse_sub_options(self, opts: Element) -> bool:
        x = opts.find(X)
        assert x is not None
        try:
            vals = form_values(x)
            deliver = vals.get("pubsub#deliver")
            return parse_bool(deliver[0]) if deliver else True
        except (ValueError, IndexError):
            raise pubsub_error("bad-request", "invalid-options") from None

    def _find_sub(self, node: Node, frm: JID, el: Element) -> Subscription:
        jid = el.get("jid") or frm.bare
        try:
            j = JID.parse(jid)
        except InvalidJID:
            raise pubsub_error("bad-request", "invalid-jid") from None
        if j.bare != frm.bare:
            raise StanzaError("forbidden", "not your subscription")
        sub = node.subscriptions.get(j.full)
        subid = el.get("subid")
        if sub is None:
            raise pubsub_error("unexpected-request", "not-subscribed", type="cancel")
        if subid is not None and subid != sub.subid:
            raise pubsub_error("not-acceptable", "invalid-subid")
        return sub

    async def _unsubscribe(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                           payload: Element) -> Element:
        node = self._node(handle, el.get("node"))
        sub = self._find_sub(node, frm, el)
        del node.subscriptions[sub.jid]
        await handle.store.delete_subscription(node, sub.jid)
        return request.result()

    async def _options_get(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                           payload: Element) -> Element:
        node = self._node(handle, el.get("node"))
        sub = self._find_sub(node, frm, el)
        out = Element(_P + "pubsub")
        o = SubElement(out, _P + "options", node=node.name, jid=sub.jid, subid=sub.subid)
        o.append(build_form(SUBSCRIBE_OPTIONS, {"pubsub#deliver": sub.deliver}, types=SUB_OPTION_TYPES))
        return request.result(out)

    async def _options_set(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                           payload: Element) -> Element:
        node = self._node(handle, el.get("node"))
        sub = self._find_sub(node, frm, el)
        if el.find(X) is None:
            raise pubsub_error("bad-request", "invalid-options")
        sub.deliver = self._parse_sub_options(el)
        await handle.store.save_subscription(node, sub)
        return request.result()

    # -- §6.5 items ------------------------------------------------------------------------------
    async def _items(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                     payload: Element) -> Element:
        node = self._node(handle, el.get("node"))
        await self.check_access(handle, node, frm.bare)
        all_items = list(reversed(node.items.values()))  # newest first
        wanted = [i.get("id") for i in el.findall(_P + "item")]
        rsm_out: Element | None = None
        if wanted:
            chosen = []
            for item_id in wanted:
                item = node.items.get(item_id or "")
                if item is None:
                    raise StanzaError("item-not-found", f"no item {item_id}")
                chosen.append(item)
        else:
            chosen = all_items
            mx = el.get("max_items")
            if mx is not None:
                if not mx.isdigit():
                    raise StanzaError("bad-request", "max_items must be a number")
                chosen = chosen[: int(mx)]
            rsm = payload.find(f"{{{RSM}}}set")
            if rsm is not None:
                chosen, rsm_out = self._page(chosen, rsm)
        out = Element(_P + "pubsub")
        items = SubElement(out, _P + "items", node=node.name)
        for item in chosen:
            items.append(self._item_element(_P, item, True))
        if rsm_out is not None:
            out.append(rsm_out)
        return request.result(out)

    @staticmethod
    def _page(items: list[Item], rsm: Element) -> tuple[list[Item], Element]:
        """XEP-0059 over the items, newest first."""
        mx: int | None = None
        after = before = None
        back = False
        for c in rsm:
            local = c.tag.rpartition("}")[2]
            text = (c.text or "").strip()
            if local == "max":
                if not text.isdigit():
                    raise StanzaError("bad-request", "<max/> must be a non-negative integer")
                mx = int(text)
            elif local == "after":
                after = text
            elif local == "before":
                back, before = True, text or None
            elif local == "index":
                if not text.isdigit():
                    raise StanzaError("bad-request", "<index/> must be a non-negative integer")
                after = None
                items = items[int(text):]
        ids = [i.id for i in items]
        start, end = 0, len(items)
        if after:
            if after not in ids:
                raise StanzaError("item-not-found", "no such item for <after/>")
            start = ids.index(after) + 1
        if before:
            if before not in ids:
                raise StanzaError("item-not-found", "no such item for <before/>")
            end = ids.index(before)
        page = items[start:end]
        if mx is not None:
            page = page[-mx:] if back and mx else page[:mx]
        out = Element(f"{{{RSM}}}set")
        if page:
            SubElement(out, f"{{{RSM}}}first", index=str(ids.index(page[0].id))).text = page[0].id
            SubElement(out, f"{{{RSM}}}last").text = page[-1].id
        SubElement(out, f"{{{RSM}}}count").text = str(len(items))
        return page, out

    # -- §5.6 / §5.7 the entity's own subscriptions and affiliations -------------------------------
    async def _subscriptions_get(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                                 payload: Element) -> Element:
        name = el.get("node")
        nodes = [self._node(handle, name)] if name else list(handle.service.nodes.values())
        out = Element(_P + "pubsub")
        subs = SubElement(out, _P + "subscriptions")
        if name:
            subs.set("node", name)
        for node in nodes:
            for s in node.subscriptions.values():
                if _bare(s.jid) == frm.bare:
                    SubElement(subs, _P + "subscription", node=node.name, jid=s.jid, subscription=s.state,
                               subid=s.subid)
        return request.result(out)

    async def _affiliations_get(self, request: Stanza, handle: ServiceHandle, frm: JID, el: Element,
                                payload: Element) -> Element:
        name = el.get("node")
        nodes = [self._node(handle, name)] if name else list(handle.service.nodes.values())
        out = Element(_P + "pubsub")
        affs = SubElement(out, _P + "affiliations")
        if name:
            affs.set("node", name)
        for node in nodes:
            aff = node.affiliations.get(frm.bare)
            if aff:
                SubElement(affs, _P + "affiliation", node=node.name, affiliation=aff)
        return request.result(out)

    # -- §8.6 subscription approval (authorize access model) ---------------------------------------
    def _ask_owners(self, handle: ServiceHandle, node: Node, sub: Subscription) -> None:
        form = build_form(SUBSCRIBE_AUTHORIZATION, {
            "pubsub#subid": sub.subid, "pubsub#node": node.name, "pubsub#subscriber_jid": sub.jid,
            "pubsub#allow": False}, types={"pubsub#allow": ("boolean", ()), "pubsub#subscriber_jid":
                                          ("jid-single", ()), "pubsub#node": ("text-single", ()),
                                          "pubsub#subid": ("hidden", ())})
        for owner in node.owners() or [handle.service.jid]:
            msg = Element("message", {"from": handle.service.jid, "to": owner, "id": new_id()})
            msg.append(form)
            r = self.ctx.router.send(msg)
            if r is not None:
                self.ctx.spawn(r)

    async def authorization(self, st: Stanza, handle: ServiceHandle) -> bool:
        """An owner's answer to a subscription approval form (a ``<message/>`` with the submitted
        ``pubsub#subscribe_authorization`` form).  True when it was one."""
        x = st.el.find(X)
        frm = st.from_
        if x is None or frm is None or form_type(x) != SUBSCRIBE_AUTHORIZATION or x.get("type") != "submit":
            return False
        vals = form_values(x)
        name = (vals.get("pubsub#node") or [""])[0]
        jid = (vals.get("pubsub#subscriber_jid") or [""])[0]
        async with handle.lock:
            node = handle.service.nodes.get(name)
            if node is None or self.affiliation(handle, node, frm.bare) != "owner":
                return True
            sub = node.subscriptions.get(jid)
            if sub is None or sub.state != "pending":
                return True
            try:
                allow = parse_bool((vals.get("pubsub#allow") or ["0"])[0])
            except ValueError:
                return True
            if allow:
                sub.state = "subscribed"
                await handle.store.save_subscription(node, sub)
            else:
                del node.subscriptions[jid]
                await handle.store.delete_subscription(node, jid)
        self._send_subscription_state(handle, node, jid, "subscribed" if allow else "none")
        if allow and node.get("pubsub#send_last_published_item") != "never":
            last = node.last_item()
            if last is not None:
                self.send_event(handle, node, self.items_event(node, [last]), [jid])
        return True

    def _send_subscription_state(self, handle: ServiceHandle, node: Node, jid: str, state: str) -> None:
        """§8.6.5 / §8.8.2: tell the subscriber its subscription changed."""
        ev = Element(_E + "event")
        SubElement(ev, _E + "subscription", node=node.name, jid=jid, subscription=state)
        msg = Element("message", {"from": handle.service.jid, "to": jid, "id": new_id()})
        msg.append(ev)
        r = self.ctx.router.send(msg)
        if r is not None:
            self.ctx.spawn(r)

    # -- notifications ---------------------------------------------------------------------------
    def _item_element(self, prefix: str, item: Item, with_payload: bool) -> Element:
        el = Element(prefix + "item", id=item.id)
        if with_payload and item.payload is not None:
            try:
                el.append(fromstring(item.payload))
            except ParseError:
                log.warning("unreadable stored pubsub item %s", item.id)
        return el

    def items_event(self, node: Node, items: Iterable[Item]) -> Element:
        ev = Element(_E + "event")
        its = SubElement(ev, _E + "items", node=node.name)
        payloads = bool(node.get("pubsub#deliver_payloads"))
        for item in items:
            its.append(self._item_element(_E, item, payloads))
        return ev

    async def notify_items(self, handle: ServiceHandle, node: Node, items: list[Item]) -> None:
        await self.notify(handle, node, self.items_event(node, items))

    async def notify(self, handle: ServiceHandle, node: Node, event: Element) -> None:
        """§7.1.2: ``event`` to every subscriber (state subscribed, delivery on) and the implicit
        recipients, once per JID."""
        if not node.get("pubsub#deliver_notifications"):
            return
        jids = [s.jid for s in node.subscriptions.values() if s.state == "subscribed" and s.deliver]
        implicit = await self.implicit_recipients(handle, node)
        if implicit:
            bares = {j for j in jids if "/" not in j}
            seen = set(jids)
            for j in implicit:
                if j not in seen and _bare(j) not in bares:
                    jids.append(j)
                    seen.add(j)
        if jids:
            self.send_event(handle, node, event, jids)

    def send_event(self, handle: ServiceHandle, node: Node, event: Element, jids: list[str]) -> None:
        """One ``<message/>`` carrying ``event`` to each JID: local sessions get it serialized once
        for all (only ``to`` differs); other JIDs go through the router."""
        attrs = {"from": handle.service.jid, "type": str(node.get("pubsub#notification_type")), "id": new_id()}
        msg = Element("message", attrs)
        msg.append(event)
        sessions = self.ctx.sessions
        targets: list[tuple[Any, str]] = []
        routed: list[str] = []
        hosts = self.ctx.hosts
        for jid in jids:
            bare, _, res = jid.partition("/")
            domain = bare.rpartition("@")[2]
            if "@" not in bare or domain not in hosts:
                routed.append(jid)
                continue
            resources = sessions.resources(bare)
            if res:
                s = resources.get(res)
                if s is not None:
                    targets.append((s, jid))
                continue
            picked = message_targets(resources.values(), "headline") if resources else []
            if picked:
                targets.extend((s, jid) for s in picked)
            elif attrs["type"] == "normal":
                routed.append(jid)  # offline storage (RFC 6121 §8.5.2.2)
        if targets:
            each = getattr(sessions, "deliver_each", None)
            if each is not None:
                each(targets, msg)
            else:
                for s, to in targets:
                    c = Element("message", dict(attrs, to=to))
                    c.append(event)
                    sessions.deliver(s, c)
        for jid in routed:
            c = Element("message", dict(attrs, to=jid))
            c.append(event)
            r = self.ctx.router.send(c)
            if r is not None:
                self.ctx.spawn(r)


_DISPATCH: dict[tuple[str, str, str], Any] = {
    ("set", "user", "publish"): PubSubEngine._publish,
    ("set", "user", "retract"): PubSubEngine._retract,
    ("set", "user", "create"): PubSubEngine._create,
    ("set", "user", "subscribe"): PubSubEngine._subscribe,
    ("set", "user", "unsubscribe"): PubSubEngine._unsubscribe,
    ("get", "user", "options"): PubSubEngine._options_get,
    ("set", "user", "options"): PubSubEngine._options_set,
    ("get", "user", "items"): PubSubEngine._items,
    ("get", "user", "subscriptions"): PubSubEngine._subscriptions_get,
    ("get", "user", "affiliations"): PubSubEngine._affiliations_get,
    ("get", "owner", "configure"): PubSubEngine._configure_get,
    ("set", "owner", "configure"): PubSubEngine._configure_set,
    ("get", "owner", "default"): PubSubEngine._default_get,
    ("set", "owner", "delete"): PubSubEngine._delete,
    ("set", "owner", "purge"): PubSubEngine._purge,
    ("get", "owner", "subscriptions"): PubSubEngine._owner_subscriptions_get,
    ("set", "owner", "subscriptions"): PubSubEngine._owner_subscriptions_set,
    ("get", "owner", "affiliations"): PubSubEngine._owner_affiliations_get,
    ("set", "owner", "affiliations"): PubSubEngine._owner_affiliations_set,
}
