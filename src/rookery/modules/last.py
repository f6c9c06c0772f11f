"""XEP-0012: Last Activity.

* To the server (§5 "Server and Component Query"): ``seconds`` is the server's uptime.
* To an account's bare JID (§3 "Offline User Query"): only entities authorized to see the account's
  presence (the account itself, or a contact with a "from"/"both" subscription) get an answer; others
  get ``<forbidden/>`` (§3, §8).  If the account has a connected resource, ``seconds='0'`` with no text
  (§3, last paragraph); otherwise the seconds since its last session ended, with the status text of
  the unavailable presence it last sent, if any.  A missing account gets ``<service-unavailable/>``
  (RFC 6121 §8.5.1).  The logout time and status are kept in the key-value store ``"last"``, written
  when an account's last session ends.
* To a full JID (§4 "Online User Query"): the server must not deliver the query to the resource of an
  account whose presence the requester may not see, so it answers ``<forbidden/>`` itself and forwards
  the query only to authorized requesters.
"""

from __future__ import annotations

import json
import time
from typing import Any
from xml.etree.ElementTree import Element

from ..jid import JID
from ..module import Module, ModuleContext, hook, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import ns
from ._access import presence_authorized

STORE = "last"
KEY = "logout"
_QUERY = f"{{{ns.LAST}}}query"


def last_element(seconds: float, status: str | None = None) -> Element:
    q = Element(_QUERY, seconds=str(max(0, int(seconds))))
    if status:
        q.text = status
    return q


class LastActivity(Module):
    """XEP-0012 for the server, its accounts and (as gatekeeper) their resources."""

    name = "last"
    features = [ns.LAST]
    account_features = [ns.LAST]

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        #: full JID -> status text of the unavailable presence that session sent (until it ends)
        self._unavailable_status: dict[str, str | None] = {}
        #: bare JID -> logout record being written (XEP-0012 §3 queries see it at once)
        self._writing: dict[str, str] = {}

    @property
    def started_at(self) -> float:
        return self.ctx.started_at

    # -- §5 server uptime -----------------------------------------------------------------------
    @iq_handler("get", ns.LAST, "query", to="host")
    def uptime(self, request: Stanza) -> Element:
        return request.result(last_element(time.time() - self.started_at))

    # -- §3 account -----------------------------------------------------------------------------
    @iq_handler("get", ns.LAST, "query", to="bare")
    async def account_last(self, request: Stanza) -> Element:
        to = request.to
        assert to is not None and to.local is not None
        await self._check_access(request)
        if self.ctx.sessions.resources(to.bare):
            return request.result(last_element(0))
        # a logout whose record is still being written counts already (§3: no gap after logout)
        raw = self._writing.get(to.bare) or await self.storage.kv.get(STORE, to.domain, to.local, KEY)
        if raw is None:
            raise StanzaError("item-not-found", "no recorded activity")
        try:
            data = json.loads(raw)
            seconds = time.time() - float(data["t"])
            status = data.get("status")
        except (ValueError, KeyError, TypeError):
            self.log.warning("bad last-activity record for %s", to.bare)
            raise StanzaError("item-not-found", "no recorded activity") from None
        return request.result(last_element(seconds, status if isinstance(status, str) else None))

    async def _check_access(self, request: Stanza) -> None:
        to = request.to
        assert to is not None and to.local is not None
        frm = request.from_
        if frm is not None and frm.bare == to.bare:
            return
        if not await self.storage.accounts.exists(to.domain, to.local):
            raise StanzaError("service-unavailable")
        if not await presence_authorized(self.storage, to, frm):
            raise StanzaError("forbidden")

    # -- §4 resource: forward only to authorized requesters ------------------------------------
    @iq_handler("get", ns.LAST, "query", to="full")
    async def resource_last(self, request: Stanza) -> Element | None:
        to = request.to
        assert to is not None
        await self._check_access(request)
        session = self.ctx.sessions.get(to)
        if session is None:
            raise StanzaError("service-unavailable")  # RFC 6121 §8.5.3.2.1 (no such resource)
        self.ctx.sessions.deliver(session, request.el)
        return None

    # -- recording logouts ----------------------------------------------------------------------
    @hook("pre-presence", priority=1000)
    def _remember_unavailable(self, st: Stanza) -> None:
        """Note the status of a broadcast unavailable presence (never handles the stanza)."""
        if st.to is None and st.from_ is not None:
            if st.type == "unavailable":
                status = st.el.find("status")
                self._unavailable_status[st.from_.full] = (
                    (status.text or None) if status is not None else None
                )
            elif st.type == "available":
                self._unavailable_status.pop(st.from_.full, None)
        return None

    @hook("session-ended")
    def _session_ended(self, session: Any) -> Any:
        jid: JID | None = getattr(session, "jid", None)
        if jid is None or jid.local is None:
            return None
        status = self._unavailable_status.pop(jid.full, None)
        if status is None:
            pres = getattr(session, "presence", None)
            if pres is not None and pres.get("type") == "unavailable":
                el = pres.find("status")
                status = el.text if el is not None else None
        others = [s for s in self.ctx.sessions.resources(jid.bare).values() if s is not session]
        if others:
            return None
        record: dict[str, Any] = {"t": time.time()}
        if status:
            record["status"] = status
        data = json.dumps(record)
        self._writing[jid.bare] = data  # answers queries from now on, before the write lands
        return self._write(jid, data)

    async def _write(self, jid: JID, data: str) -> None:
        assert jid.local is not None
        try:
            await self.storage.kv.set(STORE, jid.domain, jid.local, KEY, data)
        finally:
            if self._writing.get(jid.bare) == data:
                del self._writing[jid.bare]
