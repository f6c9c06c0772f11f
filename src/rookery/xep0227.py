"""XEP-0227 (Portable Import/Export Format for XMPP-IM Servers): ``rookery export`` / ``rookery import``.

Exported per account: SCRAM credentials (XEP-0227 ``urn:xmpp:pie:0#scram``: the salted keys, never a
password), the roster (``jabber:iq:roster``) and pending inbound subscription requests (``<presence
type='subscribe'/>``), the vCard (``vcard-temp``), private XML (``jabber:iq:private``), offline
messages (``<offline-messages/>``), the message archive (XEP-0227 ``urn:xmpp:pie:0#mam``: XEP-0313
results with their ids and times), and Rookery's other per-account documents (last activity, blocking
list, module data) as ``<kv xmlns='urn:xmpp:rookery:kv:0' store='…' key='…'>`` and other archives as
``<archive xmlns='urn:xmpp:rookery:kv:0' store='…'>`` — other servers ignore those elements.

Imported: the same, plus what Prosody and ejabberd exports carry: a plaintext ``password`` attribute
(turned into SCRAM keys at once) or ``scram-credentials`` for SHA-1/SHA-256/SHA-512.  Elements this
server does not keep (PEP nodes, privacy lists, MAM) are skipped and counted.  Anything malformed
raises ``PIEError`` naming the place; the caller writes nothing then.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter
from xml.etree.ElementTree import Element, ParseError, SubElement, XMLParser, fromstring

from .jid import JID, InvalidJID, nodeprep
from .storage.base import AccountData, ArchiveItem, RosterItem, ScramCredential
from .xml import serialize

PIE = "urn:xmpp:pie:0"
PIE_MAM = "urn:xmpp:pie:0#mam"
MAM = "urn:xmpp:mam:2"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
MAM_STORE = "mam/messages"  # modules/mam.py: the "messages" archive of the "mam" module
SCRAM = "urn:xmpp:pie:0#scram"
KV = "urn:xmpp:rookery:kv:0"
ROSTER = "jabber:iq:roster"
PRIVATE = "jabber:iq:private"
VCARD = "vcard-temp"
CLIENT = "jabber:client"
VCARD_STORE, VCARD_KEY, PRIVATE_STORE = "vcard", "vcard", "private"  # modules/vcard.py, modules/private.py
_HASHES = {"SCRAM-SHA-1": "SHA-1", "SCRAM-SHA-256": "SHA-256", "SCRAM-SHA-512": "SHA-512"}
_SUBSCRIPTIONS = {"none", "to", "from", "both"}


class PIEError(Exception):
    """A malformed XEP-0227 file (the message names the element)."""


# -- export ---------------------------------------------------------------------------------------


def _to_client_ns(el: Element) -> Element:
    """A stored stanza (tags without namespace: the stream's jabber:client) with explicit namespaces."""
    for e in el.iter():
        if isinstance(e.tag, str) and not e.tag.startswith("{"):
            e.tag = f"{{{CLIENT}}}{e.tag}"
    return el


def _from_client_ns(el: Element) -> Element:
    for e in el.iter():
        if isinstance(e.tag, str) and e.tag.startswith(f"{{{CLIENT}}}"):
            e.tag = e.tag[len(CLIENT) + 2:]
    return el


def export_xml(accounts: list[AccountData]) -> str:
    root = Element(f"{{{PIE}}}server-data")
    hosts: dict[str, Element] = {}
    for a in accounts:
        h = hosts.get(a.host)
        if h is None:
            h = hosts[a.host] = SubElement(root, f"{{{PIE}}}host", jid=a.host)
        u = SubElement(h, f"{{{PIE}}}user", name=a.user)
        for hash_name, c in sorted(a.creds.items()):
            sc = SubElement(u, f"{{{SCRAM}}}scram-credentials", mechanism=f"SCRAM-{hash_name}")
            SubElement(sc, f"{{{SCRAM}}}iter-count").text = str(c.iterations)
            SubElement(sc, f"{{{SCRAM}}}salt").text = base64.b64encode(c.salt).decode()
            SubElement(sc, f"{{{SCRAM}}}server-key").text = base64.b64encode(c.server_key).decode()
            SubElement(sc, f"{{{SCRAM}}}stored-key").text = base64.b64encode(c.stored_key).decode()
        if a.roster:
            q = SubElement(u, f"{{{ROSTER}}}query")
            for item in a.roster:
                it = SubElement(q, f"{{{ROSTER}}}item", jid=item.jid, subscription=item.subscription)
                if item.name:
                    it.set("name", item.name)
                if item.ask:
                    it.set("ask", "subscribe")
                if item.approved:
                    it.set("approved", "true")
                for g in item.groups:
                    SubElement(it, f"{{{ROSTER}}}group").text = g
        for _contact, stanza in sorted(a.pending_in.items()):
            u.append(_to_client_ns(fromstring(stanza)))
        private: list[Element] = []
        for (store, key), value in sorted(a.kv.items()):
            if store == VCARD_STORE and key == VCARD_KEY:
                u.append(fromstring(value))
            elif store == PRIVATE_STORE:
                private.append(fromstring(value))
            else:
                SubElement(u, f"{{{KV}}}kv", store=store, key=key).text = value
        if private:
            q = SubElement(u, f"{{{PRIVATE}}}query")
            q.extend(private)
        if a.offline:
            om = SubElement(u, f"{{{PIE}}}offline-messages")
            for stanza in a.offline:
                om.append(_to_client_ns(fromstring(stanza)))
        for store, items in sorted(a.archive.items()):
            if store == MAM_STORE:
                ar = SubElement(u, f"{{{PIE_MAM}}}archive")
                for ai in items:
                    r = SubElement(ar, f"{{{MAM}}}result", id=ai.id)
                    if ai.with_ is not None:
                        r.set(f"{{{KV}}}with", ai.with_)
                    if ai.text is not None:
                        r.set(f"{{{KV}}}text", ai.text)
                    fw = SubElement(r, f"{{{FORWARD}}}forwarded")
                    SubElement(fw, f"{{{DELAY}}}delay", stamp=_stamp(ai.when))
                    fw.append(_to_client_ns(fromstring(ai.value)))
            else:
                ar = SubElement(u, f"{{{KV}}}archive", store=store)
                for ai in items:
                    e = SubElement(ar, f"{{{KV}}}item", id=ai.id, when=repr(float(ai.when)))
                    if ai.with_ is not None:
                        e.set("with", ai.with_)
                    if ai.text is not None:
                        e.set("text", ai.text)
                    e.text = ai.value
    return "<?xml version='1.0' encoding='UTF-8'?>\n" + serialize(root, "-") + "\n"


def _stamp(when: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _when(stamp: str | None, where: str) -> float:
    import datetime

    try:
        d = datetime.datetime.fromisoformat((stamp or "").replace("Z", "+00:00"))
    except ValueError:
        raise PIEError(f"{where}: {stamp!r} is not a time (XEP-0082)") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.UTC)
    return d.timestamp()


# -- import ---------------------------------------------------------------------------------------


def _b64(text: str | None, where: str) -> bytes:
    try:
        out = base64.b64decode((text or "").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PIEError(f"{where}: not base64") from None
    if not out:
        raise PIEError(f"{where}: empty")
    return out


def parse(data: bytes, domains: list[str]) -> tuple[list[AccountData], Counter[str]]:
    """The accounts of a XEP-0227 document, and the elements skipped (by name).  Accounts on domains
    not in ``domains`` are an error (nothing of the file is imported)."""
    from .streams.sasl import make_credentials

    if re.search(rb"<!(DOCTYPE|ENTITY)", data):
        raise PIEError("DTDs and entities are not accepted")
    try:
        root = fromstring(data, parser=XMLParser(encoding="utf-8"))
    except ParseError as e:
        raise PIEError(f"not well-formed XML: {e}") from None
    if root.tag != f"{{{PIE}}}server-data":
        raise PIEError(f"the root element is {root.tag}, not {{{PIE}}}server-data")
    out: list[AccountData] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    for h in root:
        if h.tag != f"{{{PIE}}}host":
            skipped[h.tag] += 1
            continue
        try:
            host = JID.parse(h.get("jid") or "").domain
        except InvalidJID:
            raise PIEError(f"<host jid={h.get('jid')!r}>: not a domain") from None
        if host not in domains:
            raise PIEError(f"<host jid={host!r}>: domain {host!r} is not served here (domains: {', '.join(domains)})")
        for u in h:
            if u.tag != f"{{{PIE}}}user":
                skipped[u.tag] += 1
                continue
            try:
                user = nodeprep(u.get("name") or "")
                if not user:
                    raise InvalidJID("empty")
            except InvalidJID:
                raise PIEError(f"<user name={u.get('name')!r}> on {host}: not a valid username") from None
            where = f"{user}@{host}"
            if where in seen:
                raise PIEError(f"{where} appears twice")
            seen.add(where)
            a = AccountData(host, user)
            if u.get("password"):
                a.creds = make_credentials(u.get("password") or "")
            for child in u:
                _user_child(a, child, where, skipped)
            out.append(a)
    return out, skipped


def _user_child(a: AccountData, child: Element, where: str, skipped: Counter[str]) -> None:
    tag = child.tag
    if tag == f"{{{SCRAM}}}scram-credentials":
        mech = child.get("mechanism", "")
        if mech not in _HASHES:
            skipped[f"scram-credentials {mech}"] += 1
            return
        w = f"{where}: scram-credentials {mech}"
        try:
            iterations = int((child.findtext(f"{{{SCRAM}}}iter-count") or "").strip())
        except ValueError:
            raise PIEError(f"{w}: iter-count is not a number") from None
        if iterations < 1:
            raise PIEError(f"{w}: iter-count must be positive")
        a.creds[_HASHES[mech]] = ScramCredential(
            salt=_b64(child.findtext(f"{{{SCRAM}}}salt"), f"{w} salt"), iterations=iterations,
            stored_key=_b64(child.findtext(f"{{{SCRAM}}}stored-key"), f"{w} stored-key"),
            server_key=_b64(child.findtext(f"{{{SCRAM}}}server-key"), f"{w} server-key"))
    elif tag == f"{{{ROSTER}}}query":
        for item in child:
            if item.tag != f"{{{ROSTER}}}item":
                skipped[item.tag] += 1
                continue
            try:
                contact = JID.parse(item.get("jid") or "").bare
            except InvalidJID:
                raise PIEError(f"{where}: roster item jid={item.get('jid')!r} is not a JID") from None
            sub = item.get("subscription", "none")
            if sub == "remove":
                continue
            if sub not in _SUBSCRIPTIONS:
                raise PIEError(f"{where}: roster item {contact}: unknown subscription {sub!r}")
            groups = [(g.text or "").strip() for g in item.findall(f"{{{ROSTER}}}group")]
            a.roster.append(RosterItem(contact, item.get("name") or None, sub, item.get("ask") == "subscribe",
                                       item.get("approved") in ("true", "1"), [g for g in groups if g]))
    elif tag == f"{{{VCARD}}}vCard":
        a.kv[(VCARD_STORE, VCARD_KEY)] = serialize(child)
    elif tag == f"{{{PRIVATE}}}query":
        for frag in child:
            if not frag.tag.startswith("{") or frag.tag.startswith(f"{{{PRIVATE}}}"):
                raise PIEError(f"{where}: private XML {frag.tag!r} must be in its own namespace")
            a.kv[(PRIVATE_STORE, frag.tag)] = serialize(frag)
    elif tag == f"{{{PIE}}}offline-messages":
        for m in child:
            if m.tag != f"{{{CLIENT}}}message":
                raise PIEError(f"{where}: offline-messages holds {m.tag!r}, not a jabber:client message")
            a.offline.append(serialize(_from_client_ns(m)))
    elif tag == f"{{{CLIENT}}}presence" and child.get("type") == "subscribe":
        try:
            contact = JID.parse(child.get("from") or "").bare
        except InvalidJID:
            raise PIEError(f"{where}: subscription request from={child.get('from')!r} is not a JID") from None
        a.pending_in[contact] = serialize(_from_client_ns(child))
    elif tag == f"{{{PIE_MAM}}}archive":
        items = a.archive.setdefault(MAM_STORE, [])
        for r in child:
            w = f"{where}: archive result {r.get('id')!r}"
            fw = r.find(f"{{{FORWARD}}}forwarded")
            msg = fw.find(f"{{{CLIENT}}}message") if fw is not None else None
            if r.tag != f"{{{MAM}}}result" or not r.get("id") or msg is None or fw is None:
                raise PIEError(f"{w}: expected <result id=…><forwarded><delay/><message/></forwarded></result>")
            delay = fw.find(f"{{{DELAY}}}delay")
            when = _when(delay.get("stamp") if delay is not None else None, w)
            with_ = r.get(f"{{{KV}}}with")
            if with_ is None:  # from another server: the other party of the message
                me = f"{a.user}@{a.host}"
                frm, to = msg.get("from", ""), msg.get("to", "")
                with_ = to if frm.split("/")[0] == me else frm
                with_ = with_.split("/")[0] or None
            body = msg.findtext(f"{{{CLIENT}}}body")
            text = r.get(f"{{{KV}}}text", body if r.get(f"{{{KV}}}with") is None else None)
            items.append(ArchiveItem(str(r.get("id")), when, with_, serialize(_from_client_ns(msg)), text))
    elif tag == f"{{{KV}}}archive":
        store = child.get("store")
        if not store:
            raise PIEError(f"{where}: <archive/> needs a store")
        items = a.archive.setdefault(store, [])
        for e in child:
            try:
                when = float(e.get("when") or "")
            except ValueError:
                raise PIEError(f"{where}: archive {store} item {e.get('id')!r}: bad 'when'") from None
            if not e.get("id"):
                raise PIEError(f"{where}: archive {store}: an item without id")
            items.append(ArchiveItem(str(e.get("id")), when, e.get("with"), e.text or "", e.get("text")))
    elif tag == f"{{{KV}}}kv":
        store, key = child.get("store"), child.get("key")
        if not store or key is None:
            raise PIEError(f"{where}: <kv/> needs store and key")
        a.kv[(store, key)] = child.text or ""
    else:
        skipped[tag] += 1
