"""RFC 6120 §6: SASL negotiation on a c2s stream — SCRAM-SHA-1/-256/-512 and -PLUS
(``streams.sasl`` does the exchange), PLAIN inside TLS only (§13.8), XEP-0440 channel-binding types.

Failures of credentials are answered after a delay and counted per connection (``MAX_AUTH_FAILURES``
closes it with ``<policy-violation/>``) and per IP address (``AuthFailureLimiter``); so is a SCRAM
exchange abandoned after the server's challenge (the stream ends or a new ``<auth/>`` starts over), which
is all an account-enumeration probe needs.  Unknown users go through the same exchange with
throw-away keys whose salt is derived from the server secret (``sasl.fake_credential``).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable
from typing import Any, ClassVar, Protocol
from xml.etree.ElementTree import Element, SubElement

from ..jid import JID, InvalidJID, nodeprep
from ..storage.base import ScramCredential
from ..xml import ns
from . import sasl
from .auth_limits import AuthFailureLimiter

_SASL = "{%s}" % ns.SASL
MAX_AUTH_FAILURES = 5


class CredentialSource(Protocol):
    async def get_credentials(self, host: str, user: str) -> dict[str, ScramCredential] | None: ...


def mechanisms(stream: Any) -> list[str]:
    """RFC 6120 §6.3.3: the mechanisms offered now, strongest first."""
    t = stream.transport
    out: list[str] = []
    if t.is_secure and t.cb_data is not None:
        out += [m + "-PLUS" for m in sasl.SCRAM_ORDER]
    out += sasl.SCRAM_ORDER
    if stream.plain_allowed():
        out.append("PLAIN")
    return out


async def check_password(creds: CredentialSource, host: str, user: str, password: str) -> bool:
    """Verify a plaintext password against the stored SCRAM-SHA-256 keys (off the event loop)."""
    if not user:
        return False
    stored = await creds.get_credentials(host, user)
    if not stored or "SHA-256" not in stored:
        return False
    return await asyncio.to_thread(sasl.check_password, password, stored["SHA-256"], "SHA-256")


class SASLState:
    """One stream's SASL negotiation (``stream.sasl``; dropped once authenticated)."""

    __slots__ = ("exchange", "failures", "mechanism")

    def __init__(self) -> None:
        self.exchange: sasl.ScramExchange | None = None
        self.failures = 0
        self.mechanism = ""


def _state(stream: Any) -> SASLState:
    st: SASLState | None = stream.sasl
    if st is None:
        st = stream.sasl = SASLState()
    return st


class SASLAuth:
    """RFC 6120 §6.4 (one instance shared by every c2s stream; the state is ``stream.sasl``)."""

    handles: ClassVar[tuple[str, ...]] = (_SASL + "auth", _SASL + "response", _SASL + "abort")

    def __init__(self, creds: CredentialSource, limiter: AuthFailureLimiter, failure_delay: float,
                 secret: bytes) -> None:
        self.creds = creds
        self.limiter = limiter
        self.failure_delay = failure_delay
        self.secret = secret  # the server secret unknown users' salts derive from

    def offer(self, stream: Any, features: Element) -> None:
        if stream.authenticated:
            return
        t = stream.transport
        if not (t.is_secure or not stream.settings.require_encryption):
            return
        mechs = SubElement(features, _SASL + "mechanisms")
        for m in mechanisms(stream):
            SubElement(mechs, _SASL + "mechanism").text = m
        if t.is_secure and t.cb_data is not None:
            # XEP-0440: the channel-binding types this server supports
            cb = SubElement(features, "{%s}sasl-channel-binding" % ns.SASL_CB)
            SubElement(cb, "{%s}channel-binding" % ns.SASL_CB, type="tls-server-end-point")

    def handle(self, stream: Any, el: Element) -> Awaitable[Any] | None:
        local = el.tag[len(_SASL):]
        if stream.authenticated:
            stream.stream_error("policy-violation", "already authenticated")
            return None
        if stream.settings.require_encryption and not stream.transport.is_secure:
            return self._failure(stream, "encryption-required", "use STARTTLS first")
        text = (el.text or "").strip()
        if local == "auth":
            if self.limiter.blocked(stream.transport.peer_ip):
                return self._failure(stream, "temporary-auth-failure",
                                     "too many failed logins from your address; try later")
            mech = el.get("mechanism", "")
            if mech not in mechanisms(stream):
                return self._failure(stream, "invalid-mechanism")
            state = _state(stream)
            self._abandon(stream, state)  # a new <auth/> starts over
            state.mechanism = mech
            if mech == "PLAIN":
                return self._plain(stream, text)
            t = stream.transport
            state.exchange = sasl.ScramExchange(mech, t.cb_data if t.is_secure else None)
            if not text or text == "=":
                stream.send(Element(_SASL + "challenge"))  # §6.4.2: no initial response
                return None
            return self._scram_first(stream, text)
        if local == "response":
            ex = _state(stream).exchange
            if ex is None:
                return self._failure(stream, "malformed-request", "no exchange in progress")
            if ex.server is None:
                return self._scram_first(stream, text)
            try:
                final = ex.final(text)
            except sasl.SASLFailure as f:
                return self._failure(stream, f.condition, delay=f.condition == "not-authorized")
            return self._success(stream, ex.username, final)
        return self._failure(stream, "aborted")  # §6.4.4

    # -- outcomes ----------------------------------------------------------------------------
    def ended(self, stream: Any) -> None:
        """The stream is over: an exchange still waiting for the client's proof was abandoned."""
        if stream.sasl is not None:
            self._abandon(stream, stream.sasl)

    def _abandon(self, stream: Any, state: SASLState) -> None:
        ex = state.exchange
        if ex is not None and ex.server is not None:  # the challenge went out, no proof came
            self.limiter.failed(stream.transport.peer_ip)
        state.exchange = None

    def _failure(self, stream: Any, condition: str, text: str | None = None,
                 delay: bool = False) -> Awaitable[None] | None:
        """RFC 6120 §6.4.5; a wrong credential is answered after a delay and counted."""
        state = _state(stream)
        state.exchange = None
        f = Element(_SASL + "failure")
        SubElement(f, _SASL + condition)
        if text:
            t = SubElement(f, _SASL + "text")
            t.set(ns.XML_LANG, "en")
            t.text = text
        if not delay:
            stream.send(f)
            return None
        state.failures += 1
        self.limiter.failed(stream.transport.peer_ip)
        return self._delayed_failure(stream, f, state.failures)

    async def _delayed_failure(self, stream: Any, f: Element, failures: int) -> None:
        await asyncio.sleep(self.failure_delay)
        if stream.closed:
            return
        stream.send(f)
        if failures >= MAX_AUTH_FAILURES:
            stream.stream_error("policy-violation", "too many failed authentication attempts")

    def _success(self, stream: Any, user: str, final_b64: str | None) -> Awaitable[None] | None:
        """RFC 6120 §6.4.6: success, then the stream restarts (§4.3.3)."""
        if not user:
            return self._failure(stream, "not-authorized", delay=True)
        mechanism = _state(stream).mechanism
        stream.sasl = None
        stream.authenticated = True
        stream.username = user
        s = Element(_SASL + "success")
        if final_b64:
            s.text = final_b64
        stream.send(s)
        stream.auth_info = {"mechanism": mechanism}
        stream.restart()
        return None

    @staticmethod
    async def _await(r: Awaitable[None] | None) -> None:
        if r is not None:
            await r

    # -- SCRAM (RFC 5802) --------------------------------------------------------------------
    async def _scram_first(self, stream: Any, text: str) -> None:
        ex = _state(stream).exchange
        assert ex is not None
        try:
            client_first = base64.b64decode(text, validate=True).decode("utf-8")
            authzid = client_first.split(",", 2)[1] if client_first.count(",") >= 2 else ""
            user = sasl.parse_scram_username(client_first)
        except (ValueError, UnicodeDecodeError):
            return await self._await(self._failure(stream, "incorrect-encoding"))
        except sasl.SASLFailure as f:
            return await self._await(self._failure(stream, f.condition))
        if authzid.startswith("a=") and not _authzid_ok(stream, user, authzid[2:]):
            return await self._await(self._failure(stream, "invalid-authzid"))
        creds = await self.creds.get_credentials(stream.local_domain, user) if user else None
        cred = (creds or {}).get(ex.hash_name) or sasl.fake_credential(ex.hash_name, user, self.secret)
        ex.username = user if creds else ""
        try:
            challenge = ex.first(text, cred)
        except sasl.SASLFailure as f:
            return await self._await(self._failure(stream, f.condition, delay=True))
        if not stream.closed:
            c = Element(_SASL + "challenge")
            c.text = challenge
            stream.send(c)

    # -- PLAIN (RFC 4616) --------------------------------------------------------------------
    async def _plain(self, stream: Any, text: str) -> None:
        try:
            authzid, authcid, password = sasl.parse_plain(text)
            user = nodeprep(authcid) if authcid else ""
        except sasl.SASLFailure as f:
            return await self._await(self._failure(stream, f.condition))
        except InvalidJID:
            user = ""
        if authzid and not _authzid_ok(stream, user, authzid):
            return await self._await(self._failure(stream, "invalid-authzid"))
        if not await check_password(self.creds, stream.local_domain, user, password):
            return await self._await(self._failure(stream, "not-authorized", delay=True))
        await self._await(self._success(stream, user, None))


def _authzid_ok(stream: Any, user: str, authzid: str) -> bool:
    """RFC 6120 §6.3.8: an authorization identity, if given, must be the account itself."""
    try:
        j = JID.parse(authzid.replace("=2C", ",").replace("=3D", "="))
    except InvalidJID:
        return False
    return j.resource is None and j.local == user and j.domain == stream.local_domain
