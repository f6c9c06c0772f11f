"""XEP-0077: In-Band Registration — account creation (off unless ``[register] allow``), password
change and account removal; invite tokens of XEP-0401 (Easy User Onboarding) / XEP-0445
(Pre-Authenticated In-Band Registration) when ``[register] invite_only``.

* Registration (XEP-0077 §3.1) happens on a c2s stream before authentication: the stream offers the
  ``<register xmlns='http://jabber.org/features/iq-register'/>`` feature (§4) through the
  ``stream-features-pre-auth`` fold, and an ``<iq/>`` whose payload is ``{jabber:iq:register}query``
  reaches this module's stream element handler (the c2s stream hands a pre-bind iq to the element
  handler of its payload's name).  A get returns the fields (``<username/>``, ``<password/>``), a set
  creates the account with its password stored only as SCRAM keys.  Errors: ``<not-allowed/>`` (set)
  or ``<service-unavailable/>`` (get, §3.1) while registration is off; ``<not-authorized/>`` on a
  stream without TLS (unless the loopback switch ``[c2s] allow_plaintext_auth`` applies: the rule of
  PLAIN, RFC 6120 §13.8); ``<not-acceptable/>`` for a missing or empty field or a username that is
  not a valid localpart (RFC 7622 §3.3) or a password that is not an RFC 8265 OpaqueString;
  ``<conflict/>`` for an existing username; ``<resource-constraint/>`` (type wait) past
  ``[register] max_per_ip`` accounts from one IP address in ``window`` seconds; ``<not-acceptable/>``
  for a second registration on the same stream (§3.1 "Registration with a Server").
* Invite tokens: with ``invite_only`` the stream also offers ``<register xmlns='urn:xmpp:ibr-token:0'/>``
  (XEP-0445) and ``<register xmlns='urn:xmpp:invite'/>`` (XEP-0401); the client sends
  ``<iq type='set'><preauth xmlns='urn:xmpp:pars:0' token='…'/></iq>`` before registering.  An
  unknown, expired or used token is ``<forbidden/>``; registering without a valid token is
  ``<forbidden/>``.  Tokens are made by ``rookery invite`` (``create_invite``), kept in this module's
  ``invites`` map store (domain-wide, user ""), and used up by the registration they allow.
* Once authenticated (§3.3, §3.2): a get answers ``<registered/>`` with the username; a set with
  ``<username/>`` and ``<password/>`` changes the password (new SCRAM keys: the next login needs the
  new password; an empty password is ``<not-acceptable/>`` and the old one stays); a set with only
  ``<remove/>`` deletes the account and all its data (storage also takes it out of local contacts'
  rosters), replies, then closes every session of the account with the ``<not-authorized/>`` stream
  error (§3.2) and fires ``user-deleted``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from ..config import RegisterConfig
from ..jid import InvalidJID, nodeprep
from ..module import Module, ModuleContext, element_handler, fold, iq_handler
from ..stanza import Stanza, StanzaError
from ..streams.negotiator import iq_error, iq_reply

NS = "jabber:iq:register"
FEATURE = "http://jabber.org/features/iq-register"
PARS = "urn:xmpp:pars:0"
IBR_TOKEN = "urn:xmpp:ibr-token:0"
INVITE = "urn:xmpp:invite"
_QUERY = f"{{{NS}}}query"
_PREAUTH = f"{{{PARS}}}preauth"

#: the module's stores (the CLI opens the same one)
INVITES_STORE = "invites"
#: ``Stream.ext`` keys
_TOKEN = "register.token"
_DONE = "register.done"


def invite_uri(domain: str, token: str) -> str:
    """XEP-0401 §5 / XEP-0445 §2.2: an invitation to register any account name on ``domain``."""
    return f"xmpp:{domain}?register;preauth={token}"


async def create_invite(invites: Any, domain: str, expires: float | None) -> str:
    """A new single-use invite token for ``domain``, valid ``expires`` seconds (None: no expiry)."""
    token = secrets.token_urlsafe(18)
    now = time.time()
    value = {"created": now, "expires": None if expires is None else now + expires}
    await invites.set(domain, "", token, json.dumps(value))
    return token


def _opaque(password: str) -> bool:
    try:
        from precis_i18n import get_profile

        get_profile("OpaqueString").enforce(password)
    except UnicodeError:
        return False
    return True


def _text(query: Element, name: str) -> str | None:
    child = query.find(f"{{{NS}}}{name}")
    return None if child is None else (child.text or "")


class Register(Module):
    """XEP-0077 in-band registration, password change and account removal."""

    name = "register"
    features = [NS]
    Options = RegisterConfig

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.invites = ctx.open_store(INVITES_STORE, "map")
        #: IP address -> times of the accounts created from it within the window
        self._recent: dict[str, deque[float]] = {}
        self._token_lock = asyncio.Lock()

    # -- stream features (before authentication) ---------------------------------------------
    @fold("stream-features-pre-auth")
    def stream_feature(self, features: Element, stream: Any) -> Element:
        """XEP-0077 §4 (and XEP-0445/XEP-0401 with invite tokens), only where registering is
        possible: registration on, and the stream encrypted (or the loopback switch)."""
        opts: RegisterConfig = self.ctx.options_for(stream.local_domain)
        if opts.allow and stream.plain_allowed():
            features.append(Element(f"{{{FEATURE}}}register"))
            if opts.invite_only:
                features.append(Element(f"{{{IBR_TOKEN}}}register"))
                features.append(Element(f"{{{INVITE}}}register"))
        return features

    # -- iqs on a stream without a session -----------------------------------------------------
    @element_handler(_QUERY)
    def stream_query(self, stream: Any, el: Element) -> Any:
        """A jabber:iq:register iq before binding (XEP-0077 §3.1); authenticated streams act for
        their account (§3.3, §3.2)."""
        if el.tag != "iq":
            stream.stream_error("unsupported-stanza-type")
            return None
        typ = el.get("type")
        if typ in ("result", "error"):
            return None
        if typ not in ("get", "set"):
            stream.send(iq_error(el, "bad-request"))
            return None
        query = el[0]
        host = stream.local_domain
        if stream.authenticated:
            if typ == "get":
                stream.send(iq_reply(el, self._registered(stream.username)))
                return None
            return self._account_set(host, stream.username, query, stream.plain_allowed(), stream.send, None,
                                     el, stream)
        opts: RegisterConfig = self.ctx.options_for(host)
        if typ == "get":
            if not opts.allow:
                stream.send(iq_error(el, "service-unavailable", "in-band registration is not offered here"))
            elif not stream.plain_allowed():
                stream.send(iq_error(el, "not-authorized", "use TLS to register"))
            else:
                q = Element(_QUERY)
                SubElement(q, f"{{{NS}}}instructions").text = "Choose a username and password."
                SubElement(q, f"{{{NS}}}username")
                SubElement(q, f"{{{NS}}}password")
                stream.send(iq_reply(el, q))
            return None
        if query.find(f"{{{NS}}}remove") is not None:
            stream.send(iq_error(el, "registration-required", "authenticate to cancel a registration"))
            return None
        err = self._precheck(stream, opts)
        if err is not None:
            stream.send(iq_error(el, *err))
            return None
        username, password = _text(query, "username"), _text(query, "password")
        if not username or not password:
            stream.send(iq_error(el, "not-acceptable", "a username and a password are required"))
            return None
        try:
            user = nodeprep(username)
        except InvalidJID as e:
            stream.send(iq_error(el, "not-acceptable", f"invalid username: {e}"))
            return None
        if not _opaque(password):
            stream.send(iq_error(el, "not-acceptable", "the password is not valid (RFC 8265 OpaqueString)"))
            return None
        return self._create(stream, el, opts, host, user, password)

    def _precheck(self, stream: Any, opts: RegisterConfig) -> tuple[str, str] | None:
        if not opts.allow:
            return "not-allowed", "in-band registration is disabled"
        if not stream.plain_allowed():
            return "not-authorized", "use TLS to register"
        if stream.ext.get(_DONE):
            return "not-acceptable", "an account was already registered on this stream"
        if opts.invite_only and _TOKEN not in stream.ext:
            return "forbidden", "registration is by invitation only: send an invite token first"
        if opts.max_per_ip and self._count(stream.transport.peer_ip, opts.window) >= opts.max_per_ip:
            return "resource-constraint", "too many registrations from your address; try later"
        return None

    def _count(self, ip: str, window: float) -> int:
        times = self._recent.get(ip)
        if times is None:
            return 0
        cutoff = time.monotonic() - window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._recent[ip]
            return 0
        return len(times)

    async def _create(self, stream: Any, el: Element, opts: RegisterConfig, host: str, user: str,
                      password: str) -> None:
        from ..streams.sasl import make_credentials

        if await self.storage.accounts.exists(host, user):  # before the costly key derivation
            stream.send(iq_error(el, "conflict", "that username is taken"))
            return
        creds = await asyncio.get_running_loop().run_in_executor(None, make_credentials, password)
        token = stream.ext.get(_TOKEN) if opts.invite_only else None
        async with self._token_lock:  # a token allows one account, however many streams hold it
            if token is not None and not await self._token_valid(host, token):
                stream.ext.pop(_TOKEN, None)
                stream.send(iq_error(el, "forbidden", "the invite token is invalid, expired or used"))
                return
            if not await self.storage.accounts.create(host, user, creds):
                stream.send(iq_error(el, "conflict", "that username is taken"))
                return
            if token is not None:
                await self.invites.delete(host, "", token)
                stream.ext.pop(_TOKEN, None)
        stream.ext[_DONE] = True
        if opts.max_per_ip:
            self._recent.setdefault(stream.transport.peer_ip, deque()).append(time.monotonic())
        self.log.info("account %s@%s registered in-band", user, host)
        stream.send(iq_reply(el))

    # -- invite tokens (XEP-0401, XEP-0445) ----------------------------------------------------
    async def _token_valid(self, host: str, token: str) -> bool:
        raw = await self.invites.get(host, "", token)
        if raw is None:
            return False
        try:
            expires = json.loads(raw).get("expires")
        except (ValueError, AttributeError):
            expires = 0
        if expires is not None and not (isinstance(expires, int | float) and time.time() < expires):
            await self.invites.delete(host, "", token)
            return False
        return True

    @element_handler(_PREAUTH)
    def stream_preauth(self, stream: Any, el: Element) -> Any:
        """XEP-0445 §3 / XEP-0401 §5: a pre-authentication token before registering."""
        if el.tag != "iq":
            stream.stream_error("unsupported-stanza-type")
            return None
        typ = el.get("type")
        if typ in ("result", "error"):
            return None
        if typ != "set":
            stream.send(iq_error(el, "bad-request"))
            return None
        opts: RegisterConfig = self.ctx.options_for(stream.local_domain)
        if stream.authenticated:
            stream.send(iq_error(el, "unexpected-request", "already authenticated"))
            return None
        if not opts.allow:
            stream.send(iq_error(el, "not-allowed", "in-band registration is disabled"))
            return None
        token = el[0].get("token")
        if not token:
            stream.send(iq_error(el, "bad-request", "a token is required"))
            return None
        return self._preauth(stream, el, token)

    async def _preauth(self, stream: Any, el: Element, token: str) -> None:
        if not await self._token_valid(stream.local_domain, token):
            stream.send(iq_error(el, "forbidden", "the invite token is invalid, expired or used"))
            return
        stream.ext[_TOKEN] = token
        stream.send(iq_reply(el))

    # -- an authenticated account: §3.1 <registered/>, §3.3 password change, §3.2 removal ----
    @staticmethod
    def _registered(user: str) -> Element:
        q = Element(_QUERY)
        SubElement(q, f"{{{NS}}}registered")
        SubElement(q, f"{{{NS}}}username").text = user
        SubElement(q, f"{{{NS}}}password")
        return q

    def _own(self, request: Stanza) -> tuple[str, str]:
        frm, to = request.from_, request.to
        if request.origin is None or frm is None or frm.local is None:
            raise StanzaError("forbidden")
        if to is not None and to.domain != frm.domain:
            raise StanzaError("not-allowed", "register with your own server only")
        if to is not None and to.local is not None and to.bare != frm.bare:
            raise StanzaError("service-unavailable")
        return frm.domain, frm.local

    @iq_handler("get", NS, "query", to="host")
    @iq_handler("get", NS, "query", to="bare")
    def get_registered(self, request: Stanza) -> Element:
        _host, user = self._own(request)
        return request.result(self._registered(user))

    @iq_handler("set", NS, "query", to="host")
    @iq_handler("set", NS, "query", to="bare")
    def set_account(self, request: Stanza) -> Any:
        host, user = self._own(request)
        origin = request.origin
        stream = getattr(origin, "stream", None)
        safe = bool(origin.auth.get("secure")) or (stream is not None and stream.plain_allowed())
        query = request.el[0]

        def send(el: Element) -> None:
            self.ctx.router.reply(request, el)

        def build(e: Element | StanzaError | None) -> Element:
            return request.error(e) if isinstance(e, StanzaError) else request.result()

        return self._account_set(host, user, query, safe, send, build, request.el, None)

    def _account_set(self, host: str, user: str, query: Element, safe: bool, send: Any, build: Any,
                     el: Element, stream: Any) -> Any:
        """§3.2 removal or §3.3 password change for ``user@host``.  ``send`` writes a reply;
        ``build(StanzaError)`` / ``build(None)`` makes the error / result (stanza or stream form)."""

        def fail(condition: str, text: str | None = None) -> None:
            err = StanzaError(condition, text)
            send(build(err) if stream is None else iq_error(el, condition, text))

        children = list(query)
        if any(c.tag == f"{{{NS}}}remove" for c in children):
            if len(children) != 1:
                fail("bad-request", "<remove/> must be the only child of <query/>")
                return None
            return self._remove(host, user, lambda: send(build(None) if stream is None else iq_reply(el)),
                                fail, stream)
        if not safe:
            fail("not-authorized", "use TLS to change your password")
            return None
        username, password = _text(query, "username"), _text(query, "password")
        if username:
            try:
                if nodeprep(username) != user:
                    raise InvalidJID("not your username")
            except InvalidJID:
                fail("bad-request", "the username is not yours")
                return None
        if not password:
            fail("not-acceptable", "an empty password is not accepted; the old one stays")
            return None
        if not _opaque(password):
            fail("not-acceptable", "the password is not valid (RFC 8265 OpaqueString)")
            return None
        return self._change(host, user, password,
                            lambda: send(build(None) if stream is None else iq_reply(el)), fail)

    async def _change(self, host: str, user: str, password: str, ok: Any, fail: Any) -> None:
        from ..streams.sasl import make_credentials

        creds = await asyncio.get_running_loop().run_in_executor(None, make_credentials, password)
        if not await self.storage.accounts.set_credentials(host, user, creds):
            fail("registration-required", "no such account")
            return
        self.log.info("password of %s@%s changed in-band", user, host)
        ok()

    async def _remove(self, host: str, user: str, ok: Any, fail: Any, stream: Any) -> None:
        if not await self.storage.accounts.delete(host, user):
            fail("registration-required", "no such account")
            return
        self.log.info("account %s@%s removed in-band", user, host)
        ok()  # the result first, then §3.2: <not-authorized/> to every session of the account
        for ref in list(self.ctx.sessions.resources(f"{user}@{host}").values()):
            self.ctx.sessions.close(ref, "not-authorized", "account removed")
        if stream is not None:
            stream.close("not-authorized", "account removed")
        r = self.ctx.fire("user-deleted", host, user)
        if r is not None:
            await r
