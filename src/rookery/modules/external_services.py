"""XEP-0215: External Service Discovery (``urn:xmpp:extdisco:2``), with TURN REST API credentials.

* ``<services/>`` (§3.1, §3.2; ``type`` selects one kind): the STUN/TURN (or other) services of
  ``[external_services] services``, each ``{type, host, port, transport, name, restricted}``.
  A ``restricted`` service gets time-limited credentials in the answer, made the way the TURN REST
  API ("A REST API For Access To TURN Services", draft-uberti-behave-turn-rest; coturn's
  ``use-auth-secret``) describes: ``username = "<expiry unix time>:<bare JID>"``, ``password =
  base64(HMAC-SHA1(secret, username))``, valid ``ttl`` seconds (the ``expires`` attribute);
  a service with a fixed ``username``/``password`` in the configuration gets those instead.
* ``<credentials><service host type [port]/></credentials>`` (§3.3): fresh credentials for the
  matching services; ``item-not-found`` when none matches or none has credentials.
* Only the server's own users may ask (``forbidden`` otherwise): credentials are for them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Literal
from xml.etree.ElementTree import Element

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..jid import JID
from ..module import Module, Options, iq_handler
from ..stanza import Stanza, StanzaError

NS = "urn:xmpp:extdisco:2"


class Service(BaseModel):
    """One entry of ``[external_services] services``."""

    model_config = ConfigDict(extra="forbid")

    #: the XMPP Registrar's service type: "stun", "turn", "turns", ...
    type: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    transport: Literal["udp", "tcp"] | None = None
    name: str | None = None
    #: credentials are needed: TURN REST credentials from ``secret`` (or the fixed ones below)
    restricted: bool = False
    username: str | None = None
    password: str | None = None


class ExternalServicesOptions(Options):
    """``[external_services]`` (or ``[modules.external_services]``)."""

    services: list[Service] = []
    #: the TURN REST API shared secret (coturn: ``static-auth-secret``)
    secret: str | None = None
    #: seconds the generated credentials are valid
    ttl: int = Field(86400, ge=60)

    @model_validator(mode="after")
    def _credentials(self) -> ExternalServicesOptions:
        for s in self.services:
            if (s.username is None) != (s.password is None):
                raise ValueError(f"services: {s.type} {s.host}: username and password go together")
            if s.restricted and s.username is None and not self.secret:
                raise ValueError(f"services: {s.type} {s.host} is restricted: set secret (or its username/password)")
        return self


def turn_credentials(secret: str, jid: str, ttl: int, now: float | None = None) -> tuple[str, str, int]:
    """TURN REST API credentials for ``jid``: (username, password, expiry as unix time)."""
    expires = int((time.time() if now is None else now) + ttl)
    username = f"{expires}:{jid}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode(), expires


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ExternalServices(Module):
    """XEP-0215 on each served domain."""

    name = "external_services"
    features = [NS]
    Options = ExternalServicesOptions

    def _requester(self, st: Stanza) -> JID:
        frm = st.from_
        if st.origin is None or frm is None or frm.local is None or frm.domain not in self.ctx.hosts:
            raise StanzaError("forbidden", "External services are for this server's users")
        return frm

    def _element(self, s: Service, who: JID, opts: ExternalServicesOptions, *, credentials: bool = True) -> Element:
        el = Element(f"{{{NS}}}service", type=s.type, host=s.host)
        if s.port is not None:
            el.set("port", str(s.port))
        if s.transport is not None:
            el.set("transport", s.transport)
        if s.name:
            el.set("name", s.name)
        if s.restricted:
            el.set("restricted", "true")
        if credentials and s.username is not None and s.password is not None:
            el.set("username", s.username)
            el.set("password", s.password)
        elif credentials and s.restricted and opts.secret:
            user, password, expires = turn_credentials(opts.secret, str(who.bare), opts.ttl)
            el.set("username", user)
            el.set("password", password)
            el.set("expires", _stamp(expires))
        return el

    @iq_handler("get", NS, "services", to="host")
    def services(self, st: Stanza) -> Element:
        who = self._requester(st)
        assert st.to is not None
        opts: ExternalServicesOptions = self.ctx.options_for(st.to.domain)
        kind = st.el[0].get("type")
        out = Element(f"{{{NS}}}services")
        if kind:
            out.set("type", kind)
        for s in opts.services:
            if kind is None or s.type == kind:
                out.append(self._element(s, who, opts))
        return st.result(out)

    @iq_handler("get", NS, "credentials", to="host")
    def credentials(self, st: Stanza) -> Element:
        who = self._requester(st)
        assert st.to is not None
        opts: ExternalServicesOptions = self.ctx.options_for(st.to.domain)
        want = st.el[0].find(f"{{{NS}}}service")
        if want is None or not want.get("host") or not want.get("type"):
            raise StanzaError("bad-request", "A <service/> with host and type is required")
        port = want.get("port")
        out = Element(f"{{{NS}}}credentials")
        for s in opts.services:
            if s.host != want.get("host") or s.type != want.get("type"):
                continue
            if port is not None and str(s.port) != port:
                continue
            if s.username is None and not (s.restricted and opts.secret):
                continue
            el = self._element(s, who, opts)
            out.append(el)
        if not len(out):
            raise StanzaError("item-not-found", "No credentials for that service")
        return st.result(out)
