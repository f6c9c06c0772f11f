"""XEP-0030: Service Discovery, for the server itself and on behalf of its accounts.

* disco#info to the server (XEP-0030 §3.1): identity ``server/im`` plus the ``identities`` and
  ``features`` of every module enabled on that domain (the module manager's catalog), the
  disco#info/#items features, and any XEP-0128 extended-information forms modules add on the
  ``disco-forms`` fold (``fn(forms, host) -> forms``).
* disco#info to an account's bare JID (§3.1, §8 "Security Considerations"): the server answers for the
  account with identity ``account/registered`` (and the modules' ``account_identities``) and the modules' ``account_features`` — but only to the
  account itself or to entities authorized to see its presence; a missing account or an unauthorized
  requester gets ``<service-unavailable/>`` (§8 rule 1), so accounts cannot be harvested.
* disco#items (§4.1): the server's items are its internal services (``conference.D`` …) and what
  modules add on the ``disco-items`` fold (``fn(items, host) -> items``, items being ``<item/>``
  elements or ``(jid, name)`` pairs); an account's items are its available resources, shown only to
  authorized requesters, and an empty result otherwise (§8 rule 2).
* Nodes (§3.2, §4.2): a request with a ``node`` is offered to handlers registered with
  ``add_node_handler`` (the caps module answers its ``node#ver``); an unknown node is
  ``<item-not-found/>``, and the reply mirrors the requested ``node``.

Other modules use ``info_element(host, node)`` to get the server's disco#info ``<query/>`` (the caps
module hashes it, XEP-0115 §5.1) and ``data_form`` to build XEP-0128 forms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from xml.etree.ElementTree import Element, SubElement

from ..jid import JID
from ..module import Module, ModuleContext, hook, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import ns
from ._access import presence_authorized

_INFO = f"{{{ns.DISCO_INFO}}}query"
_ITEMS = f"{{{ns.DISCO_ITEMS}}}query"
_IDENTITY = f"{{{ns.DISCO_INFO}}}identity"
_FEATURE = f"{{{ns.DISCO_INFO}}}feature"
_ITEM = f"{{{ns.DISCO_ITEMS}}}item"
_X = f"{{{ns.DATA_FORMS}}}x"

SERVER_NAME = "Rookery"
SERVER_IDENTITY: tuple[str, str, str | None] = ("server", "im", SERVER_NAME)
ACCOUNT_IDENTITY: tuple[str, str, str | None] = ("account", "registered", None)

_Collected = tuple[list[tuple[str, str, str | None]], list[str], list[str]]

#: ``fn(request, node) -> <query/>`` for a node it owns, or None when the node is not its own.
NodeHandler = Callable[[Stanza, str], Element | None]


def data_form(form_type: str, fields: dict[str, str | Iterable[str]], type: str = "result") -> Element:
    """An XEP-0004 form with a hidden ``FORM_TYPE`` (XEP-0068), as XEP-0128 extended info wants."""
    x = Element(_X, type=type)
    f = SubElement(x, f"{{{ns.DATA_FORMS}}}field", var="FORM_TYPE", type="hidden")
    SubElement(f, f"{{{ns.DATA_FORMS}}}value").text = form_type
    for var, values in fields.items():
        f = SubElement(x, f"{{{ns.DATA_FORMS}}}field", var=var)
        for v in [values] if isinstance(values, str) else values:
            SubElement(f, f"{{{ns.DATA_FORMS}}}value").text = v
    return x


def info_query(identity: tuple[str, str, str | None], features: Iterable[str]) -> Element:
    """A disco#info ``<query/>`` (XEP-0030 §3.1) with one identity and ``features``: what a service
    module answers for its own domain."""
    q = Element(f"{{{ns.DISCO_INFO}}}query")
    category, type_, name = identity
    SubElement(q, _IDENTITY, category=category, type=type_, name=name or "")
    for var in features:
        SubElement(q, f"{{{ns.DISCO_INFO}}}feature", var=var)
    return q


def _query(tag: str, node: str | None) -> Element:
    q = Element(tag)
    if node is not None:
        q.set("node", node)
    return q


class Disco(Module):
    """XEP-0030 responder for the server's hosts and its accounts' bare JIDs."""

    name = "disco"
    features = [ns.DISCO_INFO, ns.DISCO_ITEMS]
    account_features = [ns.DISCO_INFO, ns.DISCO_ITEMS]
    provides = ["disco"]

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self._node_handlers: list[NodeHandler] = []
        self._cache: dict[str, _Collected] = {}

    @hook("modules-changed")
    def _modules_changed(self) -> None:
        self.refresh()

    # -- API for other modules ----------------------------------------------------------------
    def add_node_handler(self, fn: NodeHandler) -> None:
        """Offer disco#info requests with a ``node`` to ``fn`` (see ``NodeHandler``)."""
        self._node_handlers.append(fn)

    def remove_node_handler(self, fn: NodeHandler) -> None:
        if fn in self._node_handlers:
            self._node_handlers.remove(fn)

    def refresh(self) -> None:
        """Forget what was collected (the set of loaded modules changed)."""
        self._cache.clear()

    def _collect(self, host: str) -> _Collected:
        c = self._cache.get(host)
        if c is None:
            catalog = self.ctx.catalog
            identities: dict[tuple[str, str], tuple[str, str, str | None]] = {SERVER_IDENTITY[:2]: SERVER_IDENTITY}
            for ident in catalog.identities(host):
                identities.setdefault((ident[0], ident[1]), ident)
            features = {ns.DISCO_INFO, ns.DISCO_ITEMS, *catalog.features(host)}
            account = {ns.DISCO_INFO, ns.DISCO_ITEMS, *catalog.account_features(host)}
            c = self._cache[host] = (sorted(identities.values(), key=lambda i: (i[0], i[1])),
                                     sorted(features), sorted(account))
        return c

    def server_identities(self, host: str) -> list[tuple[str, str, str | None]]:
        return self._collect(host)[0]

    def server_features(self, host: str) -> list[str]:
        return self._collect(host)[1]

    def account_feature_list(self, host: str) -> list[str]:
        return self._collect(host)[2]

    def forms(self, host: str) -> list[Element]:
        """XEP-0128 extended-information forms modules offer for ``host`` (the ``disco-forms`` fold)."""
        return list(self.ctx.fold("disco-forms", [], host))

    def info_element(self, host: str, node: str | None = None) -> Element:
        """The server's disco#info ``<query/>`` for ``host`` (``node`` mirrored, XEP-0030 §3.2)."""
        q = _query(_INFO, node)
        for category, type_, name in self.server_identities(host):
            ident = SubElement(q, _IDENTITY, category=category, type=type_)
            if name:
                ident.set("name", name)
        for var in self.server_features(host):
            SubElement(q, _FEATURE, var=var)
        q.extend(self.forms(host))
        return q

    def account_info_element(self, host: str, node: str | None = None) -> Element:
        """disco#info ``<query/>`` the server returns for an account's bare JID (XEP-0030 §3.1)."""
        q = _query(_INFO, node)
        category, type_, _ = ACCOUNT_IDENTITY
        SubElement(q, _IDENTITY, category=category, type=type_)
        for category, type_, name in self.ctx.catalog.account_identities(host):
            ident = SubElement(q, _IDENTITY, category=category, type=type_)
            if name:
                ident.set("name", name)
        for var in self.account_feature_list(host):
            SubElement(q, _FEATURE, var=var)
        return q

    def items(self, host: str) -> list[Element]:
        """The server's disco#items: its internal services, then the ``disco-items`` fold."""
        out: list[Element] = []
        for domain, _module, label in self.ctx.catalog.services(host):
            item = Element(_ITEM, jid=domain)
            if label:
                item.set("name", label)
            out.append(item)
        for entry in self.ctx.fold("disco-items", [], host):
            if isinstance(entry, Element):
                out.append(entry)
                continue
            jid, name = entry[0], entry[1] if len(entry) > 1 else None
            item = Element(_ITEM, jid=jid)
            if name:
                item.set("name", name)
            out.append(item)
        return out

    # -- handlers -----------------------------------------------------------------------------
    @iq_handler("get", ns.DISCO_INFO, "query", to="host")
    def host_info(self, request: Stanza) -> Element:
        assert request.to is not None
        node = request.el[0].get("node")
        if node is None:
            return request.result(self.info_element(request.to.domain))
        return request.result(self._node_info(request, node))

    def _node_info(self, request: Stanza, node: str) -> Element:
        for fn in self._node_handlers:
            q = fn(request, node)
            if q is not None:
                return q
        raise StanzaError("item-not-found")

    @iq_handler("get", ns.DISCO_ITEMS, "query", to="host")
    def host_items(self, request: Stanza) -> Element:
        assert request.to is not None
        if request.el[0].get("node") is not None:
            raise StanzaError("item-not-found")
        q = _query(_ITEMS, None)
        q.extend(self.items(request.to.domain))
        return request.result(q)

    async def _authorized(self, request: Stanza) -> bool:
        """The account exists and the requester may see its presence (XEP-0030 §8)."""
        to = request.to
        assert to is not None and to.local is not None
        frm = request.from_
        if frm is None or frm.bare != to.bare:
            if not await self.storage.accounts.exists(to.domain, to.local):
                return False
        return await presence_authorized(self.storage, to, frm)

    @iq_handler("get", ns.DISCO_INFO, "query", to="bare")
    async def account_info(self, request: Stanza) -> Element:
        # §8 rule 1: missing account (node or not) or unauthorized requester -> service-unavailable
        if not await self._authorized(request):
            raise StanzaError("service-unavailable")
        node = request.el[0].get("node")
        if node is not None:
            raise StanzaError("item-not-found")
        assert request.to is not None
        return request.result(self.account_info_element(request.to.domain))

    @iq_handler("get", ns.DISCO_ITEMS, "query", to="bare")
    async def account_items(self, request: Stanza) -> Element:
        node = request.el[0].get("node")
        q = _query(_ITEMS, node)
        # §8 rule 2: missing account or unauthorized requester -> an empty result
        if not await self._authorized(request):
            return request.result(q)
        if node is not None:
            raise StanzaError("item-not-found")
        to = request.to
        assert to is not None
        for res, session in sorted(self.ctx.sessions.resources(to.bare).items()):
            if session.available:
                SubElement(q, _ITEM, jid=JID(to.local, to.domain, res, _norm=False).full)
        return request.result(q)
