"""RFC 6120 §7: resource binding on a c2s stream (and RFC 3921 §3 session establishment before it)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from typing import Any, ClassVar
from xml.etree.ElementTree import Element, SubElement

from ..jid import JID, InvalidJID, resourceprep
from ..xml import ns
from .negotiator import iq_error, iq_reply

_BIND = "{%s}bind" % ns.BIND
_SESSION = "{%s}session" % ns.SESSION


class BindRefused(Exception):
    """The host refuses to bind a resource: RFC 6120 §7.6.2.1 ``resource-constraint`` (the account
    has reached its limit of connected resources) or §7.6.2.2 ``not-allowed``."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(text or condition)
        self.condition = condition
        self.text = text


class Bind:
    """RFC 6120 §7.1: offered once authenticated; §7.6 server-generated resource when the client asks
    for none; §7.7.2.2 conflict handled by the session registry (the new session wins)."""

    handles: ClassVar[tuple[str, ...]] = (_BIND, _SESSION)

    def ended(self, stream: Any) -> None:
        pass

    def offer(self, stream: Any, features: Element) -> None:
        if stream.authenticated:
            SubElement(features, _BIND)
            # RFC 6121 Appendix E: the RFC 3921 session, marked optional for the clients that look
            sess = SubElement(features, _SESSION)
            SubElement(sess, "{%s}optional" % ns.SESSION)

    def handle(self, stream: Any, el: Element) -> Awaitable[Any] | None:
        if not stream.authenticated or el.tag != "iq":
            stream.stream_error("not-authorized", "authenticate first")
            return None
        payload = el.find(_BIND)
        if payload is None:  # RFC 3921 §3 session before binding: nothing to do
            stream.send(iq_reply(el))
            return None
        if el.get("type") != "set":
            stream.send(iq_error(el, "bad-request", "resource binding is an iq of type set"))
            return None
        res_el = payload.find("{%s}resource" % ns.BIND)
        requested = (res_el.text or "").strip() if res_el is not None else ""
        if requested:
            try:
                resource = resourceprep(requested)
            except InvalidJID:
                stream.send(iq_error(el, "bad-request", "invalid resourcepart"))
                return None
        else:
            resource = "rookery-" + secrets.token_hex(6)
        def reply(jid: JID) -> Element:
            b = Element(_BIND)
            SubElement(b, "{%s}jid" % ns.BIND).text = jid.full
            return iq_reply(el, b)

        try:
            stream.bind(resource, reply)
        except BindRefused as e:
            stream.send(iq_error(el, e.condition, e.text))
        return None
