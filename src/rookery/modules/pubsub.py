"""XEP-0060: Publish-Subscribe, as a service on ``pubsub.<domain>``.

The protocol is the shared core's (``rookery.pubsub.engine``); this module adds the service's
policy: who may create nodes (``node_creation``: "anyone", "local" users of this server, or
"admins"; an unauthorised create is ``<forbidden/>``, XEP-0060 §8.1.3), server administrators
(top-level ``admins``) as owners of every node, the limits (items per node, payload size, nodes per
user), service discovery of the service and its nodes (§5: disco#info with the ``pubsub#*``
features, §5.3 node identity and §5.4 ``pubsub#meta-data``, §5.2 / §5.5 disco#items of nodes and
items), and the owners' answers to subscription approval forms (§8.6, a ``<message/>`` to the
service).  Nodes and items live in the module's ``nodes`` map store (user ""), written through.
"""

from __future__ import annotations

from typing import Any, Literal
from xml.etree.ElementTree import Element, SubElement

from pydantic import Field

from ..jid import JID
from ..module import Module, ModuleContext, Options, hook, iq_handler
from ..pubsub.core import META_DATA, OWNER, PUBSUB, Node, build_form
from ..pubsub.engine import FEATURES, PubSubEngine, ServiceHandle
from ..stanza import Stanza, StanzaError
from ..xml import ns
from .disco import info_query

_INFO = f"{{{ns.DISCO_INFO}}}query"
_ITEMS = f"{{{ns.DISCO_ITEMS}}}query"


class PubSubOptions(Options):
    #: who may create nodes: "anyone", "local" (accounts of this server), "admins"
    node_creation: Literal["anyone", "local", "admins"] = "local"
    #: most items a node keeps (what pubsub#max_items "max" means)
    max_items: int = Field(1000, ge=1)
    #: pubsub#max_items of a new node
    default_max_items: int = Field(10, ge=1)
    #: largest item payload, in bytes (serialized XML)
    max_payload_size: int = Field(65536, ge=1)
    #: most nodes one user may own (0: no limit; admins have none)
    max_nodes_per_user: int = Field(100, ge=0)


class ServiceEngine(PubSubEngine):
    def __init__(self, ctx: ModuleContext, view: Any) -> None:
        super().__init__(ctx, view)

    def is_super(self, handle: ServiceHandle, bare: str) -> bool:
        return bool(self.ctx.is_admin(bare))

    def may_create(self, handle: ServiceHandle, requester: JID) -> bool:
        policy = self.options(handle).node_creation
        if policy == "anyone" or self.ctx.is_admin(requester):
            return True
        if policy == "local":
            return requester.local is not None and self.ctx.enabled_for(requester.domain)
        return False


class PubSub(Module):
    """XEP-0060 service on ``pubsub.<domain>``."""

    name = "pubsub"
    subdomain = "pubsub"
    service_identity = ("pubsub", "service", "Publish-Subscribe")
    Options = PubSubOptions

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.engine = ServiceEngine(ctx, ctx.open_store("nodes", "map"))

    async def _handle(self, request: Stanza) -> ServiceHandle:
        to = request.to
        assert to is not None
        host = to.domain.partition(".")[2]
        return await self.engine.service(host, "", to.domain)

    # -- the protocol ----------------------------------------------------------------------------
    @iq_handler("get", PUBSUB, "pubsub", to="host", on="service")
    @iq_handler("set", PUBSUB, "pubsub", to="host", on="service")
    @iq_handler("get", OWNER, "pubsub", to="host", on="service")
    @iq_handler("set", OWNER, "pubsub", to="host", on="service")
    async def pubsub(self, request: Stanza) -> Element | None:
        return await self.engine.handle(request, await self._handle(request))

    @hook("message/host", on="service")
    async def message(self, st: Stanza) -> bool:
        """§8.6: an owner's answer to a subscription approval form."""
        if st.type == "error":
            return True
        if await self.engine.authorization(st, await self._handle(st)):
            return True
        return False

    @hook("user-deleted")
    async def user_deleted(self, host: str, user: str) -> None:
        """A deleted account's subscriptions and affiliations go, and the nodes it alone owned."""
        if not self.ctx.enabled_for(host):
            return
        handle = await self.engine.service(host, "", f"{self.subdomain}.{host}")
        await self.engine.forget_entity(handle, f"{user}@{host}")

    # -- §5 service discovery --------------------------------------------------------------------
    @iq_handler("get", ns.DISCO_INFO, "query", to="host", on="service")
    async def disco_info(self, request: Stanza) -> Element:
        name = request.el[0].get("node")
        q = Element(_INFO)
        if name is None:
            assert self.service_identity is not None
            return request.result(info_query(self.service_identity, [ns.DISCO_INFO, ns.DISCO_ITEMS, PUBSUB, OWNER]
                                             + [f"{PUBSUB}#{f}" for f in sorted(FEATURES)]))
        handle = await self._handle(request)
        node = await self._visible(handle, request, name)
        q.set("node", name)
        SubElement(q, f"{{{ns.DISCO_INFO}}}identity", category="pubsub", type="leaf")
        SubElement(q, f"{{{ns.DISCO_INFO}}}feature", var=PUBSUB)
        SubElement(q, f"{{{ns.DISCO_INFO}}}feature", var=ns.DISCO_INFO)
        SubElement(q, f"{{{ns.DISCO_INFO}}}feature", var=ns.DISCO_ITEMS)
        meta = {"pubsub#title": node.get("pubsub#title"), "pubsub#type": node.get("pubsub#type"),
                "pubsub#access_model": node.access_model,
                "pubsub#publish_model": node.get("pubsub#publish_model"),
                "pubsub#max_items": node.get("pubsub#max_items"),
                "pubsub#persist_items": node.persistent,
                "pubsub#owner": node.owners(), "pubsub#num_subscribers": str(len(node.subscriptions)),
                "pubsub#creation_date": _iso(node.created)}
        q.append(build_form(META_DATA, meta, type="result"))
        return request.result(q)

    @iq_handler("get", ns.DISCO_ITEMS, "query", to="host", on="service")
    async def disco_items(self, request: Stanza) -> Element:
        name = request.el[0].get("node")
        handle = await self._handle(request)
        frm = request.from_
        assert frm is not None
        q = Element(_ITEMS)
        jid = handle.service.jid
        if name is None:
            for node in sorted(handle.service.nodes.values(), key=lambda n: n.name):
                if node.access_model not in ("whitelist", "authorize") or \
                        self.engine.affiliation(handle, node, frm.bare) in ("owner", "publisher", "member"):
                    item = SubElement(q, f"{{{ns.DISCO_ITEMS}}}item", jid=jid, node=node.name)
                    title = node.get("pubsub#title")
                    if title:
                        item.set("name", title)
            return request.result(q)
        node = await self._visible(handle, request, name)
        q.set("node", name)
        if await self.engine.may_see(handle, node, frm.bare):
            for it in reversed(node.items.values()):
                SubElement(q, f"{{{ns.DISCO_ITEMS}}}item", jid=jid, name=it.id)
        return request.result(q)

    async def _visible(self, handle: ServiceHandle, request: Stanza, name: str) -> Node:
        node = handle.service.nodes.get(name)
        if node is None:
            raise StanzaError("item-not-found", "no such node")
        return node


def _iso(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
