"""XEP-0398: User Avatar to vCard-Based Avatars Conversion, and XEP-0153 avatar hashes in presence.

* §2 Discovery: the account advertises ``urn:xmpp:pep-vcard-conversion:0``.
* §3.1 From PEP to vCard: a publication to the ``urn:xmpp:avatar:metadata`` node (XEP-0084) picks
  the ``<info/>`` without a ``url``, fetches the item with that id from ``urn:xmpp:avatar:data``,
  checks that the SHA-1 of the image is the id, and stores the image as the vCard-temp ``PHOTO``
  (``TYPE`` + ``BINVAL``, the rest of the vCard kept).  An empty ``<metadata/>`` (XEP-0084 §4.6,
  avatar disabled) removes the ``PHOTO``.  §7 Security: the conversion is done only when the data
  node's access model is ``open`` (a vCard is public; an avatar shown to contacts only is not copied).
* §3.2 From vCard to PEP: a vCard-temp set (XEP-0054 §3.2) with a valid ``PHOTO`` publishes the image
  to ``urn:xmpp:avatar:data`` (item id its SHA-1), then one ``<info/>`` (bytes, id, type) to
  ``urn:xmpp:avatar:metadata``, both with access model ``open``; subscribers are notified.  A vCard
  without a valid photo changes nothing in PEP (a client that edits only the name must not remove
  the avatar; §3.2 converts "a vCard publication request with a valid photo").
* §4 Presence Broadcast / XEP-0153 §3.2: every available presence a local client sends (broadcast or
  directed, e.g. MUC joins) carries ``<x xmlns='vcard-temp:x:update'><photo>SHA-1</photo></x>`` when
  the account has an avatar; a client's own ``<photo/>`` (empty or not) is left alone, an ``<x/>``
  without ``<photo/>`` is replaced.  Like the XEP's §6.1 says, the server does not resend presence
  when the avatar changes: clients resend it after the metadata notification.

Loops are cut by comparing hashes: a conversion that would store what is already there does nothing.
The hash of each account seen is kept in memory (loaded from the vCard on first use).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any
from xml.etree.ElementTree import Element, ParseError, SubElement, fromstring

from ..jid import JID, InvalidJID
from ..module import Module, hook
from ..stanza import Stanza
from ..xml import ns

FEATURE = "urn:xmpp:pep-vcard-conversion:0"
DATA = "urn:xmpp:avatar:data"
METADATA = "urn:xmpp:avatar:metadata"
UPDATE = "vcard-temp:x:update"
_V = f"{{{ns.VCARD}}}"
_X = f"{{{UPDATE}}}x"
_PHOTO = f"{{{UPDATE}}}photo"
_OPEN = {"pubsub#access_model": "open", "pubsub#persist_items": True}


def vcard_photo(vcard: Element | None) -> tuple[bytes, str] | None:
    """The image and its MIME type of a vCard-temp ``PHOTO`` (None when there is no valid one)."""
    if vcard is None:
        return None
    photo = vcard.find(_V + "PHOTO")
    if photo is None:
        return None
    binval = photo.findtext(_V + "BINVAL")
    if not binval or not binval.strip():
        return None
    try:
        data = base64.b64decode("".join(binval.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not data:
        return None
    return data, (photo.findtext(_V + "TYPE") or "image/png").strip() or "image/png"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


#: cluster event: an account's avatar hash changed on another worker
CHANGED = "avatar-hash-changed"

class AvatarConversion(Module):
    """XEP-0398 PEP avatar <-> vCard-temp PHOTO, XEP-0153 hashes in outgoing presence."""

    name = "avatar_conversion"
    depends = ["vcard", "pep"]
    account_features = [FEATURE]

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        #: bare JID -> SHA-1 of the account's avatar, "" when it has none
        self._hashes: dict[str, str] = {}

    @property
    def vcard(self) -> Any:
        return self.ctx.service("vcard")

    @property
    def pep(self) -> Any:
        return self.ctx.service("pep")

    async def hash_of(self, host: str, user: str) -> str:
        """The SHA-1 of the account's vCard photo ("" when none)."""
        bare = f"{user}@{host}"
        h = self._hashes.get(bare)
        if h is None:
            photo = vcard_photo(await self.vcard.load(host, user))
            h = self._hashes[bare] = sha1(photo[0]) if photo else ""
        return h

    # -- §4: the hash in outgoing presence -------------------------------------------------------
    @hook("pre-presence", priority=100)
    def outbound_presence(self, st: Stanza) -> Any:
        """A local client's available presence gets the hash (never handles the stanza)."""
        frm = st.from_
        if st.type != "available" or st.origin is None or frm is None or frm.local is None:
            return None
        x = st.el.find(_X)
        if x is not None and x.find(_PHOTO) is not None:
            return None  # the client's own <photo/> (empty: "no avatar") is left alone
        h = self._hashes.get(frm.bare)
        if h is not None:
            self._stamp(st.el, x, h)
            return None
        return self._stamp_later(st, frm)

    async def _stamp_later(self, st: Stanza, frm: JID) -> None:
        assert frm.local is not None
        h = await self.hash_of(frm.domain, frm.local)
        self._stamp(st.el, st.el.find(_X), h)
        return None

    @staticmethod
    def _stamp(el: Element, x: Element | None, h: str) -> None:
        if not h:
            return
        if x is not None:
            el.remove(x)  # §4: an <x/> without <photo/> is overwritten
        SubElement(SubElement(el, _X), _PHOTO).text = h

    # -- §3.1 PEP -> vCard -----------------------------------------------------------------------
    @hook("pep-published")
    async def pep_published(self, account: str, node: str, items: list[Any]) -> None:
        if node != METADATA or not items:
            return
        try:
            jid = JID.parse(account)
        except InvalidJID:
            return
        if jid.local is None or not self.ctx.enabled_for(jid.domain):
            return
        payload = items[-1].payload
        try:
            meta = fromstring(payload) if payload else None
        except ParseError:
            return
        if meta is None or meta.tag != f"{{{METADATA}}}metadata":
            return
        infos = [i for i in meta.findall(f"{{{METADATA}}}info") if not i.get("url") and i.get("id")]
        if not meta.findall(f"{{{METADATA}}}info"):
            await self._set_vcard_photo(jid, None)  # XEP-0084 §4.6: avatar disabled
            return
        if not infos:
            return
        info = infos[0]
        data_node = await self.pep.node_of(jid, DATA)
        if data_node is None or data_node.access_model != "open":
            self.log.debug("avatar of %s not converted: data node missing or not open", jid.bare)
            return
        item = data_node.items.get(info.get("id"))
        if item is None or not item.payload:
            return
        try:
            data_el = fromstring(item.payload)
            image = base64.b64decode("".join((data_el.text or "").split()), validate=True)
        except (ParseError, binascii.Error, ValueError):
            return
        if not image or sha1(image) != info.get("id"):
            self.log.info("avatar of %s not converted: SHA-1 is not the item id", jid.bare)
            return
        await self._set_vcard_photo(jid, (image, info.get("type") or "image/png"))

    async def _set_vcard_photo(self, jid: JID, photo: tuple[bytes, str] | None) -> None:
        assert jid.local is not None
        host, user = jid.domain, jid.local
        new_hash = sha1(photo[0]) if photo else ""
        vcard = await self.vcard.load(host, user)
        old = vcard_photo(vcard)
        if (sha1(old[0]) if old else "") == new_hash:
            self._hashes[jid.bare] = new_hash
            return
        if vcard is None:
            vcard = Element(_V + "vCard")
        for p in vcard.findall(_V + "PHOTO"):
            vcard.remove(p)
        if photo is not None:
            p = SubElement(vcard, _V + "PHOTO")
            SubElement(p, _V + "TYPE").text = photo[1]
            SubElement(p, _V + "BINVAL").text = base64.b64encode(photo[0]).decode("ascii")
        await self.vcard.store(host, user, vcard)
        self._set_hash(jid.bare, new_hash)
        self.log.debug("vCard photo of %s set from PEP (%s)", jid.bare, new_hash or "none")

    # -- §3.2 vCard -> PEP -----------------------------------------------------------------------
    @hook("vcard-changed")
    async def vcard_changed(self, host: str, user: str, vcard: Element | None) -> None:
        if not self.ctx.enabled_for(host):
            return
        jid = JID.parse(f"{user}@{host}")
        photo = vcard_photo(vcard)
        new_hash = sha1(photo[0]) if photo else ""
        self._set_hash(jid.bare, new_hash)
        if photo is None:
            return
        meta_node = await self.pep.node_of(jid, METADATA)
        current = ""
        last = meta_node.last_item() if meta_node is not None else None
        if last is not None and last.payload:
            try:
                info = fromstring(last.payload).find(f"{{{METADATA}}}info")
                current = info.get("id", "") if info is not None else ""
            except ParseError:
                pass
        if current == new_hash:
            return
        meta = Element(f"{{{METADATA}}}metadata")
        image, mime = photo
        data = Element(f"{{{DATA}}}data")
        data.text = base64.b64encode(image).decode("ascii")
        await self.pep.publish_own(jid, DATA, new_hash, data, _OPEN)
        SubElement(meta, f"{{{METADATA}}}info", bytes=str(len(image)), id=new_hash, type=mime)
        await self.pep.publish_own(jid, METADATA, new_hash, meta, _OPEN)

    def _set_hash(self, bare: str, h: str) -> None:
        if self._hashes.get(bare) != h:
            self.ctx.sessions.broadcast(CHANGED, bare, h)  # the other workers' hashes (issue 12)
        self._hashes[bare] = h

    @hook(CHANGED)
    def changed_elsewhere(self, bare: str, h: str) -> None:
        """Another worker changed this account's avatar."""
        self._hashes[bare] = h

    @hook("user-deleted")
    @hook("user-forgotten")  # deleted on another worker (issue 12)
    def user_deleted(self, host: str, user: str) -> None:
        self._hashes.pop(f"{user}@{host}", None)
