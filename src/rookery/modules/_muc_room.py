"""XEP-0045 Multi-User Chat: the room model used by ``modules/muc.py`` — configuration (the
``muc#roomconfig`` form, XEP-0004), affiliations and roles (§5), occupants with several sessions per
nickname, history (§7.2.15) and the persistent part of a room as JSON.

Pure: no I/O, no sessions.  Real JIDs are strings (full for occupant sessions, bare for affiliations).
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any
from xml.etree.ElementTree import Element, SubElement

import precis_i18n

from ..stanza import StanzaError
from ..xml import ns

MUC = "http://jabber.org/protocol/muc"
MUC_USER = MUC + "#user"
MUC_ADMIN = MUC + "#admin"
MUC_OWNER = MUC + "#owner"
ROOMCONFIG = MUC + "#roomconfig"
ROOMINFO = MUC + "#roominfo"
REQUEST = MUC + "#request"
REGISTER_FORM = MUC + "#register"
OCCUPANT_ID = "urn:xmpp:occupant-id:0"
XDATA = ns.DATA_FORMS
_X = f"{{{XDATA}}}x"
_FIELD = f"{{{XDATA}}}field"
_VALUE = f"{{{XDATA}}}value"

AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
ROLES = ("moderator", "participant", "visitor", "none")
#: rank of an affiliation (§5.2): higher is more powerful
AFF_RANK = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}
ROLE_RANK = {"none": 0, "visitor": 1, "participant": 2, "moderator": 3}

_NICK = precis_i18n.get_profile("NicknameCasePreserved")
_NICK_KEY = precis_i18n.get_profile("NicknameCaseMapped")


def enforce_nick(nick: str) -> tuple[str, str]:
    """RFC 8266: the nickname as shown and its comparison key; ``jid-malformed`` when not a valid
    nickname (XEP-0045 §7.2.1: a nick that cannot be used)."""
    try:
        shown = _NICK.enforce(nick)
        key = _NICK_KEY.enforce(nick)
    except (UnicodeError, ValueError):
        raise StanzaError("jid-malformed", "not a valid nickname (RFC 8266)") from None
    if not shown or len(shown.encode()) > 1023:
        raise StanzaError("jid-malformed", "not a valid nickname (RFC 8266)")
    return shown, key


def _bool(v: str) -> bool:
    return v.strip() in ("1", "true")


def _b(v: bool) -> str:
    return "1" if v else "0"


class RoomConfig:
    """The ``muc#roomconfig`` fields (XEP-0045 §10.2, §15.5.3)."""

    __slots__ = ("name", "description", "persistent", "public", "members_only", "password", "moderated",
                 "max_users", "whois", "history_length", "allow_invites", "change_subject", "allow_pm",
                 "logging", "lang")

    def __init__(self, history_length: int = 20) -> None:
        self.name = ""
        self.description = ""
        self.persistent = False
        self.public = True
        self.members_only = False
        self.password = ""
        self.moderated = False
        self.max_users = 0  # 0: no limit
        self.whois = "moderators"  # or "anyone" (non-anonymous)
        self.history_length = history_length
        self.allow_invites = False
        self.change_subject = False
        self.allow_pm = "anyone"  # anyone | participants | moderators | none
        self.logging = True  # the room archive (XEP-0313)
        self.lang = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomConfig:
        c = cls()
        for k in cls.__slots__:
            if k in d:
                setattr(c, k, d[k])
        return c

    def form(self, max_history: int) -> Element:
        """The configuration form (§10.1.3) with the current values."""
        x = Element(_X, type="form")
        SubElement(x, f"{{{XDATA}}}title").text = "Room configuration"
        _field(x, "FORM_TYPE", "hidden", ROOMCONFIG)
        _field(x, "muc#roomconfig_roomname", "text-single", self.name, "Name")
        _field(x, "muc#roomconfig_roomdesc", "text-single", self.description, "Description")
        _field(x, "muc#roomconfig_lang", "text-single", self.lang, "Language")
        _field(x, "muc#roomconfig_persistentroom", "boolean", _b(self.persistent), "Persistent")
        _field(x, "muc#roomconfig_publicroom", "boolean", _b(self.public), "Listed in the directory")
        _field(x, "muc#roomconfig_membersonly", "boolean", _b(self.members_only), "Members only")
        _field(x, "muc#roomconfig_passwordprotectedroom", "boolean", _b(bool(self.password)), "Password protected")
        _field(x, "muc#roomconfig_roomsecret", "text-private", self.password, "Password")
        _field(x, "muc#roomconfig_moderatedroom", "boolean", _b(self.moderated), "Moderated")
        _field(x, "muc#roomconfig_maxusers", "text-single", str(self.max_users), "Maximum occupants (0: no limit)")
        f = _field(x, "muc#roomconfig_whois", "list-single", self.whois, "Who may see real JIDs")
        for v in ("moderators", "anyone"):
            SubElement(SubElement(f, f"{{{XDATA}}}option", label=v), _VALUE).text = v
        _field(x, "muc#maxhistoryfetch", "text-single", str(self.history_length),
               f"Messages of history sent on join (at most {max_history})")
        _field(x, "muc#roomconfig_allowinvites", "boolean", _b(self.allow_invites), "Occupants may invite")
        _field(x, "muc#roomconfig_changesubject", "boolean", _b(self.change_subject), "Occupants may change the subject")
        f = _field(x, "muc#roomconfig_allowpm", "list-single", self.allow_pm, "Who may send private messages")
        for v in ("anyone", "participants", "moderators", "none"):
            SubElement(SubElement(f, f"{{{XDATA}}}option", label=v), _VALUE).text = v
        _field(x, "muc#roomconfig_enablelogging", "boolean", _b(self.logging), "Archive messages (MAM)")
        return x

    def submit(self, x: Element, max_history: int) -> tuple[list[str], list[str]]:
        """Apply a submitted form; ``not-acceptable`` for bad values.  Returns (owners, admins) when the
        form names them (``muc#roomconfig_roomowners`` / ``roomadmins``), else empty lists."""
        new = RoomConfig.from_dict(self.to_dict())
        owners: list[str] = []
        admins: list[str] = []
        protected: bool | None = None
        for field in x.iter(_FIELD):
            var = field.get("var") or ""
            values = [(v.text or "") for v in field.findall(_VALUE)]
            v = values[0] if values else ""
            if var == "FORM_TYPE":
                if v != ROOMCONFIG:
                    raise StanzaError("not-acceptable", "FORM_TYPE must be " + ROOMCONFIG)
            elif var == "muc#roomconfig_roomname":
                new.name = v
            elif var == "muc#roomconfig_roomdesc":
                new.description = v
            elif var == "muc#roomconfig_lang":
                new.lang = v
            elif var == "muc#roomconfig_persistentroom":
                new.persistent = _bool(v)
            elif var == "muc#roomconfig_publicroom":
                new.public = _bool(v)
            elif var == "muc#roomconfig_membersonly":
                new.members_only = _bool(v)
            elif var == "muc#roomconfig_passwordprotectedroom":
                protected = _bool(v)
            elif var == "muc#roomconfig_roomsecret":
                new.password = v
            elif var == "muc#roomconfig_moderatedroom":
                new.moderated = _bool(v)
            elif var == "muc#roomconfig_maxusers":
                if v.strip().lower() in ("", "none"):
                    new.max_users = 0
                elif not v.strip().isdigit():
                    raise StanzaError("not-acceptable", "muc#roomconfig_maxusers must be a number")
                else:
                    new.max_users = int(v)
            elif var == "muc#roomconfig_whois":
                if v not in ("moderators", "anyone"):
                    raise StanzaError("not-acceptable", "muc#roomconfig_whois: moderators or anyone")
                new.whois = v
            elif var in ("muc#maxhistoryfetch", "muc#roomconfig_historylength"):
                if not v.strip().isdigit():
                    raise StanzaError("not-acceptable", f"{var} must be a number")
                new.history_length = min(int(v), max_history)
            elif var == "muc#roomconfig_allowinvites":
                new.allow_invites = _bool(v)
            elif var == "muc#roomconfig_changesubject":
                new.change_subject = _bool(v)
            elif var == "muc#roomconfig_allowpm":
                if v not in ("anyone", "participants", "moderators", "none"):
                    raise StanzaError("not-acceptable", "muc#roomconfig_allowpm: anyone, participants, moderators or none")
                new.allow_pm = v
            elif var == "muc#roomconfig_enablelogging":
                new.logging = _bool(v)
            elif var == "muc#roomconfig_roomowners":
                owners = [s for s in values if s]
            elif var == "muc#roomconfig_roomadmins":
                admins = [s for s in values if s]
            # other fields (the XEP's optional ones) are accepted and ignored
        if protected is False:
            new.password = ""
        elif protected and not new.password:
            raise StanzaError("not-acceptable", "a password-protected room needs a password")
        for k in RoomConfig.__slots__:
            setattr(self, k, getattr(new, k))
        return owners, admins


def _field(x: Element, var: str, type: str, value: str | None, label: str | None = None) -> Element:
    f = SubElement(x, _FIELD, var=var, type=type)
    if label:
        f.set("label", label)
    if value is not None:
        SubElement(f, _VALUE).text = value
    return f


def form_values(x: Element) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for field in x.iter(_FIELD):
        var = field.get("var")
        if var:
            out[var] = [(v.text or "") for v in field.findall(_VALUE)]
    return out


def form_value(x: Element, var: str) -> str | None:
    v = form_values(x).get(var)
    return v[0] if v else None


class Occupant:
    """One nickname in a room: one bare JID, one or more of its sessions (multi-session nicks)."""

    __slots__ = ("nick", "key", "bare", "role", "sessions", "occupant_id", "presence")

    def __init__(self, nick: str, key: str, bare: str, role: str, occupant_id: str) -> None:
        self.nick = nick
        self.key = key
        self.bare = bare
        self.role = role
        #: real full JID -> that session's last presence to the room (children to broadcast)
        self.sessions: dict[str, Element] = {}
        self.occupant_id = occupant_id
        #: the presence broadcast for this occupant (the most recent session's)
        self.presence: Element = Element("presence")

    @property
    def jid(self) -> str:
        """The real JID shown to those who may see it (the most recent session's)."""
        return next(reversed(self.sessions)) if self.sessions else self.bare


class Room:
    """A room (§4.1): configuration, affiliations, occupants, subject, history."""

    def __init__(self, jid: str, config: RoomConfig, max_history: int) -> None:
        self.jid = jid  # bare room JID
        self.config = config
        self.affiliations: dict[str, str] = {}  # bare JID -> owner|admin|member|outcast
        self.reasons: dict[str, str] = {}  # bare JID -> reason given with the affiliation
        self.registered: dict[str, str] = {}  # bare JID -> reserved nickname (§7.10)
        self.occupants: dict[str, Occupant] = {}  # nick key -> occupant
        self.by_jid: dict[str, str] = {}  # real full JID -> nick key
        self.subject = ""
        self.subject_from = ""  # the nick (room JID when empty)
        self.subject_time = 0.0
        self.history: deque[tuple[float, Element, int]] = deque(maxlen=max(1, max_history))
        self.locked = False
        self.created = time.time()
        self.creator = ""
        self.destroyed = False

    # -- affiliations and roles -------------------------------------------------------------
    def affiliation(self, bare: str) -> str:
        return self.affiliations.get(bare, "none")

    def default_role(self, aff: str) -> str:
        if aff in ("owner", "admin"):
            return "moderator"
        if aff == "member" or not self.config.moderated:
            return "participant"
        return "visitor"

    def set_affiliation(self, bare: str, aff: str, reason: str = "") -> None:
        if aff == "none":
            self.affiliations.pop(bare, None)
            self.reasons.pop(bare, None)
        else:
            self.affiliations[bare] = aff
            if reason:
                self.reasons[bare] = reason
            else:
                self.reasons.pop(bare, None)

    def owners(self) -> list[str]:
        return [j for j, a in self.affiliations.items() if a == "owner"]

    def nick_reserved_by(self, key: str) -> str | None:
        for bare, nick in self.registered.items():
            if enforce_nick(nick)[1] == key:
                return bare
        return None

    def occupant_of(self, real: str) -> Occupant | None:
        k = self.by_jid.get(real)
        return self.occupants.get(k) if k is not None else None

    def occupants_of_bare(self, bare: str) -> list[Occupant]:
        return [o for o in self.occupants.values() if o.bare == bare]

    def may_see_jids(self, occ: Occupant) -> bool:
        return self.config.whois == "anyone" or occ.role == "moderator"

    # -- persistence ------------------------------------------------------------------------
    def dumps(self) -> str:
        return json.dumps({
            "config": self.config.to_dict(), "affiliations": self.affiliations, "reasons": self.reasons,
            "registered": self.registered, "subject": self.subject, "subject_from": self.subject_from,
            "subject_time": self.subject_time, "created": self.created, "creator": self.creator,
            "locked": self.locked,
        })

    @classmethod
    def loads(cls, jid: str, data: str, max_history: int) -> Room:
        d = json.loads(data)
        room = cls(jid, RoomConfig.from_dict(d.get("config", {})), max_history)
        room.affiliations = dict(d.get("affiliations", {}))
        room.reasons = dict(d.get("reasons", {}))
        room.registered = dict(d.get("registered", {}))
        room.subject = d.get("subject", "")
        room.subject_from = d.get("subject_from", "")
        room.subject_time = float(d.get("subject_time", 0.0))
        room.created = float(d.get("created", time.time()))
        room.creator = d.get("creator", "")
        room.locked = bool(d.get("locked", False))
        return room
