"""XEP-0115: Entity Capabilities, for the server's own disco#info.

The server hashes its disco#info (XEP-0115 §5.1 "Generation Method", SHA-1, base64) and advertises the
result as a stream feature (§6.3 "Stream Feature")::

    <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://rookery.dev' ver='...'/>

and answers disco#info sent to the server with ``node='https://rookery.dev#<ver>'`` (§6.2) with the same
information it hashed (through the disco module's ``info_element``).  ``verification_string`` is pure
and follows §5.1 step by step; the tests check it against §5.2 and §5.3.
"""

from __future__ import annotations

import base64
import hashlib
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

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self._ver: dict[str, str] = {}

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
