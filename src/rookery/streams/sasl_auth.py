"""RFC 6120 §6: SASL negotiation on a c2s stream — SCRAM-SHA-1/-256/-512 and -PLUS
(``streams.sasl`` does the exchange), PLAIN inside TLS only (§13.8), XEP-0440 channel-binding types.

Wrong passwords are answered after a delay and counted per connection (``MAX_AUTH_FAILURES``
closes it with ``<policy-violation/>``) and per (address, account) and per address
(``AuthFailureLimiter``: over its thresholds, attempts wait an exponentially growing delay before they are
checked).  Negotiation failures (an unsupported channel-binding type, a malformed message) and exchanges
abandoned before the proof are answered at once and not counted: they test no password.  Unknown users go
through the same exchange with throw-away keys whose salt is derived from the server secret
(``sasl.fake_credential``), so a probe learns nothing about which accounts exist.

Logged at info on ``rookery.auth``: each successful login and each wrong password (JID, mechanism,
address; never the password).
"""

from __future__ import annotations

import asyncio
import base64
import logging
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
log = logging.getLogger("rookery.auth")


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
    """Verify a plaintext password against the stored SCRAM keys (off the event loop)."""
    if not user:
        return False
    stored = await creds.get_credentials(host, user)
    if not stored:
        return False
    # SHA-256 keys, else whatever an import brought (Prosody exports only SCRAM-SHA-1 keys)
    name = "SHA-256" if "SHA-256" in stored else next(iter(sorted(stored)))
    return await asyncio.to_thread(sasl.check_password, password, stored[name], name)


class SASLState:
    """One stream's SASL negotiation (``stream.sasl``; dropped once authenticated)."""

    __slots__ = ("exchange", "failures", "mechanism", "user")

    def __init__(self) -> None:
        self.exchange: sasl.ScramExchange | None = None
        self.failures = 0
        self.mechanism = ""
        self.user = ""  # the account the exchange in progress is for (existing or not)


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
            wait = self.limiter.delay(stream.transport.peer_ip, _state(stream).user)
            if wait > 0:
                return self._scram_final_later(stream, ex, text, wait)
            return self._scram_final(stream, ex, text)
        return self._failure(stream, "aborted")  # §6.4.4

    # -- outcomes ----------------------------------------------------------------------------
    def ended(self, stream: Any) -> None:
        """The stream is over: an exchange still waiting for the client's proof was abandoned."""
        if stream.sasl is not None:
            self._abandon(stream, stream.sasl)

    def _abandon(self, stream: Any, state: SASLState) -> None:
        state.exchange = None  # no proof came: no password was tested, nothing to count

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
        ip = stream.transport.peer_ip
        self.limiter.failed(ip, state.user)
        if log.isEnabledFor(logging.INFO):
            log.info("login failed: %s@%s (%s) from %s: wrong password", state.user or "?", stream.local_domain,
                     state.mechanism, ip)
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
        ip = stream.transport.peer_ip
        self.limiter.succeeded(ip, user)
        if log.isEnabledFor(logging.INFO):
            log.info("login ok: %s@%s (%s) from %s", user, stream.local_domain, mechanism, ip)
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
    def _scram_final(self, stream: Any, ex: sasl.ScramExchange, text: str) -> Awaitable[None] | None:
        try:
            final = ex.final(text)
        except sasl.SASLFailure as f:
            # a wrong proof counts; a channel-binding mismatch is a negotiation failure, answered at once
            return self._failure(stream, f.condition, f.text, delay=f.wrong_password)
        return self._success(stream, ex.username, final)

    async def _scram_final_later(self, stream: Any, ex: sasl.ScramExchange, text: str, wait: float) -> None:
        await asyncio.sleep(wait)
        if not stream.closed and _state(stream).exchange is ex:
            await self._await(self._scram_final(stream, ex, text))

    def _scram_first(self, stream: Any, text: str) -> Awaitable[None] | None:
        """The client-first message: answered at once when the credentials can be read without waiting
        (``get_credentials_now``: SQLite's inline read), else once they are read."""
        ex = _state(stream).exchange
        assert ex is not None
        try:
            client_first = base64.b64decode(text, validate=True).decode("utf-8")
            authzid = client_first.split(",", 2)[1] if client_first.count(",") >= 2 else ""
            user = sasl.parse_scram_username(client_first)
        except (ValueError, UnicodeDecodeError):
            return self._failure(stream, "incorrect-encoding")
        except sasl.SASLFailure as f:
            return self._failure(stream, f.condition)
        if authzid.startswith("a=") and not _authzid_ok(stream, user, authzid[2:]):
            return self._failure(stream, "invalid-authzid")
        _state(stream).user = user
        if not user:
            return self._scram_challenge(stream, ex, text, None)
        now = getattr(self.creds, "get_credentials_now", None)
        creds = now(stream.local_domain, user) if now is not None else NotImplemented
        if creds is NotImplemented:
            return self._scram_first_later(stream, ex, text, user)
        return self._scram_challenge(stream, ex, text, creds)

    async def _scram_first_later(self, stream: Any, ex: sasl.ScramExchange, text: str, user: str) -> None:
        creds = await self.creds.get_credentials(stream.local_domain, user)
        await self._await(self._scram_challenge(stream, ex, text, creds))

    def _scram_challenge(self, stream: Any, ex: sasl.ScramExchange, text: str,
                         creds: dict[str, ScramCredential] | None) -> Awaitable[None] | None:
        user = _state(stream).user
        cred = (creds or {}).get(ex.hash_name) or sasl.fake_credential(ex.hash_name, user, self.secret)
        ex.username = user if creds else ""
        try:
            challenge = ex.first(text, cred)
        except sasl.SASLFailure as f:  # e.g. a channel-binding type this server does not offer
            return self._failure(stream, f.condition, f.text)
        if not stream.closed:
            c = Element(_SASL + "challenge")
            c.text = challenge
            stream.send(c)
        return None

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
        _state(stream).user = user
        wait = self.limiter.delay(stream.transport.peer_ip, user)
        if wait > 0:
            await asyncio.sleep(wait)
            if stream.closed:
                return
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
