"""XEP-0049: Private XML Storage (jabber:iq:private).

§2.3 "Elements": an iq-set ``<query xmlns='jabber:iq:private'>`` stores each child fragment under its
own (namespace, name); an iq-get with one empty child returns the stored fragment, or that empty child
when nothing is stored.  A query without a child is ``<not-acceptable/>`` (§2.3 "MUST respond with a
Not Acceptable error").  Only the account itself may get or set its data: a query addressed to another
account is ``<forbidden/>`` (§2.3, §4 "Security Considerations").  Fragments in the reserved namespaces
``jabber:client``, ``jabber:server`` and ``jabber:iq:private`` (or in no namespace, which inside a
client stream means ``jabber:client``) are ``<not-acceptable/>`` (§2.3, optional in the XEP).

Fragments live in the key-value store ``"private"``, keyed by Clark name ``{namespace}name``.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError, fromstring

from ..module import Module, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import ns, serialize

STORE = "private"
RESERVED = frozenset({ns.CLIENT, ns.SERVER, ns.PRIVATE})
MAX_SIZE = 256 * 1024
_QUERY = f"{{{ns.PRIVATE}}}query"


def _key(child: Element) -> str:
    """The storage key of a fragment; raises not-acceptable for reserved or missing namespaces."""
    tag = child.tag
    if tag[:1] != "{":
        raise StanzaError("not-acceptable", "private data must be in its own namespace")
    namespace = tag[1:].partition("}")[0]
    if namespace in RESERVED:
        raise StanzaError("not-acceptable", f"namespace {namespace} is reserved")
    return tag


class PrivateStorage(Module):
    """XEP-0049 per-account private XML."""

    name = "private"
    features = [ns.PRIVATE]
    account_features = [ns.PRIVATE]

    def _check(self, request: Stanza) -> tuple[str, str, list[Element]]:
        to, frm = request.to, request.from_
        assert to is not None and to.local is not None
        if frm is None or frm.bare != to.bare:
            raise StanzaError("forbidden", "private data belongs to its owner")
        children = list(request.el[0])
        if not children:
            raise StanzaError("not-acceptable", "the query needs a child element")
        return to.domain, to.local, children

    async def _check_quota(self, host: str, user: str, new: dict[str, str], quota: int) -> None:
        """``[limits] max_private_bytes``: the account's fragments after this set, in bytes."""
        total = sum(len(v.encode("utf-8")) for v in new.values())
        for key in await self.storage.kv.keys(STORE, host, user):
            if key not in new:
                raw = await self.storage.kv.get(STORE, host, user, key)
                total += len(raw.encode("utf-8")) if raw is not None else 0
        if total > quota:
            raise StanzaError("policy-violation", f"private data over the account's quota of {quota} bytes")

    @iq_handler("get", ns.PRIVATE, "query", to="bare")
    async def get_private(self, request: Stanza) -> Element:
        host, user, children = self._check(request)
        keys = [_key(c) for c in children]
        q = Element(_QUERY)
        for key in keys:
            raw = await self.storage.kv.get(STORE, host, user, key)
            el: Element | None = None
            if raw is not None:
                try:
                    el = fromstring(raw)
                except ParseError:
                    self.log.warning("unreadable private data %s of %s@%s", key, user, host)
            q.append(el if el is not None and el.tag == key else Element(key))
        return request.result(q)

    @iq_handler("set", ns.PRIVATE, "query", to="bare")
    async def set_private(self, request: Stanza) -> Element:
        host, user, children = self._check(request)
        items = [(_key(c), serialize(c)) for c in children]
        for _, data in items:
            if len(data.encode("utf-8")) > MAX_SIZE:
                raise StanzaError("policy-violation", f"private data larger than {MAX_SIZE // 1024} KiB")
        quota = self.ctx.limits.max_private_bytes if self.ctx.limits is not None else 0
        if quota:
            await self._check_quota(host, user, dict(items), quota)
        for key, data in items:
            await self.storage.kv.set(STORE, host, user, key, data)
        return request.result()
