"""XEP-0078: Non-SASL Authentication (``jabber:iq:auth``), behind ``[c2s] legacy_auth``.

Only the plaintext ``<password/>`` method is offered: digest authentication needs the plaintext
password on the server, and Rookery stores only SCRAM keys (XEP-0078 §3.2 lets a server omit it).
Plaintext is accepted only where PLAIN would be (TLS, or the loopback test switch).  It logs in and
binds in one step (a negotiator of the c2s stream, offered as the ``<auth/>`` feature, §4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, ClassVar
from xml.etree.ElementTree import Element, SubElement

from ..jid import InvalidJID, nodeprep, resourceprep
from ..xml import ns
from .auth_limits import AuthFailureLimiter
from .negotiator import iq_error, iq_reply
from .sasl_auth import CredentialSource, check_password

_Q = "{%s}" % ns.IQ_AUTH


class LegacyAuth:
    handles: ClassVar[tuple[str, ...]] = (_Q + "query",)

    def __init__(self, creds: CredentialSource, limiter: AuthFailureLimiter, failure_delay: float) -> None:
        self.creds = creds
        self.limiter = limiter
        self.failure_delay = failure_delay

    def ended(self, stream: Any) -> None:
        pass

    def offer(self, stream: Any, features: Element) -> None:
        if not stream.authenticated and (stream.transport.is_secure or not stream.settings.require_encryption):
            SubElement(features, "{%s}auth" % ns.IQ_AUTH_FEATURE)

    def handle(self, stream: Any, el: Element) -> Awaitable[Any] | None:
        if el.tag != "iq":
            stream.stream_error("unsupported-stanza-type")
            return None
        if stream.settings.require_encryption and not stream.transport.is_secure:
            stream.stream_error("policy-violation", "encryption is required")
            return None
        if stream.authenticated:
            stream.send(iq_error(el, "not-allowed", "already authenticated"))
            return None
        itype = el.get("type")
        q = el.find(_Q + "query")
        assert q is not None
        if itype == "get":
            # XEP-0078 §3 Example 2: the fields the server accepts
            reply = Element(_Q + "query")
            SubElement(reply, _Q + "username").text = (q.findtext(_Q + "username") or "").strip() or None
            SubElement(reply, _Q + "password")
            SubElement(reply, _Q + "resource")
            stream.send(iq_reply(el, reply))
            return None
        if itype == "set":
            return self._set(stream, el, q)
        stream.send(iq_error(el, "bad-request"))
        return None

    async def _set(self, stream: Any, el: Element, q: Element) -> None:
        username = (q.findtext(_Q + "username") or "").strip()
        password = q.findtext(_Q + "password")
        resource = (q.findtext(_Q + "resource") or "").strip()
        if not username or not resource or password is None:
            # XEP-0078 §3.1 Example 6: required information not provided
            stream.send(iq_error(el, "not-acceptable", "username, password and resource are required"))
            return
        if not stream.plain_allowed():
            stream.send(iq_error(el, "not-acceptable", "plaintext passwords need an encrypted connection"))
            return
        try:
            user = nodeprep(username)
            resource = resourceprep(resource)
        except InvalidJID:
            stream.send(iq_error(el, "jid-malformed"))
            return
        peer = stream.transport.peer_ip
        wait = self.limiter.delay(peer, user)
        if wait > 0:
            await asyncio.sleep(wait)
            if stream.closed:
                return
        if not await check_password(self.creds, stream.local_domain, user, password):
            self.limiter.failed(peer, user)
            await asyncio.sleep(self.failure_delay)
            stream.send(iq_error(el, "not-authorized"))
            return
        if stream.closed:
            return
        stream.username = user
        stream.authenticated = True
        stream.auth_info = {"mechanism": "jabber:iq:auth"}
        self.limiter.succeeded(peer, user)
        logging.getLogger("rookery.auth").info("login ok: %s@%s (jabber:iq:auth) from %s", user,
                                               stream.local_domain, peer)
        stream.bind(resource, lambda _jid: iq_reply(el))
