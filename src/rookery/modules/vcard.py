"""XEP-0054: vcard-temp, stored by the server for each account.

* §3.1 "Retrieving One's vCard": an iq-get ``<vCard xmlns='vcard-temp'/>`` with no ``to`` (or to the
  own bare JID) returns the stored vCard, or an empty ``<vCard/>`` when there is none.
* §3.2 "Updating One's vCard": an iq-set replaces the whole vCard; a set addressed to another account
  is ``<forbidden/>``.  vCards larger than ``MAX_SIZE`` serialized are refused with
  ``<policy-violation/>``; an empty ``<vCard/>`` deletes the stored one.
* §3.3 "Viewing Another User's vCard": the server answers on the account's behalf; a missing account
  and an account without a vCard both get ``<service-unavailable/>`` (the same error in both cases, so
  accounts cannot be harvested).

vCards live in the key-value store ``"vcard"``.  The module provides the ``vcard`` service (``load``,
``store``) and fires ``vcard-changed`` (host, user, vCard element or None) after a client's set; the
XEP-0153/XEP-0398 avatar handling is the ``avatar_conversion`` module's.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError, fromstring

from ..module import Module, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import ns, serialize

STORE = "vcard"
KEY = "vcard"
MAX_SIZE = 64 * 1024
_VCARD = f"{{{ns.VCARD}}}vCard"


class VCard(Module):
    """XEP-0054 storage and retrieval of account vCards."""

    name = "vcard"
    features = [ns.VCARD]
    account_features = [ns.VCARD]
    provides = ["vcard"]

    async def load(self, host: str, user: str) -> Element | None:
        """The stored vCard of ``user@host`` (None when there is none)."""
        return await self._load(host, user)

    async def store(self, host: str, user: str, vcard: Element | None) -> None:
        """Replace (or with None / an empty vCard, delete) the stored vCard; no ``vcard-changed``."""
        if vcard is None or (len(vcard) == 0 and not (vcard.text or "").strip()):
            await self.storage.kv.delete(STORE, host, user, KEY)
        else:
            await self.storage.kv.set(STORE, host, user, KEY, serialize(vcard))

    async def _changed(self, host: str, user: str, vcard: Element | None) -> None:
        r = self.ctx.fire("vcard-changed", host, user, vcard)
        if r is not None:
            await r

    async def _load(self, host: str, user: str) -> Element | None:
        raw = await self.storage.kv.get(STORE, host, user, KEY)
        if raw is None:
            return None
        try:
            el = fromstring(raw)
        except ParseError:
            self.log.warning("unreadable stored vCard of %s@%s", user, host)
            return None
        return el if el.tag == _VCARD else None

    @iq_handler("get", ns.VCARD, "vCard", to="bare")
    async def get_vcard(self, request: Stanza) -> Element:
        to, frm = request.to, request.from_
        assert to is not None and to.local is not None
        own = frm is not None and frm.bare == to.bare
        vcard = await self._load(to.domain, to.local)
        if vcard is None:
            if not own:
                # §3.3: no vCard and no such account get the same error
                raise StanzaError("service-unavailable")
            vcard = Element(_VCARD)
        return request.result(vcard)

    @iq_handler("set", ns.VCARD, "vCard", to="bare")
    async def set_vcard(self, request: Stanza) -> Element:
        to, frm = request.to, request.from_
        assert to is not None and to.local is not None
        if frm is None or frm.bare != to.bare:
            raise StanzaError("forbidden", "you may only change your own vCard")  # §3.2
        vcard = request.el[0]
        if len(vcard) == 0 and not (vcard.text or "").strip():
            await self.storage.kv.delete(STORE, to.domain, to.local, KEY)
            await self._changed(to.domain, to.local, None)
            return request.result()
        data = serialize(vcard)
        if len(data.encode("utf-8")) > MAX_SIZE:
            raise StanzaError("policy-violation", f"vCard larger than {MAX_SIZE // 1024} KiB")
        await self.storage.kv.set(STORE, to.domain, to.local, KEY, data)
        await self._changed(to.domain, to.local, vcard)
        return request.result()
