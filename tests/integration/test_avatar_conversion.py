"""XEP-0398 avatar conversion (PEP XEP-0084 <-> vCard-temp PHOTO) and XEP-0153 hashes in presence,
against a running server."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from pubsub_helpers import DISCO_INFO, PS, iq, ok, ps, publish_options
from xmpp_helpers import befriend, tls_login

pytestmark = pytest.mark.asyncio

DATA = "urn:xmpp:avatar:data"
META = "urn:xmpp:avatar:metadata"
VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
IMAGE_HASH = hashlib.sha1(IMAGE).hexdigest()
B64 = base64.b64encode(IMAGE).decode()


async def publish_pep_avatar(c, access: str = "open") -> None:  # noqa: ANN001
    opts = publish_options(access_model=access)
    ok(await ps(c, "set", f"<publish node='{DATA}'><item id='{IMAGE_HASH}'><data xmlns='{DATA}'>{B64}</data>"
                          f"</item></publish>{opts}", to=None))
    ok(await ps(c, "set", f"<publish node='{META}'><item id='{IMAGE_HASH}'><metadata xmlns='{META}'>"
                          f"<info bytes='{len(IMAGE)}' id='{IMAGE_HASH}' type='image/png' width='1' height='1'/>"
                          f"</metadata></item></publish>{opts}", to=None))


async def vcard_photo_hash(c, jid: str | None = None) -> str | None:  # noqa: ANN001
    r = await iq(c, "get", jid, f"<vCard xmlns='{VCARD}'/>")
    if r.get("type") != "result":
        return None
    binval = r.findtext(f".//{{{VCARD}}}PHOTO/{{{VCARD}}}BINVAL")
    return hashlib.sha1(base64.b64decode("".join(binval.split()))).hexdigest() if binval else None


async def test_account_advertises_conversion(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    try:
        info = ok(await iq(c, "get", a, f"<query xmlns='{DISCO_INFO}'/>"))
        assert "urn:xmpp:pep-vcard-conversion:0" in {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    finally:
        await c.close()


async def test_pep_avatar_becomes_vcard_photo_and_presence_hash(rookery_server):
    """§3.1 PEP -> vCard, §4 the hash in broadcast presence (XEP-0153 §3.2)."""
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    befriend(rookery_server, a, b)
    ca = await tls_login(rookery_server, a, pa, presence=True)
    cb = await tls_login(rookery_server, b, pb, presence=True)
    try:
        ok(await iq(ca, "set", None, f"<vCard xmlns='{VCARD}'><FN>Alice</FN></vCard>"))
        await publish_pep_avatar(ca)
        for _ in range(50):
            if await vcard_photo_hash(cb, a) == IMAGE_HASH:
                break
        assert await vcard_photo_hash(cb, a) == IMAGE_HASH
        r = ok(await iq(ca, "get", None, f"<vCard xmlns='{VCARD}'/>"))
        assert r.findtext(f".//{{{VCARD}}}FN") == "Alice"  # the rest of the vCard is kept
        assert r.findtext(f".//{{{VCARD}}}PHOTO/{{{VCARD}}}TYPE") == "image/png"
        ca.send("<presence><show>away</show></presence>")
        p = await cb.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == ca.jid
                                and e.findtext("{jabber:client}show") == "away")
        assert p.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == IMAGE_HASH
        # an empty <photo/> from the client ("no avatar shown") is left alone (§4)
        ca.send(f"<presence><show>dnd</show><x xmlns='{UPDATE}'><photo/></x></presence>")
        p = await cb.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == ca.jid
                                and e.findtext("{jabber:client}show") == "dnd")
        assert p.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") in ("", None)
        assert len(p.findall(f"{{{UPDATE}}}x")) == 1
        # an <x/> without <photo/> is overwritten
        ca.send(f"<presence><show>xa</show><x xmlns='{UPDATE}'/></presence>")
        p = await cb.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == ca.jid
                                and e.findtext("{jabber:client}show") == "xa")
        assert [x.findtext(f"{{{UPDATE}}}photo") for x in p.findall(f"{{{UPDATE}}}x")] == [IMAGE_HASH]
        # avatar disabled (XEP-0084 §4.6): the vCard photo goes
        ok(await ps(ca, "set", f"<publish node='{META}'><item id='none'><metadata xmlns='{META}'/></item></publish>",
                    to=None))
        for _ in range(50):
            if await vcard_photo_hash(ca) is None:
                break
        assert await vcard_photo_hash(ca) is None
    finally:
        await ca.close()
        await cb.close()


async def test_avatar_for_contacts_only_is_not_copied_to_the_public_vcard(rookery_server):
    """XEP-0398 §7: conversion only when the data node's access model is open."""
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    try:
        await publish_pep_avatar(c, access="presence")
        ok(await iq(c, "get", None, "<ping xmlns='urn:xmpp:ping'/>"))
        await asyncio.sleep(0.3)  # the conversion runs after the publication's notifications
        assert await vcard_photo_hash(c) is None
    finally:
        await c.close()


async def test_vcard_photo_publishes_pep_avatar_and_hash_in_directed_presence(rookery_server):
    """§3.2 vCard -> PEP; §4 the hash also in directed presence."""
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    ca = await tls_login(rookery_server, a, pa, presence=True)
    cb = await tls_login(rookery_server, b, pb, presence=True)
    try:
        ok(await iq(ca, "set", None, f"<vCard xmlns='{VCARD}'><FN>A</FN><PHOTO><TYPE>image/png</TYPE>"
                                     f"<BINVAL>{B64}</BINVAL></PHOTO></vCard>"))

        async def meta_ids() -> list[str]:
            r = await ps(ca, "get", f"<items node='{META}'/>", to=None)
            return [i.get("id") for i in r.iter(f"{{{PS}}}item")] if r.get("type") == "result" else []

        for _ in range(50):
            if await meta_ids() == [IMAGE_HASH]:
                break
        assert await meta_ids() == [IMAGE_HASH]
        # anyone may read it (open, like the vCard)
        r = ok(await ps(cb, "get", f"<items node='{DATA}'><item id='{IMAGE_HASH}'/></items>", to=a))
        assert base64.b64decode(r.findtext(f".//{{{DATA}}}data")) == IMAGE
        r = ok(await ps(cb, "get", f"<items node='{META}'/>", to=a))
        info = r.find(f".//{{{META}}}info")
        assert (info.get("id"), info.get("type"), info.get("bytes")) == (IMAGE_HASH, "image/png", str(len(IMAGE)))
        ca.send(f"<presence to='{cb.jid}'/>")
        p = await cb.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == ca.jid)
        assert p.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == IMAGE_HASH
        # a vCard without a photo (a client editing the name only) leaves the PEP avatar alone
        ok(await iq(ca, "set", None, f"<vCard xmlns='{VCARD}'><FN>B</FN></vCard>"))
        ok(await iq(ca, "get", None, "<ping xmlns='urn:xmpp:ping'/>"))
        assert await meta_ids() == [IMAGE_HASH]
    finally:
        await ca.close()
        await cb.close()


async def test_hash_loaded_from_stored_vcard_after_restart_of_module_cache(rookery_server):
    """A fresh server state: the first presence of an account reads the hash from its stored vCard."""
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    befriend(rookery_server, a, b)
    from rookery.jid import JID

    j = JID.parse(a)
    rookery_server.call(rookery_server.server.storage.kv.set, "vcard", j.domain, j.local, "vcard",
                        f"<vCard xmlns='{VCARD}'><PHOTO><TYPE>image/png</TYPE><BINVAL>{B64}</BINVAL></PHOTO></vCard>")
    cb = await tls_login(rookery_server, b, pb, presence=True)
    ca = await tls_login(rookery_server, a, pa)
    try:
        ca.send("<presence/>")
        p = await cb.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("from") == ca.jid)
        assert p.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == IMAGE_HASH
    finally:
        await ca.close()
        await cb.close()


