"""XEP-0045: Multi-User Chat, on ``conference.<domain>``; with XEP-0421 occupant ids, XEP-0410
self-ping, XEP-0313 room archives (XEP-0359 stanza ids by the room), XEP-0249 direct invitations
(between users: passed through untouched) and XEP-0004 forms for configuration, registration and
voice requests.

Rooms live in memory; persistent rooms (``muc#roomconfig_persistentroom``) are also stored (the
module's ``rooms`` map store, one JSON document per room) and restored at start.  Everything sent to
users goes through the session registry (local sessions: ``deliver_each``, one serialization per
distinct payload, ``to`` filled in per occupant) or the router (anything else).  Room model and
forms: ``_muc_room.py``.  Operator documentation: docs/muc.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError, SubElement, fromstring

from pydantic import Field

from ..jid import JID, InvalidJID
from ..module import Module, ModuleContext, Options, hook, iq_handler
from ..stanza import Stanza, StanzaError
from ..storage.base import ArchiveItem
from ..xml import ns
from ..xml.serializer import serialize
from ._muc_room import (
    AFF_RANK,
    AFFILIATIONS,
    MUC_ADMIN,
    MUC_OWNER,
    MUC_USER,
    OCCUPANT_ID,
    REGISTER_FORM,
    REQUEST,
    ROOMCONFIG,
    ROOMINFO,
    XDATA,
    Occupant,
    Room,
    RoomConfig,
    enforce_nick,
    form_value,
    form_values,
)
from ._muc_room import MUC as NS_MUC
from .disco import info_query
from .mam import FORWARD, RSM, parse_query
from .mam import NS as MAM
from .time import format_datetime

SID = "urn:xmpp:sid:0"
PING = "urn:xmpp:ping"
REGISTER = "jabber:iq:register"
CONFERENCE = "jabber:x:conference"
UNIQUE = "http://jabber.org/protocol/muc#unique"
_SID_TAG = f"{{{SID}}}stanza-id"
_OID_TAG = f"{{{OCCUPANT_ID}}}occupant-id"
_MUC_X = f"{{{NS_MUC}}}x"
_USER_X = f"{{{MUC_USER}}}x"
_XF = f"{{{XDATA}}}x"
_DELAY = f"{{{ns.DELAY}}}delay"
#: what a client may not put in a message the room reflects (the room adds its own)
_STRIP = frozenset((_OID_TAG,))

FLUSH_DELAY = 0.02
MAX_RELAYED = 10_000  # iq requests relayed to occupants and not answered yet


class MUCOptions(Options):
    """``[muc]`` (or ``[modules.muc]``)."""

    #: the service's subdomain: rooms are ``room@<subdomain>.<domain>`` (server-wide; not per domain)
    subdomain: str = Field("conference", pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    #: who may create rooms: "anyone", "local" (accounts of this server), "admins" (top-level admins)
    room_creation: Literal["anyone", "local", "admins"] = "local"
    #: the longest history a room may keep (muc#maxhistoryfetch is capped by it)
    max_history: int = Field(50, ge=0, le=1000)
    #: the history length of a new room
    default_history: int = Field(20, ge=0, le=1000)
    #: rooms one user may have created that still exist (0: no limit; admins are not limited)
    max_rooms_per_user: int = Field(100, ge=0)
    #: the archive of a new room (XEP-0313 on the room JID) is on
    default_logging: bool = True
    #: rooms are persistent when created (owners may change it)
    default_persistent: bool = False
    #: rooms are listed in the service's disco#items when created
    default_public: bool = True


def _status(x: Element, codes: Iterable[str]) -> None:
    for c in codes:
        SubElement(x, f"{{{MUC_USER}}}status", code=c)


def _clone(el: Element) -> Element:
    """A copy with its own attributes and child list (the children shared).  Not ``copy.copy``: the C
    ``Element.__copy__`` shares the attribute dict."""
    out = Element(el.tag, el.attrib)
    out.text = el.text
    out.extend(el)
    return out


def _parse_time(s: str) -> float | None:
    try:
        return datetime.fromisoformat(s.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class MUC(Module):
    """XEP-0045 rooms on ``conference.<domain>``."""

    name = "muc"
    subdomain = "conference"
    service_identity = ("conference", "text", "Chatrooms")
    Options = MUCOptions

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        # the module manager reads the instance's subdomain when it adds the service routes
        opts: MUCOptions = ctx.options  # type: ignore[assignment]
        self.subdomain = opts.subdomain  # type: ignore[misc]
        self.rooms: dict[str, Room] = {}  # bare room JID -> room
        self.store = ctx.open_store("rooms", "map")
        self.archive = ctx.open_store("archive", "archive")
        self.secrets = ctx.open_store("secret", "keyval")
        self._secret = b""
        #: real full JID -> the rooms it is in (session end leaves them)
        self._joined: dict[str, set[str]] = {}
        self._pending: list[tuple[str, str, ArchiveItem]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        #: relayed iq id -> (requester's real JID, its iq id, the occupant JID the answer comes from)
        self._relayed: dict[str, tuple[str, str, str]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def service_domains(self) -> list[str]:
        return [f"{self.subdomain}.{h}" for h in self.ctx.hosts]

    def _parent(self, service: str) -> str:
        return service.partition(".")[2]

    def _opts(self, service: str) -> MUCOptions:
        opts: MUCOptions = self.ctx.options_for(self._parent(service))
        return opts

    async def start(self) -> None:
        stored = await self.secrets.get("", "")
        if stored is None:
            stored = secrets.token_hex(32)
            await self.secrets.set("", "", stored)
        self._secret = bytes.fromhex(stored)
        for service in self.service_domains():
            mh = self._opts(service).max_history
            for local in await self.store.keys(service, ""):
                data = await self.store.get(service, "", local)
                if data is None:
                    continue
                jid = f"{local}@{service}"
                try:
                    room = self.rooms[jid] = Room.loads(jid, data, mh)
                except (ValueError, KeyError, TypeError):
                    self.log.warning("unreadable stored room %s", jid)
                    continue
                if room.config.logging and room.config.history_length:
                    await self._restore_history(room, service, local)
        if self.rooms:
            self.log.info("restored %d persistent rooms", len(self.rooms))

    async def _restore_history(self, room: Room, service: str, local: str) -> None:
        """A persistent room's history after a restart: its latest archived messages."""
        for item in reversed(await self.archive.query(service, local, limit=room.config.history_length,
                                                      reverse=True)):
            try:
                el = fromstring(item.value)
            except ParseError:
                continue
            room.history.append((item.when, el, len(item.value)))

    async def stop(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        await self.flush()

    # -- storage -----------------------------------------------------------------------------
    def _save(self, room: Room) -> None:
        service, local = room.jid.partition("@")[2], room.jid.partition("@")[0]
        if room.config.persistent and not room.destroyed:
            self.ctx.spawn(self.store.set(service, "", local, room.dumps()))
        else:
            self.ctx.spawn(self.store.delete(service, "", local))

    def _archive_append(self, room: Room, sid: str, nick: str, el: Element, text: str | None) -> None:
        service, local = room.jid.partition("@")[2], room.jid.partition("@")[0]
        self._pending.append((service, local, ArchiveItem(sid, time.time(), f"{room.jid}/{nick}", serialize(el),
                                                          text)))
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(FLUSH_DELAY, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self.ctx.spawn(self.flush())

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:5000], self._pending[5000:]
            try:
                await self.archive.append_many(batch)
            except Exception:
                self.log.exception("room archive write failed; %d messages lost", len(batch))

    # -- sending -----------------------------------------------------------------------------
    def _route(self, el: Element) -> None:
        r = self.ctx.router.send(el)
        if r is not None:
            self.ctx.spawn(r)

    def _fanout(self, el: Element, tos: Iterable[str]) -> None:
        """``el`` (``from`` set, no ``to``) to each real JID: local online sessions in one
        serialization (``SessionRegistry.deliver_each``), anything else through the router."""
        sessions = self.ctx.sessions
        local = []
        for to in tos:
            try:
                j = JID.parse(to)
            except InvalidJID:
                continue
            ref = sessions.get(j)
            if ref is not None:
                local.append((ref, to))
            else:
                c = _clone(el)
                c.set("to", to)
                self._route(c)
        if local:
            sessions.deliver_each(local, el)

    def _occupant_id(self, room: Room, bare: str) -> str:
        mac = hmac.new(self._secret, f"{room.jid}\0{bare}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def _aff(self, room: Room, bare: str) -> str:
        """The affiliation that counts: server administrators are owners of every room."""
        if self.ctx.is_admin(bare):
            return "owner"
        return room.affiliation(bare)

    def _room(self, st: Stanza) -> Room:
        to = st.to
        assert to is not None
        room = self.rooms.get(to.bare)
        if room is None:
            raise StanzaError("item-not-found", "no such room")
        return room

    # -- presence ----------------------------------------------------------------------------
    def _presence_of(self, room: Room, occ: Occupant, *, type: str | None = None, codes: Iterable[str] = (),
                     with_jid: str | None = None, item_extra: dict[str, str] | None = None,
                     item_children: Iterable[Element] = (), extra: Iterable[Element] = (),
                     status: Element | None = None) -> Element:
        p = Element("presence", {"from": f"{room.jid}/{occ.nick}"})
        if type is not None:
            p.set("type", type)
            if status is not None:
                p.append(status)
        else:
            for c in occ.presence:
                if c.tag not in (_MUC_X, _USER_X, _OID_TAG):
                    p.append(c)
        x = SubElement(p, _USER_X)
        for c in extra:
            x.append(c)
        item = SubElement(x, f"{{{MUC_USER}}}item", affiliation=self._aff(room, occ.bare), role=occ.role)
        if with_jid is not None:
            item.set("jid", with_jid)
        if item_extra:
            for k, v in item_extra.items():
                item.set(k, v)
        for c in item_children:
            item.append(c)
        _status(x, codes)
        SubElement(p, _OID_TAG, id=occ.occupant_id)
        return p

    def _broadcast_presence(self, room: Room, occ: Occupant, *, type: str | None = None, codes: Iterable[str] = (),
                            self_codes: Iterable[str] = (), self_to: Iterable[str] | None = None,
                            item_extra: dict[str, str] | None = None, item_children: Iterable[Element] = (),
                            extra: Iterable[Element] = (), status: Element | None = None) -> None:
        """``occ``'s presence to every other occupant (with its real JID to those who may see it) and,
        with status 110, to its own sessions (or ``self_to``)."""
        codes = list(codes)
        seeing: list[str] = []
        blind: list[str] = []
        for o in room.occupants.values():
            if o is occ:
                continue
            (seeing if room.may_see_jids(o) else blind).extend(o.sessions)
        kw: dict[str, Any] = {"type": type, "item_extra": item_extra, "item_children": item_children,
                              "extra": extra, "status": status}
        if seeing:
            self._fanout(self._presence_of(room, occ, codes=codes, with_jid=occ.jid, **kw), seeing)
        if blind:
            self._fanout(self._presence_of(room, occ, codes=codes, **kw), blind)
        mine = list(occ.sessions) if self_to is None else list(self_to)
        if mine:
            own = ["110", *codes, *self_codes]
            for real in mine:  # each session sees its own real JID
                self._fanout(self._presence_of(room, occ, codes=own, with_jid=real, **kw), [real])

    def _presence_error(self, st: Stanza, err: StanzaError) -> None:
        if st.type == "error":
            return
        reply = st.error(err)
        reply.insert(0, Element(_MUC_X))
        self.ctx.router.reply(st, reply)

    @hook("presence/full", on="service")
    def presence_full(self, st: Stanza) -> bool:
        try:
            self._presence(st)
        except StanzaError as e:
            self._presence_error(st, e)
        return True

    @hook("presence/bare", on="service")
    def presence_bare(self, st: Stanza) -> bool:
        # §7.2.1: a presence to the room without a nickname
        if st.type not in ("error", "unavailable", "probe"):
            self._presence_error(st, StanzaError("jid-malformed", "join with room@service/nickname"))
        return True

    @hook("presence/host", on="service")
    def presence_host(self, st: Stanza) -> bool:
        return True

    def _presence(self, st: Stanza) -> None:
        frm, to = st.from_, st.to
        assert to is not None and to.resource is not None
        if frm is None or frm.resource is None:
            raise StanzaError("bad-request", "an occupant is a full JID")
        room = self.rooms.get(to.bare)
        real = frm.full
        occ = room.occupant_of(real) if room is not None else None
        if st.type == "error":
            if room is not None and occ is not None:  # the occupant's client or server failed
                self._leave(room, real, codes=("333",))
            return
        if st.type == "unavailable":
            if room is not None and occ is not None:
                status = st.el.find(f"{{{ns.CLIENT}}}status")
                if status is None:
                    status = st.el.find("status")
                self._leave(room, real, status=status)
            return
        if st.type not in ("available",):
            return  # probes, subscriptions: nothing in a room
        if room is not None and occ is not None:
            shown, key = enforce_nick(to.resource)
            if key != occ.key:
                self._change_nick(room, occ, real, shown, key)
            elif st.el.find(_MUC_X) is not None:
                self._rejoin(room, occ, real, st.el)
            else:
                self._update_presence(room, occ, real, st.el)
            return
        self._join(st, room)

    def _may_create(self, service: str, frm: JID) -> None:
        opts = self._opts(service)
        admin = self.ctx.is_admin(frm)
        if opts.room_creation == "admins" and not admin:
            raise StanzaError("not-allowed", "only administrators create rooms here")
        if opts.room_creation == "local" and not admin and frm.domain not in self.ctx.hosts:
            raise StanzaError("not-allowed", "only users of this server create rooms here")
        if opts.max_rooms_per_user and not admin:
            mine = sum(1 for r in self.rooms.values() if r.creator == frm.bare)
            if mine >= opts.max_rooms_per_user:
                raise StanzaError("policy-violation", "too many rooms")

    def _join(self, st: Stanza, room: Room | None) -> None:
        frm, to = st.from_, st.to
        assert frm is not None and to is not None and to.resource is not None and to.local is not None
        shown, key = enforce_nick(to.resource)
        bare = frm.bare
        real = frm.full
        muc_x = st.el.find(_MUC_X)
        created = False
        if room is None:
            self._may_create(to.domain, frm)
            opts = self._opts(to.domain)
            cfg = RoomConfig(min(opts.default_history, opts.max_history))
            cfg.logging = opts.default_logging
            cfg.persistent = opts.default_persistent
            cfg.public = opts.default_public
            room = Room(to.bare, cfg, opts.max_history)
            room.creator = bare
            room.affiliations[bare] = "owner"
            room.locked = muc_x is not None  # §10.1.1: a MUC client configures or accepts it; gc 1.0: instant
            self.rooms[room.jid] = room
            created = True
        aff = self._aff(room, bare)
        if room.locked and aff != "owner":
            raise StanzaError("item-not-found", "the room is locked until its owner configures it")
        if aff == "outcast":
            raise StanzaError("forbidden", "banned from this room")
        existing = room.occupants.get(key)
        if existing is not None and existing.bare != bare:
            raise StanzaError("conflict", "that nickname is in use")
        holder = room.nick_reserved_by(key)
        if holder is not None and holder != bare:
            raise StanzaError("conflict", "that nickname is reserved")
        if room.config.members_only and AFF_RANK[aff] < AFF_RANK["member"]:
            raise StanzaError("registration-required", "members only")
        if room.config.password and aff != "owner":
            given = muc_x.findtext(f"{{{NS_MUC}}}password") if muc_x is not None else None
            if given != room.config.password:
                raise StanzaError("not-authorized", "a password is required")
        if (existing is None and room.config.max_users and len(room.occupants) >= room.config.max_users
                and aff not in ("owner", "admin")):
            raise StanzaError("service-unavailable", "the room is full")
        pres = _clone(st.el)
        if existing is not None:  # another session of the same user under the same nick
            occ = existing
        else:
            occ = Occupant(shown, key, bare, room.default_role(aff), self._occupant_id(room, bare))
        # the new session learns who is there (§7.2.3), then everybody learns about it
        for o in room.occupants.values():
            if o is occ:
                continue
            p = self._presence_of(room, o, with_jid=o.jid if room.config.whois == "anyone" or occ.role == "moderator"
                                  else None)
            self._fanout(p, [real])
        occ.sessions[real] = pres
        occ.presence = pres
        room.occupants[key] = occ
        room.by_jid[real] = key
        self._joined.setdefault(real, set()).add(room.jid)
        codes = []
        if room.config.whois == "anyone":
            codes.append("100")
        if room.config.logging:
            codes.append("170")
        if created:
            codes.append("201")
        if shown != to.resource:
            codes.append("210")
        if existing is None:
            self._broadcast_presence(room, occ, self_codes=codes)
        else:
            self._broadcast_presence(room, occ, self_codes=codes, self_to=[real])
        self._send_history(room, real, muc_x)
        self._send_subject(room, real)
        if created and not room.locked:
            self._save(room)

    def _send_history(self, room: Room, real: str, muc_x: Element | None) -> None:
        if not room.history:
            return
        maxchars = maxstanzas = None
        since = None
        h = muc_x.find(f"{{{NS_MUC}}}history") if muc_x is not None else None
        if h is not None:
            for attr in ("maxchars", "maxstanzas"):
                v = h.get(attr)
                if v is not None and v.strip().isdigit():
                    if attr == "maxchars":
                        maxchars = int(v)
                    else:
                        maxstanzas = int(v)
            if (v := h.get("seconds")) is not None and v.strip().isdigit():
                since = time.time() - int(v)
            if (v := h.get("since")) is not None:
                t = _parse_time(v)
                if t is not None:
                    since = t if since is None else max(since, t)
        limit = room.config.history_length
        if maxstanzas is not None:
            limit = min(limit, maxstanzas)
        chosen: list[tuple[float, Element]] = []
        chars = 0
        for when, el, n in reversed(room.history):
            if len(chosen) >= limit or (since is not None and when < since):
                break
            if maxchars is not None and chars + n > maxchars:
                break
            chars += n
            chosen.append((when, el))
        for when, el in reversed(chosen):
            c = _clone(el)
            SubElement(c, _DELAY, {"stamp": format_datetime(when, fraction=True), "from": room.jid})
            self._fanout(c, [real])

    def _send_subject(self, room: Room, real: str) -> None:
        frm = f"{room.jid}/{room.subject_from}" if room.subject_from else room.jid
        m = Element("message", {"from": frm, "type": "groupchat", "id": secrets.token_hex(6)})
        SubElement(m, "subject").text = room.subject or None
        if room.subject_time:
            SubElement(m, _DELAY, {"stamp": format_datetime(room.subject_time), "from": room.jid})
        self._fanout(m, [real])

    def _rejoin(self, room: Room, occ: Occupant, real: str, el: Element) -> None:
        """A join from a session that is already in (its client lost track, e.g. after reconnecting
        with stream resumption): the room state again, as for a join, to that session only."""
        occ.sessions[real] = occ.presence = _clone(el)
        for o in room.occupants.values():
            if o is not occ:
                p = self._presence_of(room, o, with_jid=o.jid if room.config.whois == "anyone"
                                      or occ.role == "moderator" else None)
                self._fanout(p, [real])
        codes = ["100"] if room.config.whois == "anyone" else []
        self._broadcast_presence(room, occ, self_codes=codes)
        self._send_history(room, real, el.find(_MUC_X))
        self._send_subject(room, real)

    def _update_presence(self, room: Room, occ: Occupant, real: str, el: Element) -> None:
        pres = _clone(el)
        occ.sessions[real] = pres
        occ.sessions[real] = occ.sessions.pop(real)  # the most recent session last
        occ.presence = pres
        self._broadcast_presence(room, occ)

    def _change_nick(self, room: Room, occ: Occupant, real: str, shown: str, key: str) -> None:
        """§7.6: unavailable with 303 and the new nick, then available under it."""
        other = room.occupants.get(key)
        if other is not None and other.bare != occ.bare:
            raise StanzaError("conflict", "that nickname is in use")
        if other is not None:
            raise StanzaError("not-acceptable", "you are already in the room under that nickname")
        holder = room.nick_reserved_by(key)
        if holder is not None and holder != occ.bare:
            raise StanzaError("conflict", "that nickname is reserved")
        if len(occ.sessions) > 1:
            raise StanzaError("not-acceptable", "several sessions share this nickname")
        self._broadcast_presence(room, occ, type="unavailable", codes=("303",), item_extra={"nick": shown})
        del room.occupants[occ.key]
        occ.nick, occ.key = shown, key
        room.occupants[key] = occ
        room.by_jid[real] = key
        self._broadcast_presence(room, occ)

    def _leave(self, room: Room, real: str, codes: Iterable[str] = (), status: Element | None = None) -> None:
        key = room.by_jid.pop(real, None)
        if key is None:
            return
        occ = room.occupants[key]
        occ.sessions.pop(real, None)
        j = self._joined.get(real)
        if j is not None:
            j.discard(room.jid)
            if not j:
                del self._joined[real]
        if occ.sessions:  # the nick stays with the user's other sessions
            p = self._presence_of(room, occ, type="unavailable", codes=("110", *codes), with_jid=real)
            self._fanout(p, [real])
            occ.presence = next(reversed(occ.sessions.values()))
            return
        del room.occupants[key]
        self._broadcast_presence(room, occ, type="unavailable", codes=codes, self_to=[real], status=status)
        self._maybe_drop(room)

    def _remove_occupant(self, room: Room, occ: Occupant, codes: Iterable[str], actor: str | None = None,
                         reason: str | None = None) -> None:
        """Kick, ban, affiliation change: every session of ``occ`` leaves (§8.2, §9.1)."""
        for real in occ.sessions:
            room.by_jid.pop(real, None)
            j = self._joined.get(real)
            if j is not None:
                j.discard(room.jid)
                if not j:
                    del self._joined[real]
        room.occupants.pop(occ.key, None)
        children = []
        if actor is not None:
            children.append(Element(f"{{{MUC_USER}}}actor", nick=actor))
        if reason:
            r = Element(f"{{{MUC_USER}}}reason")
            r.text = reason
            children.append(r)
        sessions = list(occ.sessions)
        occ.role = "none"
        self._broadcast_presence(room, occ, type="unavailable", codes=codes, self_to=sessions,
                                 item_children=children)
        occ.sessions.clear()
        self._maybe_drop(room)

    def _maybe_drop(self, room: Room) -> None:
        """A temporary room goes when its last occupant leaves, and its archive with it."""
        if not room.occupants and not room.config.persistent:
            room.destroyed = True
            self.rooms.pop(room.jid, None)
            service, local = room.jid.partition("@")[2], room.jid.partition("@")[0]
            self.ctx.spawn(self._drop_archive(service, local))

    async def _drop_archive(self, service: str, local: str) -> None:
        before = time.time()  # not what a new room of the same name archives meanwhile
        await self.flush()
        await self.archive.delete(service, local, before=before)

    @hook("session-ended")
    @hook("session-gone")  # another worker's session ended, or its worker died (issue 12)
    def session_ended(self, session: Any) -> None:
        real = session.jid.full
        for rj in list(self._joined.get(real, ())):
            room = self.rooms.get(rj)
            if room is not None:
                self._leave(room, real)
        self._joined.pop(real, None)

    # -- messages ----------------------------------------------------------------------------
    # a StanzaError raised here is the reply (never to an error): the router's chain does that
    @hook("message/bare", on="service")
    def message_bare(self, st: Stanza) -> bool:
        self._room_message(st)
        return True

    @hook("message/full", on="service")
    def message_full(self, st: Stanza) -> bool:
        self._private_message(st)
        return True

    def _room_message(self, st: Stanza) -> None:
        room = self._room(st)
        frm = st.from_
        assert frm is not None
        occ = room.occupant_of(frm.full)
        if st.type == "error":
            if occ is not None:
                self._leave(room, frm.full, codes=("333",))
            return
        if st.type == "groupchat":
            if occ is None:
                raise StanzaError("not-acceptable", "join the room first")
            self._groupchat(room, occ, st)
            return
        x = st.el.find(_USER_X)
        if x is not None:
            if x.find(f"{{{MUC_USER}}}invite") is not None:
                self._invite(room, occ, frm, x)
                return
            decline = x.find(f"{{{MUC_USER}}}decline")
            if decline is not None:
                self._decline(room, frm, decline)
                return
        form = st.el.find(_XF)
        if form is not None and form_value(form, "FORM_TYPE") == REQUEST:
            if occ is None:
                raise StanzaError("not-acceptable", "join the room first")
            self._voice_request(room, occ, form)
            return
        raise StanzaError("not-acceptable", "send groupchat messages to the room")

    def _groupchat(self, room: Room, occ: Occupant, st: Stanza) -> None:
        el = st.el
        if occ.role == "visitor":
            raise StanzaError("forbidden", "visitors have no voice in this room")
        subject = el.find("subject")
        if subject is None:
            subject = el.find(f"{{{ns.CLIENT}}}subject")
        body = el.find("body")
        if body is None:
            body = el.find(f"{{{ns.CLIENT}}}body")
        nick = occ.nick
        out = Element("message", {"from": f"{room.jid}/{nick}", "type": "groupchat"})
        if el.get("id") is not None:
            out.set("id", el.get("id", ""))
        if el.get("{http://www.w3.org/XML/1998/namespace}lang") is not None:
            out.set("{http://www.w3.org/XML/1998/namespace}lang", el.get("{http://www.w3.org/XML/1998/namespace}lang", ""))
        for c in el:
            if c.tag in _STRIP or (c.tag == _SID_TAG and c.get("by") == room.jid):
                continue
            out.append(c)
        SubElement(out, _OID_TAG, id=occ.occupant_id)
        if subject is not None and body is None:
            if not (room.config.change_subject or occ.role == "moderator"):
                raise StanzaError("forbidden", "only moderators change the subject")
            room.subject = subject.text or ""
            room.subject_from = nick
            room.subject_time = time.time()
            self._save(room)
            self._fanout(out, self._all_sessions(room))
            return
        if body is not None and room.config.logging:
            sid = secrets.token_urlsafe(12)
            SubElement(out, _SID_TAG, id=sid, by=room.jid)
            self._archive_append(room, sid, nick, out, body.text)
        if body is not None and room.config.history_length > 0:
            room.history.append((time.time(), out, len(serialize(out))))
            while len(room.history) > room.config.history_length:
                room.history.popleft()
        self._fanout(out, self._all_sessions(room))

    def _all_sessions(self, room: Room) -> list[str]:
        return [s for o in room.occupants.values() for s in o.sessions]

    def _private_message(self, st: Stanza) -> None:
        room = self._room(st)
        frm, to = st.from_, st.to
        assert frm is not None and to is not None and to.resource is not None
        sender = room.occupant_of(frm.full)
        if st.type == "error":
            if sender is not None:
                self._leave(room, frm.full, codes=("333",))
            return
        if sender is None:
            raise StanzaError("not-acceptable", "join the room first")
        if st.type == "groupchat":
            raise StanzaError("bad-request", "groupchat messages go to the room")
        _, key = enforce_nick(to.resource)
        target = room.occupants.get(key)
        if target is None:
            raise StanzaError("item-not-found", "no such occupant")
        allow = room.config.allow_pm
        if (allow == "none" or (allow == "participants" and sender.role == "visitor")
                or (allow == "moderators" and sender.role != "moderator")):
            raise StanzaError("forbidden", "private messages are not allowed here")
        out = Element("message", dict(st.el.attrib))
        out.attrib.pop("to", None)
        out.set("from", f"{room.jid}/{sender.nick}")
        for c in st.el:
            if c.tag not in _STRIP:
                out.append(c)
        if out.find(_USER_X) is None:
            SubElement(out, _USER_X)
        SubElement(out, _OID_TAG, id=sender.occupant_id)
        self._fanout(out, list(target.sessions))

    def _invite(self, room: Room, occ: Occupant | None, frm: JID, x: Element) -> None:
        """§7.8.2 mediated invitations."""
        if occ is None:
            raise StanzaError("not-acceptable", "join the room first")
        aff = self._aff(room, frm.bare)
        if room.config.members_only:
            ok = aff in ("owner", "admin") or (room.config.allow_invites and aff == "member")
        else:
            ok = room.config.allow_invites or occ.role == "moderator"
        if not ok:
            raise StanzaError("forbidden", "you may not invite to this room")
        for inv in x.findall(f"{{{MUC_USER}}}invite"):
            try:
                invitee = JID.parse(inv.get("to", ""))
            except InvalidJID:
                raise StanzaError("jid-malformed", "invite to whom?") from None
            if room.config.members_only and room.affiliation(invitee.bare) == "none":
                room.set_affiliation(invitee.bare, "member")
                self._save(room)
            m = Element("message", {"from": room.jid, "to": invitee.full, "id": secrets.token_hex(6)})
            ux = SubElement(m, _USER_X)
            i = SubElement(ux, f"{{{MUC_USER}}}invite", {"from": frm.full})
            reason = inv.find(f"{{{MUC_USER}}}reason")
            if reason is not None:
                i.append(reason)
            if room.config.password:
                SubElement(ux, f"{{{MUC_USER}}}password").text = room.config.password
            SubElement(m, "body").text = f"{frm.bare} invites you to the room {room.jid}"
            cx = SubElement(m, f"{{{CONFERENCE}}}x", jid=room.jid)
            if reason is not None and reason.text:
                cx.set("reason", reason.text)
            self._route(m)

    def _decline(self, room: Room, frm: JID, decline: Element) -> None:
        try:
            inviter = JID.parse(decline.get("to", ""))
        except InvalidJID:
            raise StanzaError("jid-malformed", "decline to whom?") from None
        m = Element("message", {"from": room.jid, "to": inviter.full, "id": secrets.token_hex(6)})
        d = SubElement(SubElement(m, _USER_X), f"{{{MUC_USER}}}decline", {"from": frm.bare})
        reason = decline.find(f"{{{MUC_USER}}}reason")
        if reason is not None:
            d.append(reason)
        self._route(m)

    def _voice_request(self, room: Room, occ: Occupant, form: Element) -> None:
        """§7.13 (a visitor asks) and §8.6 (a moderator approves)."""
        values = form_values(form)
        if occ.role == "moderator" and "muc#request_allow" in values:
            allow = (values.get("muc#request_allow") or ["0"])[0] in ("1", "true")
            nick = (values.get("muc#roomnick") or [""])[0]
            if allow and nick:
                _, key = enforce_nick(nick)
                target = room.occupants.get(key)
                if target is not None and target.role == "visitor":
                    target.role = "participant"
                    self._broadcast_presence(room, target)
            return
        if occ.role != "visitor":
            return
        m = Element("message", {"from": room.jid, "id": secrets.token_hex(6)})
        x = SubElement(m, _XF, type="form")
        SubElement(x, f"{{{XDATA}}}title").text = "Voice request"
        for var, typ, val in (("FORM_TYPE", "hidden", REQUEST), ("muc#role", "list-single", "participant"),
                              ("muc#jid", "jid-single", occ.jid), ("muc#roomnick", "text-single", occ.nick),
                              ("muc#request_allow", "boolean", "false")):
            f = SubElement(x, f"{{{XDATA}}}field", var=var, type=typ)
            SubElement(f, f"{{{XDATA}}}value").text = val
        mods = [s for o in room.occupants.values() if o.role == "moderator" for s in o.sessions]
        self._fanout(m, mods)

    # -- iq to occupants: XEP-0410 self-ping ---------------------------------------------------
    @iq_handler("get", PING, "ping", to="full", on="service")
    def ping_occupant(self, st: Stanza) -> Element:
        room = self._room(st)
        frm, to = st.from_, st.to
        assert frm is not None and to is not None and to.resource is not None
        occ = room.occupant_of(frm.full)
        if occ is None:
            raise StanzaError("not-acceptable", "not joined")
        _, key = enforce_nick(to.resource)
        if key not in room.occupants:
            raise StanzaError("item-not-found", "no such occupant")
        return st.result()

    # -- vCards of occupants: forwarded to the occupant's bare JID -----------------------------
    @iq_handler("get", ns.VCARD, "vCard", to="full", on="service")
    def occupant_vcard(self, st: Stanza) -> None:
        """An occupant's vCard (XEP-0054 to ``room@service/nick``): the room asks the occupant's
        account as the requesting occupant, and relays the answer, so that real JIDs stay hidden."""
        self._relay_to_occupant(st, lambda target: target.bare, need_session=False)
        return None

    @hook("iq/full", on="service")
    def occupant_iq(self, st: Stanza) -> bool:
        """XEP-0045 §7.8 (iq to an occupant): an iq get/set to ``room@service/nick`` that no handler
        above takes (disco, version, time, ...) goes to one session of that occupant, from the
        sender's occupant JID, and its answer comes back the same way (ids rewritten, real JIDs
        hidden).  Only occupants may ask (``not-acceptable``)."""
        self._relay_to_occupant(st, lambda target: target.jid)  # its most recent session
        return True

    def _relay_to_occupant(self, st: Stanza, address: Any, need_session: bool = True) -> None:
        """Send ``st``'s payload to ``address(target)`` — the occupant ``st`` is addressed to — from
        the sender's occupant JID, with a fresh id whose answer ``_relay_back`` returns to the sender.
        Only occupants may ask (``not-acceptable``); an unknown occupant (or, with ``need_session``,
        one with no session) is ``item-not-found``."""
        room = self._room(st)
        frm, to = st.from_, st.to
        assert frm is not None and to is not None and to.resource is not None
        sender = room.occupant_of(frm.full)
        if sender is None:
            raise StanzaError("not-acceptable", "join the room first")
        target = room.occupants.get(enforce_nick(to.resource)[1])
        if target is None or (need_session and not target.sessions):
            raise StanzaError("item-not-found", "no such occupant")
        if len(self._relayed) >= MAX_RELAYED:  # answers that never came
            self._relayed.pop(next(iter(self._relayed)))
        rid = secrets.token_hex(8)
        self._relayed[rid] = (frm.full, st.id or "", f"{room.jid}/{target.nick}")
        fwd = Element("iq", {"type": st.type or "get", "id": rid, "from": f"{room.jid}/{sender.nick}",
                             "to": address(target)})
        fwd.append(st.el[0])
        self._route(fwd)

    @hook("iq-result/full", on="service")
    def relayed_result(self, st: Stanza) -> bool:
        return self._relay_back(st)

    @hook("iq-error/full", on="service")
    def relayed_error(self, st: Stanza) -> bool:
        return self._relay_back(st)

    def _relay_back(self, st: Stanza) -> bool:
        pending = self._relayed.pop(st.id or "", None)
        if pending is None:
            return False
        requester, orig_id, occupant = pending
        reply = Element("iq", {"type": st.type, "id": orig_id, "from": occupant, "to": requester})
        for c in st.el:
            reply.append(c)
        self._route(reply)
        return True

    # -- owner: configuration and destruction (§10) ------------------------------------------
    def _require(self, room: Room, frm: JID | None, least: str) -> str:
        assert frm is not None
        aff = self._aff(room, frm.bare)
        if AFF_RANK[aff] < AFF_RANK[least]:
            raise StanzaError("forbidden", f"only {least}s may do that")
        return aff

    @iq_handler("get", MUC_OWNER, "query", to="bare", on="service")
    def owner_get(self, st: Stanza) -> Element:
        room = self._room(st)
        self._require(room, st.from_, "owner")
        q = Element(f"{{{MUC_OWNER}}}query")
        q.append(room.config.form(self._opts(room.jid.partition("@")[2]).max_history))
        return st.result(q)

    @iq_handler("set", MUC_OWNER, "query", to="bare", on="service")
    def owner_set(self, st: Stanza) -> Element:
        room = self._room(st)
        self._require(room, st.from_, "owner")
        q = st.el[0]
        destroy = q.find(f"{{{MUC_OWNER}}}destroy")
        if destroy is not None:
            self._destroy(room, destroy)
            return st.result()
        x = q.find(_XF)
        if x is None:
            raise StanzaError("bad-request", "a form or <destroy/>")
        xtype = x.get("type", "submit")
        if xtype == "cancel":
            if room.locked:  # §10.1.3: cancelling the initial configuration destroys the room
                self._destroy(room, None)
            return st.result()
        if xtype != "submit":
            raise StanzaError("bad-request", "submit or cancel the form")
        before = room.config.to_dict()
        if len(x):
            owners, admins = room.config.submit(x, self._opts(room.jid.partition("@")[2]).max_history)
            for j in owners:
                room.set_affiliation(JID.parse(j).bare, "owner")
            for j in admins:
                room.set_affiliation(JID.parse(j).bare, "admin")
        was_locked = room.locked
        room.locked = False
        after = room.config.to_dict()
        self._save(room)
        if before != after and not was_locked:
            self._config_changed(room, before, after)
        if room.config.members_only and not before["members_only"]:
            for occ in list(room.occupants.values()):
                if AFF_RANK[self._aff(room, occ.bare)] < AFF_RANK["member"]:
                    self._remove_occupant(room, occ, ("322",))
        if room.config.moderated != before["moderated"]:
            for occ in room.occupants.values():
                new = room.default_role(self._aff(room, occ.bare))
                if occ.role in ("participant", "visitor") and new != occ.role:
                    occ.role = new
                    self._broadcast_presence(room, occ)
        if not room.occupants and not room.config.persistent:
            self._maybe_drop(room)
        return st.result()

    def _config_changed(self, room: Room, before: dict[str, Any], after: dict[str, Any]) -> None:
        """§10.2.1: status 104, and 172/173 when the room becomes non-anonymous/semi-anonymous."""
        codes = ["104"]
        if before["whois"] != after["whois"]:
            codes.append("172" if after["whois"] == "anyone" else "173")
        if before["logging"] != after["logging"]:
            codes.append("170" if after["logging"] else "171")
        m = Element("message", {"from": room.jid, "type": "groupchat", "id": secrets.token_hex(6)})
        _status(SubElement(m, _USER_X), codes)
        self._fanout(m, self._all_sessions(room))

    def _destroy(self, room: Room, destroy: Element | None) -> None:
        """§10.9: every occupant leaves with the reason and the alternate venue."""
        d = Element(f"{{{MUC_USER}}}destroy")
        if destroy is not None:
            if destroy.get("jid"):
                d.set("jid", destroy.get("jid", ""))
            for c in destroy:
                local = c.tag.rpartition("}")[2]
                if local in ("reason", "password"):
                    e = SubElement(d, f"{{{MUC_USER}}}{local}")
                    e.text = c.text
        for occ in list(room.occupants.values()):
            for real in occ.sessions:
                p = Element("presence", {"from": f"{room.jid}/{occ.nick}", "type": "unavailable"})
                x = SubElement(p, _USER_X)
                SubElement(x, f"{{{MUC_USER}}}item", affiliation="none", role="none")
                x.append(d)
                _status(x, ("110",))
                self._fanout(p, [real])
                j = self._joined.get(real)
                if j is not None:
                    j.discard(room.jid)
                    if not j:
                        del self._joined[real]
        room.occupants.clear()
        room.by_jid.clear()
        room.destroyed = True
        self.rooms.pop(room.jid, None)
        self._save(room)
        service, local = room.jid.partition("@")[2], room.jid.partition("@")[0]
        self.ctx.spawn(self._drop_archive(service, local))

    # -- admin: roles and affiliations (§8, §9, §10) ------------------------------------------
    @iq_handler("get", MUC_ADMIN, "query", to="bare", on="service")
    def admin_get(self, st: Stanza) -> Element:
        room = self._room(st)
        frm = st.from_
        assert frm is not None
        items = st.el[0].findall(f"{{{MUC_ADMIN}}}item")
        if len(items) != 1:
            raise StanzaError("bad-request", "one <item/> with a role or an affiliation")
        item = items[0]
        q = Element(f"{{{MUC_ADMIN}}}query")
        role, aff = item.get("role"), item.get("affiliation")
        if role is not None:
            occ = room.occupant_of(frm.full)
            if (occ is None or occ.role != "moderator") and AFF_RANK[self._aff(room, frm.bare)] < AFF_RANK["admin"]:
                raise StanzaError("forbidden", "only moderators see the role lists")
            for o in room.occupants.values():
                if o.role == role:
                    SubElement(q, f"{{{MUC_ADMIN}}}item", affiliation=self._aff(room, o.bare), role=o.role,
                               nick=o.nick, jid=o.jid)
            return st.result(q)
        if aff not in AFFILIATIONS or aff == "none":
            raise StanzaError("bad-request", "an affiliation list: owner, admin, member or outcast")
        self._require(room, frm, "admin")
        for j, a in sorted(room.affiliations.items()):
            if a == aff:
                it = SubElement(q, f"{{{MUC_ADMIN}}}item", affiliation=a, jid=j)
                if j in room.registered:
                    it.set("nick", room.registered[j])
                if room.reasons.get(j):
                    SubElement(it, f"{{{MUC_ADMIN}}}reason").text = room.reasons[j]
        return st.result(q)

    @iq_handler("set", MUC_ADMIN, "query", to="bare", on="service")
    def admin_set(self, st: Stanza) -> Element:
        room = self._room(st)
        frm = st.from_
        assert frm is not None
        actor_aff = self._aff(room, frm.bare)
        actor_occ = room.occupant_of(frm.full)
        actor_role = actor_occ.role if actor_occ is not None else "none"
        if actor_aff in ("owner", "admin"):
            actor_role = "moderator"
        items = st.el[0].findall(f"{{{MUC_ADMIN}}}item")
        if not items:
            raise StanzaError("bad-request", "no <item/>")
        changes: list[tuple[str, Any, str, str]] = []  # (kind, target, value, reason)
        owners_after = set(room.owners())
        for item in items:
            reason = item.findtext(f"{{{MUC_ADMIN}}}reason") or ""
            role, aff = item.get("role"), item.get("affiliation")
            if role is not None:
                if actor_role != "moderator":
                    raise StanzaError("forbidden", "only moderators change roles")
                nick = item.get("nick")
                if nick is None:
                    raise StanzaError("bad-request", "a role change names a nick")
                _, key = enforce_nick(nick)
                target = room.occupants.get(key)
                if target is None:
                    raise StanzaError("item-not-found", "no such occupant")
                if role not in ("moderator", "participant", "visitor", "none"):
                    raise StanzaError("bad-request", "unknown role")
                t_aff = self._aff(room, target.bare)
                if role == "moderator" or target.role == "moderator":
                    if AFF_RANK[actor_aff] < AFF_RANK["admin"]:
                        raise StanzaError("forbidden", "only admins grant or revoke moderator status")
                if AFF_RANK[t_aff] >= AFF_RANK["admin"] and role != "moderator":
                    raise StanzaError("not-allowed", "admins and owners keep their role")
                changes.append(("role", target, role, reason))
            elif aff is not None:
                if aff not in AFFILIATIONS:
                    raise StanzaError("bad-request", "unknown affiliation")
                jid_s = item.get("jid")
                if jid_s is None:
                    nick = item.get("nick")
                    o = room.occupants.get(enforce_nick(nick)[1]) if nick else None
                    if o is None:
                        raise StanzaError("bad-request", "an affiliation change names a jid")
                    jid_s = o.bare
                try:
                    bare = JID.parse(jid_s).bare
                except InvalidJID:
                    raise StanzaError("jid-malformed", "not a JID") from None
                current = room.affiliation(bare)
                if actor_aff == "owner":
                    pass
                elif actor_aff == "admin":
                    if aff in ("owner", "admin"):
                        raise StanzaError("forbidden", "only owners grant admin or owner")
                    if AFF_RANK[current] >= AFF_RANK["admin"]:
                        raise StanzaError("not-allowed", "admins cannot change admins or owners")
                else:
                    raise StanzaError("forbidden", "only admins and owners change affiliations")
                if aff == "owner":
                    owners_after.add(bare)
                else:
                    owners_after.discard(bare)
                changes.append(("aff", bare, aff, reason))
            else:
                raise StanzaError("bad-request", "an <item/> with a role or an affiliation")
        if not owners_after:
            raise StanzaError("conflict", "the room needs an owner")
        actor_nick = actor_occ.nick if actor_occ is not None else None
        for kind, target, value, reason in changes:
            if kind == "role":
                self._set_role(room, target, value, actor_nick, reason)
            else:
                self._set_affiliation(room, target, value, actor_nick, reason)
        self._save(room)
        return st.result()

    def _set_role(self, room: Room, occ: Occupant, role: str, actor: str | None, reason: str) -> None:
        if occ.key not in room.occupants:
            return
        if role == "none":  # §8.2 kick
            self._remove_occupant(room, occ, ("307",), actor, reason)
            return
        occ.role = role
        children = []
        if reason:
            r = Element(f"{{{MUC_USER}}}reason")
            r.text = reason
            children.append(r)
        self._broadcast_presence(room, occ, item_children=children)

    def _set_affiliation(self, room: Room, bare: str, aff: str, actor: str | None, reason: str) -> None:
        room.set_affiliation(bare, aff, reason)
        for occ in room.occupants_of_bare(bare):
            if aff == "outcast":  # §9.1 ban
                self._remove_occupant(room, occ, ("301",), actor, reason)
            elif room.config.members_only and aff == "none":  # §9.4 removed from the member list
                self._remove_occupant(room, occ, ("321",), actor, reason)
            else:
                occ.role = room.default_role(self._aff(room, bare)) if occ.role != "visitor" or aff != "none" \
                    else occ.role
                self._broadcast_presence(room, occ)

    # -- registration (§7.10) -------------------------------------------------------------------
    @iq_handler("get", REGISTER, "query", to="bare", on="service")
    def register_get(self, st: Stanza) -> Element:
        room = self._room(st)
        frm = st.from_
        assert frm is not None
        q = Element(f"{{{REGISTER}}}query")
        nick = room.registered.get(frm.bare)
        if nick is not None:
            SubElement(q, f"{{{REGISTER}}}registered")
            SubElement(q, f"{{{REGISTER}}}username").text = nick
            return st.result(q)
        SubElement(q, f"{{{REGISTER}}}instructions").text = "Reserve a nickname in this room"
        x = SubElement(q, _XF, type="form")
        for var, typ, val in (("FORM_TYPE", "hidden", REGISTER_FORM), ("muc#register_roomnick", "text-single", None)):
            f = SubElement(x, f"{{{XDATA}}}field", var=var, type=typ)
            if val is not None:
                SubElement(f, f"{{{XDATA}}}value").text = val
            if var != "FORM_TYPE":
                SubElement(f, f"{{{XDATA}}}required")
        return st.result(q)

    @iq_handler("set", REGISTER, "query", to="bare", on="service")
    def register_set(self, st: Stanza) -> Element:
        room = self._room(st)
        frm = st.from_
        assert frm is not None
        bare = frm.bare
        q = st.el[0]
        aff = self._aff(room, bare)
        if q.find(f"{{{REGISTER}}}remove") is not None:
            room.registered.pop(bare, None)
            self._save(room)
            return st.result()
        x = q.find(_XF)
        if x is None:
            raise StanzaError("bad-request", "submit the registration form")
        if x.get("type") == "cancel":
            return st.result()
        if aff == "outcast":
            raise StanzaError("forbidden", "banned from this room")
        if room.config.members_only and AFF_RANK[aff] < AFF_RANK["member"]:
            raise StanzaError("registration-required", "members only")
        nick = form_value(x, "muc#register_roomnick")
        if not nick:
            raise StanzaError("not-acceptable", "muc#register_roomnick is required")
        shown, key = enforce_nick(nick)
        holder = room.nick_reserved_by(key)
        in_use = room.occupants.get(key)
        if (holder is not None and holder != bare) or (in_use is not None and in_use.bare != bare):
            raise StanzaError("conflict", "that nickname is taken")
        room.registered[bare] = shown
        if aff == "none":
            room.set_affiliation(bare, "member")
            for occ in room.occupants_of_bare(bare):
                if occ.role == "visitor":
                    occ.role = "participant"
                self._broadcast_presence(room, occ)
        self._save(room)
        return st.result()

    # -- disco (XEP-0030) ---------------------------------------------------------------------
    @iq_handler("get", ns.DISCO_INFO, "query", to="host", on="service")
    def service_info(self, st: Stanza) -> Element:
        if st.el[0].get("node"):
            raise StanzaError("item-not-found", "no such node")
        return st.result(info_query(self.service_identity,
                                    (ns.DISCO_INFO, ns.DISCO_ITEMS, NS_MUC, UNIQUE, OCCUPANT_ID)))

    @iq_handler("get", UNIQUE, "unique", to="host", on="service")
    def unique_name(self, st: Stanza) -> Element:
        """§10.1.4: a room name nobody uses."""
        to = st.to
        assert to is not None
        while True:
            name = secrets.token_hex(8)
            if f"{name}@{to.domain}" not in self.rooms:
                break
        u = Element(f"{{{UNIQUE}}}unique")
        u.text = name
        return st.result(u)

    @iq_handler("get", ns.DISCO_ITEMS, "query", to="host", on="service")
    def service_items(self, st: Stanza) -> Element:
        to = st.to
        assert to is not None
        q = Element(f"{{{ns.DISCO_ITEMS}}}query")
        for jid, room in sorted(self.rooms.items()):
            if room.config.public and not room.locked and jid.partition("@")[2] == to.domain:
                label = room.config.name or jid.partition("@")[0]
                SubElement(q, f"{{{ns.DISCO_ITEMS}}}item", jid=jid, name=f"{label} ({len(room.occupants)})")
        return st.result(q)

    @iq_handler("get", ns.DISCO_INFO, "query", to="bare", on="service")
    def room_info(self, st: Stanza) -> Element:
        room = self._room(st)
        if st.el[0].get("node"):
            raise StanzaError("item-not-found", "no such node")
        c = room.config
        q = Element(f"{{{ns.DISCO_INFO}}}query")
        SubElement(q, f"{{{ns.DISCO_INFO}}}identity", category="conference", type="text",
                   name=c.name or room.jid.partition("@")[0])
        feats = [ns.DISCO_INFO, ns.DISCO_ITEMS, NS_MUC, REQUEST, OCCUPANT_ID, SID, REGISTER, "urn:xmpp:ping",
                 "muc_public" if c.public else "muc_hidden",
                 "muc_persistent" if c.persistent else "muc_temporary",
                 "muc_membersonly" if c.members_only else "muc_open",
                 "muc_moderated" if c.moderated else "muc_unmoderated",
                 "muc_nonanonymous" if c.whois == "anyone" else "muc_semianonymous",
                 "muc_passwordprotected" if c.password else "muc_unsecured"]
        if c.logging:
            feats.append(MAM)
        for feat in dict.fromkeys(feats):
            SubElement(q, f"{{{ns.DISCO_INFO}}}feature", var=feat)
        x = SubElement(q, _XF, type="result")
        for var, val in (("FORM_TYPE", ROOMINFO), ("muc#roominfo_description", c.description),
                         ("muc#roominfo_occupants", str(len(room.occupants))),
                         ("muc#roominfo_subject", room.subject), ("muc#roomconfig_roomname", c.name),
                         ("muc#maxhistoryfetch", str(c.history_length))):
            f = SubElement(x, f"{{{XDATA}}}field", var=var)
            if var == "FORM_TYPE":
                f.set("type", "hidden")
            SubElement(f, f"{{{XDATA}}}value").text = val
        return st.result(q)

    @iq_handler("get", ns.DISCO_ITEMS, "query", to="bare", on="service")
    def room_items(self, st: Stanza) -> Element:
        room = self._room(st)
        frm = st.from_
        assert frm is not None
        q = Element(f"{{{ns.DISCO_ITEMS}}}query")
        if room.config.public and room.occupant_of(frm.full) is not None:
            for o in room.occupants.values():
                SubElement(q, f"{{{ns.DISCO_ITEMS}}}item", jid=f"{room.jid}/{o.nick}")
        return st.result(q)

    # -- the room archive (XEP-0313 §6.1.2) -------------------------------------------------------
    def _may_read_archive(self, room: Room, frm: JID) -> None:
        if room.occupant_of(frm.full) is not None:
            return
        aff = self._aff(room, frm.bare)
        if aff == "outcast" or (room.config.members_only and AFF_RANK[aff] < AFF_RANK["member"]):
            raise StanzaError("forbidden", "members only")
        if not room.config.public and AFF_RANK[aff] < AFF_RANK["member"]:
            raise StanzaError("forbidden", "join the room to read its archive")

    @iq_handler("get", MAM, "query", to="bare", on="service")
    def mam_form(self, st: Stanza) -> Element:
        room = self._room(st)
        assert st.from_ is not None
        self._may_read_archive(room, st.from_)
        q = Element(f"{{{MAM}}}query")
        x = SubElement(q, _XF, type="form")
        f = SubElement(x, f"{{{XDATA}}}field", var="FORM_TYPE", type="hidden")
        SubElement(f, f"{{{XDATA}}}value").text = MAM
        for var in ("with", "start", "end", "before-id", "after-id"):
            SubElement(x, f"{{{XDATA}}}field", var=var, type="text-single")
        return st.result(q)

    @iq_handler("set", MAM, "query", to="bare", on="service")
    async def mam_query(self, st: Stanza) -> Element:
        room = self._room(st)
        frm = st.from_
        assert frm is not None
        self._may_read_archive(room, frm)
        q = parse_query(st.el[0], False)
        await self.flush()
        service, local = room.jid.partition("@")[2], room.jid.partition("@")[0]
        limit = 100 if q.max is None else min(q.max, 100)
        after, before = q.after or q.after_id, q.before or q.before_id
        for given in (after, before):
            if given is not None and await self.archive.get(service, local, given) is None:
                raise StanzaError("item-not-found", "no such id in the archive")
        # nothing from an earlier room of the same name (a temporary room's archive outlives it after a crash)
        start = room.created if q.start is None else max(q.start, room.created)
        filters: dict[str, Any] = {"with_": q.with_, "start": start, "end": q.end}
        if q.ids is not None:
            rows = []
            for i in dict.fromkeys(q.ids):
                item = await self.archive.get(service, local, i)
                if item is None or item.when < room.created:
                    raise StanzaError("item-not-found", "no such id in the archive")
                rows.append(item)
            rows.sort(key=lambda i: i.when)
            complete = True
        else:
            rows = await self.archive.query(service, local, after=after, before=before, limit=limit + 1,
                                            reverse=q.backward, **filters) if limit else []
            complete = len(rows) <= limit
            rows = rows[:limit]
            if q.backward:
                rows.reverse()
        for item in (rows[::-1] if q.flip else rows):
            try:
                original = fromstring(f"<w xmlns='{ns.CLIENT}'>{item.value}</w>")[0]
            except (ParseError, IndexError):
                continue
            m = Element("message", {"to": frm.full, "from": room.jid, "id": secrets.token_hex(6)})
            r = SubElement(m, f"{{{MAM}}}result", id=item.id)
            if q.queryid is not None:
                r.set("queryid", q.queryid)
            fwd = SubElement(r, f"{{{FORWARD}}}forwarded")
            SubElement(fwd, _DELAY, stamp=format_datetime(item.when, fraction=True))
            fwd.append(original)
            if st.origin is not None:
                self.ctx.sessions.deliver(st.origin, m)
            else:
                self._route(m)
        fin = Element(f"{{{MAM}}}fin")
        if complete:
            fin.set("complete", "true")
        rs = SubElement(fin, f"{{{RSM}}}set")
        if rows:
            SubElement(rs, f"{{{RSM}}}first").text = rows[0].id
            SubElement(rs, f"{{{RSM}}}last").text = rows[-1].id
        return st.result(fin)


__all__ = ["MUC", "MUCOptions", "ROOMCONFIG"]
