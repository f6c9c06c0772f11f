"""RFC 3921 §3 "Session Establishment" (urn:ietf:params:xml:ns:xmpp-session), kept for old clients.

RFC 6121 Appendix E removed the requirement; the stream code advertises
``<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>`` (the
draft-cridland-xmpp-session-01 "optional" marker) and this module answers a client's iq-set
``<session/>`` with an empty result (RFC 3921 §3), whether addressed to the server (as in
RFC 3921's example) or sent with no ``to`` (addressed to its own account, RFC 6120 §10.3.3).
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from ..module import Module, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import ns


class Session(Module):
    """RFC 3921 §3: a no-op session establishment."""

    name = "session"

    @iq_handler("set", ns.SESSION, "session", to="host")
    def establish(self, request: Stanza) -> Element:
        return request.result()

    @iq_handler("set", ns.SESSION, "session", to="bare")
    def establish_bare(self, request: Stanza) -> Element:
        if request.from_ is None or request.to is None or request.from_.bare != request.to.bare:
            raise StanzaError("service-unavailable")
        return request.result()
