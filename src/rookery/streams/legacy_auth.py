"""XEP-0078: Non-SASL Authentication (``jabber:iq:auth``), behind ``[c2s] legacy_auth``.

Only the plaintext ``<password/>`` method is offered: digest authentication needs the plaintext
password on the server, and Rookery stores only SCRAM keys (XEP-0078 §3.2 lets a server omit it).
Plaintext is accepted only where PLAIN would be (TLS, or the loopback test switch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element, SubElement

from ..jid import InvalidJID, nodeprep, resourceprep
from ..xml import ns

if TYPE_CHECKING:
    from .c2s import C2SStream

_Q = "{%s}" % ns.IQ_AUTH


class LegacyAuth:
    def __init__(self, stream: C2SStream) -> None:
        self.stream = stream

    def handle(self, el: Element) -> Awaitable | None:
        s = self.stream
        if s.authenticated:
            s._iq_error(el, "not-allowed", "already authenticated")
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
            s._reply_iq(el, reply)
            return None
        if itype == "set":
            return self._set(el, q)
        s._iq_error(el, "bad-request")
        return None

    async def _set(self, el: Element, q: Element) -> None:
        s = self.stream
        username = (q.findtext(_Q + "username") or "").strip()
        password = q.findtext(_Q + "password")
        resource = (q.findtext(_Q + "resource") or "").strip()
        if not username or not resource or password is None:
            # XEP-0078 §3.1 Example 6: required information not provided
            s._iq_error(el, "not-acceptable", "username, password and resource are required")
            return
        if not s.plain_allowed():
            s._iq_error(el, "not-acceptable", "plaintext passwords need an encrypted connection")
            return
        try:
            user = nodeprep(username)
            resource = resourceprep(resource)
        except InvalidJID:
            s._iq_error(el, "jid-malformed")
            return
        limiter = s.server.auth_limiter
        if limiter.blocked(s.transport.peer_ip):
            s._iq_error(el, "resource-constraint", "too many failed logins from your address; try later")
            return
        if not await s.check_password(user, password):
            limiter.failed(s.transport.peer_ip)
            await asyncio.sleep(s.cfg.auth_failure_delay)
            s._iq_error(el, "not-authorized")
            return
        if s.closed:
            return
        s.username = user
        s.bind_resource(resource)
        s._reply_iq(el)
