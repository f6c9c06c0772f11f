"""XEP-0199: XMPP Ping, answered by the server.

§4.2 "Client-To-Server Pings": an iq-get with ``<ping xmlns='urn:xmpp:ping'/>`` sent to the server, to
the client's own bare JID or with no ``to`` at all (which RFC 6120 §10.3.3 makes the account's bare JID)
gets an empty iq result.  A ping to another account's bare JID is answered on that account's behalf
only if the account exists (RFC 6121 §8.5.1: otherwise ``<service-unavailable/>``).  Pings to a full
JID are routed to that client by the router (§4.4 "Client-to-Client Pings").
"""

from __future__ import annotations

from collections.abc import Awaitable
from xml.etree.ElementTree import Element

from ..module import Module, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import ns


class Ping(Module):
    """XEP-0199 §4.2: pong."""

    name = "ping"
    features = [ns.PING]

    @iq_handler("get", ns.PING, "ping", to="host")
    def pong(self, request: Stanza) -> Element:
        return request.result()

    @iq_handler("get", ns.PING, "ping", to="bare")
    def pong_bare(self, request: Stanza) -> Element | Awaitable[Element]:
        frm, to = request.from_, request.to
        assert to is not None
        if frm is not None and frm.bare == to.bare:
            return request.result()
        return self._pong_other(request)

    async def _pong_other(self, request: Stanza) -> Element:
        to = request.to
        assert to is not None and to.local is not None
        if not await self.storage.accounts.exists(to.domain, to.local):
            raise StanzaError("service-unavailable")
        return request.result()
