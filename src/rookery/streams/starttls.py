"""RFC 6120 §5: STARTTLS negotiation (the transport does the handshake)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, ClassVar
from xml.etree.ElementTree import Element, SubElement

from ..xml import ns

log = logging.getLogger(__name__)

_TLS = "{%s}" % ns.TLS


class StartTLS:
    """RFC 6120 §5.4: offered before authentication on a carrier that can do it; ``<required/>`` when
    the server requires encryption (§5.3.1)."""

    handles: ClassVar[tuple[str, ...]] = (_TLS + "starttls",)

    def ended(self, stream: Any) -> None:
        pass

    def offer(self, stream: Any, features: Element) -> None:
        if not stream.authenticated and stream.transport.can_starttls:
            st = SubElement(features, _TLS + "starttls")
            if stream.settings.require_encryption:
                SubElement(st, _TLS + "required")

    def handle(self, stream: Any, el: Element) -> Awaitable[Any] | None:
        t = stream.transport
        if stream.authenticated or not t.can_starttls:
            # §5.4.2.2: failure, then the stream and the connection are closed
            stream.send(Element(_TLS + "failure"))
            stream.close()
            return None
        stream.send(Element(_TLS + "proceed"))
        # §5.4.3.3: what follows the handshake is a new stream.  (Bytes decrypted before start_tls()
        # returns are held by the transport and fed after it.)
        stream.restart()
        # not through the stream's ordering queue: the transport takes the connection over itself
        stream.spawn(self._handshake(stream))
        return None

    @staticmethod
    async def _handshake(stream: Any) -> None:
        try:
            await stream.transport.start_tls()
        except Exception as e:
            log.debug("TLS handshake failed: %s", e)
            stream.closed = True
            stream.transport.abort()
