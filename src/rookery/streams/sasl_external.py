"""XEP-0178: SASL EXTERNAL for server-to-server streams, on the receiving side.

Offered once TLS is up and the certificate the peer presented validates for the domain in the 'from'
of its stream header (RFC 6125, judged by the host); the authorization identity, when given, must be
that domain.  Success restarts the stream (RFC 6120 §6.4.6); failure leaves the peer free to try
dialback (XEP-0178 §3, XEP-0220).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable
from typing import Any, ClassVar
from xml.etree.ElementTree import Element, SubElement

from ..xml import ns

_SASL = "{%s}" % ns.SASL


def _failure(condition: str) -> Element:
    f = Element(_SASL + "failure")
    SubElement(f, _SASL + condition)
    return f


class SASLExternal:
    """The receiving side of XEP-0178 (a ``Negotiator`` of the s2s-in stream)."""

    handles: ClassVar[tuple[str, ...]] = (_SASL + "auth",)

    def ended(self, stream: Any) -> None:
        pass

    def offer(self, stream: Any, features: Element) -> None:
        if not stream.authenticated and stream.transport.is_secure and stream.cert_valid_for(stream.peer_from):
            mechs = SubElement(features, _SASL + "mechanisms")
            SubElement(mechs, _SASL + "mechanism").text = "EXTERNAL"

    def handle(self, stream: Any, el: Element) -> Awaitable[Any] | None:
        if stream.authenticated:
            stream.stream_error("policy-violation", "already authenticated")
            return None
        if el.get("mechanism") != "EXTERNAL":
            stream.send(_failure("invalid-mechanism"))
            return None
        text = (el.text or "").strip()
        domain = stream.peer_from
        if text and text != "=":
            try:
                domain = base64.b64decode(text, validate=True).decode("utf-8").lower()
            except (binascii.Error, UnicodeDecodeError):
                stream.send(_failure("incorrect-encoding"))
                return None
            if domain != stream.peer_from:
                stream.send(_failure("invalid-authzid"))
                return None
        if not domain or not stream.transport.is_secure or not stream.cert_valid_for(domain):
            stream.send(_failure("not-authorized"))
            if not stream.dialback_allowed():  # §3: nothing else can authenticate it here
                stream.stream_error("not-authorized", "the certificate is not valid for that domain")
            return None
        stream.send(Element(_SASL + "success"))
        stream.sasl_authenticated(domain)
        stream.restart()
        return None
