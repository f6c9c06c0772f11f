"""XEP-0115: Entity Capabilities, for the server's own disco#info and its clients' capabilities.

The server hashes its disco#info (XEP-0115 §5.1 "Generation Method", SHA-1, base64) and advertises the
result as a stream feature (§6.3 "Stream Feature")::

    <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://rookery.dev' ver='...'/>

and answers disco#info sent to the server with ``node='https://rookery.dev#<ver>'`` (§6.2) with the same
information it hashed (through the disco module's ``info_element``).  ``verification_string`` is pure
and follows §5.1 step by step; the tests check it against §5.2 and §5.3.

Clients' capabilities (§6.4 "Processing Method", for PEP's ``+notify`` filtering, XEP-0163 §4): the
``<c/>`` of a local client's broadcast presence names a ``ver``; a known one (verified before, kept in
memory and in the module's ``hashes`` map store) applies at once, an unknown one is asked for with a
disco#info to the client's ``node#ver`` (one query per ``ver`` however many clients wait), verified
(§5.4: SHA-1 only) and cached.  Other modules read ``features_of(session)`` (the ``caps`` service) and
hook the plain event ``caps-changed(session)``, fired when a session's known features change.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Iterable
from typing import Any
from xml.etree.ElementTree import Element

from ..module import Module, ModuleContext, fold, hook
from ..stanza import Stanza
from ..xml import ns

NODE = "https://rookery.dev"
HASH = "sha-1"

_C = f"{{{ns.CAPS}}}c"
_IDENTITY = f"{{{ns.DISCO_INFO}}}identity"
_FEATURE = f"{{{ns.DISCO_INFO}}}feature"
_X = f"{{{ns.DATA_FORMS}}}x"
_FIELD = f"{{{ns.DATA_FORMS}}}field"
_VALUE = f"{{{ns.DATA_FORMS}}}value"
_XML_LANG = ns.XML_LANG

Identity = tuple[str, str, str | None, str | None]  # category, type, xml:lang, name


def _octets(s: str) -> bytes:
    # RFC 4790 §9.3 "i;octet": compare the UTF-8 octets
    return s.encode("utf-8")


def verification_string(
    identities: Iterable[Identity], features: Iterable[str], forms: Iterable[Element] = ()
) -> str:
    """XEP-0115 §5.1: the SHA-1 verification string of the given disco#info content."""
    s: list[str] = []
    # steps 2-3: identities sorted by category, type, xml:lang; "category/type/lang/name<"
    for cat, typ, lang, name in sorted(
        identities, key=lambda i: (_octets(i[0]), _octets(i[1]), _octets(i[2] or ""), _octets(i[3] or ""))
    ):
        s.append(f"{cat}/{typ}/{lang or ''}/{name or ''}<")
    # steps 4-5: features sorted, each followed by "<"
    for var in sorted(set(features), key=_octets):
        s.append(var + "<")
    # steps 6-7: XEP-0128 forms sorted by FORM_TYPE; fields by var; values sorted
    typed: list[tuple[str, Element]] = []
    for form in forms:
        form_type = _form_type(form)
        if form_type is not None:
            typed.append((form_type, form))
    for form_type, form in sorted(typed, key=lambda p: _octets(p[0])):
        s.append(form_type + "<")
        fields = [f for f in form.iter(_FIELD) if f.get("var") and f.get("var") != "FORM_TYPE"]
        for field in sorted(fields, key=lambda f: _octets(f.get("var", ""))):
            s.append(field.get("var", "") + "<")
            values = [v.text or "" for v in field.findall(_VALUE)]
            for v in sorted(values, key=_octets):
                s.append(v + "<")
    # steps 8-9: UTF-8, SHA-1, base64 without whitespace
    digest = hashlib.sha1("".join(s).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def _form_type(form: Element) -> str | None:
    """The FORM_TYPE of a form; None when it has none or it is not hidden (§5.4 step 3.6)."""
    for field in form.findall(_FIELD):
        if field.get("var") == "FORM_TYPE":
            if field.get("type") != "hidden":
                return None
            value = field.find(_VALUE)
            return (value.text or "") if value is not None else None
    return None


def verification_string_of(query: Element) -> str:
    """§5.1 applied to a disco#info ``<query/>`` element."""
    identities = [
        (i.get("category", ""), i.get("type", ""), i.get(_XML_LANG), i.get("name"))
        for i in query.findall(_IDENTITY)
    ]
    features = [f.get("var", "") for f in query.findall(_FEATURE)]
    return verification_string(identities, features, query.findall(_X))


class Caps(Module):
    """XEP-0115 for the server: stream feature and the ``node#ver`` disco#info node."""

    name = "caps"
    depends = ["disco"]
    provides = ["caps"]

    #: most client ``ver``s remembered in memory (the store keeps them all)
    MAX_KNOWN = 10000
    #: seconds to wait for a client's disco#info answer
    QUERY_TIMEOUT = 10.0

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self._ver: dict[str, str] = {}
        #: verified client ver -> its features
        self._known: dict[str, frozenset[str]] = {}
        #: ver -> sessions waiting for it to be resolved
        self._waiting: dict[str, list[Any]] = {}
        #: iq id of a disco#info query -> (the queried full JID, the answer's future)
        self._queries: dict[str, tuple[str, asyncio.Future[Element | None]]] = {}
        self._hashes: Any = None

    @property
    def hashes(self) -> Any:
        """The verified client ``ver``s (map store ``hashes``: host, "", ver -> features as JSON)."""
        if self._hashes is None:
            self._hashes = self.ctx.open_store("hashes", "map")
        return self._hashes

    @property
    def disco(self) -> Any:
        return self.ctx.service("disco")

    async def start(self) -> None:
        self._ver.clear()
        self.disco.add_node_handler(self._node_info)

    async def stop(self) -> None:
        self.disco.remove_node_handler(self._node_info)

    @hook("modules-changed")
    def invalidate(self) -> None:
        self._ver.clear()

    def ver(self, host: str) -> str:
        """The verification string of ``host``'s disco#info (cached until the modules change)."""
        v = self._ver.get(host)
        if v is None:
            v = self._ver[host] = verification_string_of(self.disco.info_element(host))
        return v

    def _node_info(self, request: Stanza, node: str) -> Element | None:
        """§6.2: disco#info to ``NODE#ver`` answers with the hashed information."""
        assert request.to is not None
        host = request.to.domain
        if node != f"{NODE}#{self.ver(host)}":
            return None
        return self.disco.info_element(host, node)  # type: ignore[no-any-return]

    @fold("stream-features")
    def stream_feature(self, features: Element, stream: Any) -> Element:
        """§6.3: advertise the server's capabilities in the stream features."""
        features.append(Element(_C, hash=HASH, node=NODE, ver=self.ver(stream.local_domain)))
        return features

    # -- clients' capabilities (§6.4) ------------------------------------------------------------
    def features_of(self, session: Any) -> frozenset[str] | None:
        """The verified disco#info features of a local session's client, None when unknown."""
        ver = session.ext.get("caps.ver")
        return self._known.get(ver) if ver is not None else None

    @hook("pre-presence", priority=50)
    def client_presence(self, st: Stanza) -> None:
        """A local client's broadcast presence: remember its ``ver`` and resolve it (never handles)."""
        session, to = st.origin, st.to
        if st.type != "available" or session is None or st.from_ is None:
            return None
        if to is not None and (to.resource is not None or to.bare != st.from_.bare):
            return None
        c = st.el.find(_C)
        if c is None or c.get("hash") != HASH:
            return None
        ver, node = c.get("ver"), c.get("node")
        if not ver or not node or session.ext.get("caps.ver") == ver:
            return None
        self.ctx.sessions.publish(session, "caps.ver", ver)  # every worker sees it (issue 12)
        if ver in self._known:
            self._changed(session)
        else:
            self.ctx.spawn(self._resolve(session, node, ver))
        return None

    def _changed(self, session: Any) -> None:
        r = self.ctx.fire("caps-changed", session)
        if r is not None:
            self.ctx.spawn(r)

    async def _resolve(self, session: Any, node: str, ver: str) -> None:
        waiting = self._waiting.get(ver)
        if waiting is not None:
            waiting.append(session)
            return
        self._waiting[ver] = waiting = [session]
        try:
            features = await self._lookup(session, node, ver)
        finally:
            del self._waiting[ver]
        if features is None:
            return
        if len(self._known) >= self.MAX_KNOWN:
            self._known.clear()
        self._known[ver] = features
        for s in waiting:
            if s.ext.get("caps.ver") == ver and self.ctx.sessions.get(s.jid) is s:
                self._changed(s)

    async def _lookup(self, session: Any, node: str, ver: str) -> frozenset[str] | None:
        host = session.jid.domain
        stored = await self.hashes.get(host, "", ver)
        if stored is not None:
            return frozenset(json.loads(stored))
        qid = "caps-" + secrets.token_hex(6)
        fut: asyncio.Future[Element | None] = asyncio.get_running_loop().create_future()
        self._queries[qid] = (session.jid.full, fut)
        iq = Element("iq", {"type": "get", "id": qid, "from": host, "to": session.jid.full})
        iq.append(Element(f"{{{ns.DISCO_INFO}}}query", node=f"{node}#{ver}"))
        try:
            r = self.ctx.router.send(iq)
            if r is not None:
                await r
            query = await asyncio.wait_for(fut, self.QUERY_TIMEOUT)
        except TimeoutError:
            return None
        finally:
            self._queries.pop(qid, None)
        if query is None or verification_string_of(query) != ver:
            self.log.debug("client caps %s not verified", ver)
            return None  # §5.4 step 7: not cached
        features = sorted({f.get("var", "") for f in query.findall(_FEATURE)} - {""})
        self.ctx.spawn(self.hashes.set(host, "", ver, json.dumps(features)))
        return frozenset(features)

    @hook("iq-result/host", priority=50)
    def query_result(self, st: Stanza) -> bool | None:
        return self._answer(st, st.el.find(f"{{{ns.DISCO_INFO}}}query"))

    @hook("iq-error/host", priority=50)
    def query_error(self, st: Stanza) -> bool | None:
        return self._answer(st, None)

    def _answer(self, st: Stanza, query: Element | None) -> bool | None:
        q = self._queries.get(st.id or "")
        if q is None or st.from_ is None or st.from_.full != q[0]:
            return None
        if not q[1].done():
            q[1].set_result(query)
        return True
