"""XEP-0313: Message Archive Management (``urn:xmpp:mam:2`` and ``urn:xmpp:mam:2#extended``), with
XEP-0359 stanza ids, XEP-0059 paging and XEP-0441 archiving preferences.

Archiving (§3, §7.1.1 "User Archives"): every ``chat``/``normal`` message with a ``<body/>`` (or a
XEP-0334 ``<store/>`` hint) that a local user sends or receives goes into that user's archive, once
(§7.1.1: copies made by forking or carbons are not stored twice); XEP-0085 chat states without a body
are not (§3).  XEP-0334 ``<no-store/>``/``<no-permanent-store/>`` keep a message out.

* Outgoing: the ``pre-message`` chain of the sender's domain (never handles the stanza) archives the
  message as sent, with the recipient as "with".
* Incoming: the ``message/bare`` and ``message/full`` chains of the recipient's domain remove any
  ``<stanza-id/>`` claiming to be by the recipient (XEP-0359 §4 rule 2; a client's ``origin-id`` and
  other entities' stanza ids are kept) and, when the recipient's preferences archive it, stamp
  ``<stanza-id xmlns='urn:xmpp:sid:0' id=... by='user@domain'/>`` (§3.5 "Communicating the archive
  ID"); the id is the archive item's id.  The message is archived as delivered when the router fires
  ``message-delivered``, or when the ``delivery-failed`` fold reports it stored offline (XEP-0160).
  A message bounced with an error is not archived (§7.1: only what was accepted for delivery).

Writes are batched: the message path only appends to an in-memory list (no storage is awaited on
it); a background task writes each batch with one ``append_many`` a few milliseconds later.  A
query first flushes what is pending for the querying user, and ``stop()`` flushes everything.

Queries (§4): iq set ``<query/>`` to the account's bare JID with an XEP-0004 form (FORM_TYPE
``urn:xmpp:mam:2``; ``with``, ``start``, ``end``, ``before-id``, ``after-id``, ``ids`` and, with
``[mam] full_text``, ``{urn:xmpp:fulltext:0}fulltext``) and XEP-0059 ``<set/>`` (``max``, ``after``,
``before``, an empty ``<before/>`` for the last page) and ``<flip-page/>`` (§4.3.4); results as
``<message><result queryid id><forwarded><delay/>...</forwarded></result></message>`` (§4.2), then
``<fin complete=...>`` with the RSM ``<set/>``.  iq get ``<query/>`` returns the form (§4.1.5),
iq get ``<metadata/>`` the first and last items (§5).  Another user's archive is ``forbidden``
(§8.1); a malformed query ``bad-request``; an unknown form field ``feature-not-implemented``
(§4.1.5); an unknown id ``item-not-found`` (§4.3.2, §4.1.3).

Preferences (XEP-0441 §2): ``<prefs default='always|never|roster'>`` with ``always``/``never`` JID
lists, stored per user and applied when archiving (§2.3 JID matching: outgoing by ``to``, incoming by
``from``).  Retention: ``[mam] retention`` days (0: forever), pruned by a periodic task (§2.2: the
oldest go first, ids are never reused).  Quota: ``[mam] max_messages_per_user`` (0: no limit);
when a write takes a user's archive over it, that user's oldest messages are deleted down to it and
the deletion is logged (like retention, and like Prosody's archive item limit: new messages
are always archived, the archive never refuses a message someone else sent).  The count of each
archive written to is read once and then kept in memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element, ParseError, SubElement, fromstring

from pydantic import Field

from ..jid import JID, InvalidJID
from ..module import Module, ModuleContext, Options, fold, hook, iq_handler
from ..stanza import Stanza, StanzaError
from ..storage.base import ArchiveItem
from ..xml import ns, serialize
from .time import format_datetime

NS = "urn:xmpp:mam:2"
NS_EXTENDED = "urn:xmpp:mam:2#extended"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
HINTS = "urn:xmpp:hints"
FULLTEXT = "{urn:xmpp:fulltext:0}fulltext"
XDATA = ns.DATA_FORMS

_SID_TAG = f"{{{SID}}}stanza-id"
_STORE = f"{{{HINTS}}}store"
_NO_ARCHIVE = frozenset((f"{{{HINTS}}}no-store", f"{{{HINTS}}}no-permanent-store"))
_X = f"{{{XDATA}}}x"
_FIELD = f"{{{XDATA}}}field"
_VALUE = f"{{{XDATA}}}value"
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")

FLUSH_DELAY = 0.02  # seconds a batch waits for company before it is written
MAX_PENDING = 100_000  # items kept in memory while the database refuses writes
MAX_WRITE = 5_000  # items per write transaction (SQLite's write lock is held that long)
DEFAULT_PREFS = "always"
MAX_REROUTED = 10_000

Key = tuple[str, str]
#: a message waiting to be written: host, user, id, when, with, element, archive whose stamp to hide
Pending = tuple[str, str, str, float, "str | None", Element, "str | None"]


#: cluster event: an account's archiving preferences changed on another worker (issue 12)
PREFS_CHANGED = "mam-prefs-changed"
#: cluster call: write what is pending for an account's archive (a query on another worker)
FLUSH = "mam.flush"


class MAMOptions(Options):
    #: days an archived message is kept; 0 keeps them forever (XEP-0313 §2.2)
    retention: float = Field(0, ge=0)
    #: allow the ``{urn:xmpp:fulltext:0}fulltext`` query field (SQLite FTS5 / PostgreSQL tsvector)
    full_text: bool = False
    #: most results in one page, whatever ``<max/>`` asks (XEP-0059 §2.1)
    max_page: int = Field(100, ge=1, le=10_000)
    #: seconds between two retention clean-ups
    cleanup_interval: float = Field(3600.0, gt=0)
    #: most messages kept in one user's archive; over it the oldest are deleted (0: no limit)
    max_messages_per_user: int = Field(0, ge=0)


class Prefs:
    """XEP-0441 §2.1 preferences: ``default`` and the always/never JID lists."""

    __slots__ = ("default", "always", "never")

    def __init__(self, default: str = DEFAULT_PREFS, always: list[str] | None = None,
                 never: list[str] | None = None) -> None:
        self.default = default
        self.always = always or []
        self.never = never or []

    def decide(self, peer: JID) -> bool | None:
        """True/False by the lists (§2.3: a listed bare JID matches every resource of it; never wins
        over always), None when the default (possibly ``roster``) decides."""
        if self.never and (peer.full in self.never or peer.bare in self.never):
            return False
        if self.always and (peer.full in self.always or peer.bare in self.always):
            return True
        if self.default == "always":
            return True
        if self.default == "never":
            return False
        return None

    def dumps(self) -> str:
        return json.dumps({"default": self.default, "always": self.always, "never": self.never})

    @staticmethod
    def loads(data: str | None) -> Prefs:
        if not data:
            return Prefs()
        d = json.loads(data)
        return Prefs(d.get("default", DEFAULT_PREFS), list(d.get("always", [])), list(d.get("never", [])))


def archivable(el: Element) -> bool:
    """§7.1.1: a message with a body (or a XEP-0334 store hint) and no no-store hint."""
    keep = False
    for c in el:
        t = c.tag
        if t == "body" or t == _STORE:
            keep = True
        elif t in _NO_ARCHIVE:
            return False
    return keep


def parse_datetime(s: str) -> float:
    """XEP-0082 §3.2 DateTime -> POSIX time; ``StanzaError('bad-request')`` when malformed."""
    s = s.strip()
    if not _DATETIME.fullmatch(s):
        raise StanzaError("bad-request", f"not a XEP-0082 DateTime: {s[:40]!r}")
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise StanzaError("bad-request", f"not a XEP-0082 DateTime: {s[:40]!r}") from None


class Query:
    """A parsed §4 query: filters, paging and the page order."""

    __slots__ = ("queryid", "with_", "start", "end", "after_id", "before_id", "ids", "text", "max",
                 "after", "before", "backward", "flip")

    def __init__(self) -> None:
        self.queryid: str | None = None
        self.with_: str | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.after_id: str | None = None
        self.before_id: str | None = None
        self.ids: list[str] | None = None
        self.text: str | None = None
        self.max: int | None = None
        self.after: str | None = None
        self.before: str | None = None
        self.backward = False
        self.flip = False


def _single(field: Element) -> str:
    values = field.findall(_VALUE)
    if len(values) != 1:
        raise StanzaError("bad-request", f"field {field.get('var')!r} needs exactly one value")
    return (values[0].text or "").strip()


def parse_query(q: Element, full_text: bool) -> Query:
    """§4.1 form fields and XEP-0059 §2 paging; raises ``StanzaError``."""
    out = Query()
    out.queryid = q.get("queryid")
    for child in q:
        tag = child.tag
        if tag == _X:
            if child.get("type", "submit") != "submit":
                raise StanzaError("bad-request", "the query form must be of type 'submit'")
            _parse_form(child, out, full_text)
        elif tag == f"{{{RSM}}}set":
            _parse_rsm(child, out)
        elif tag == f"{{{NS}}}flip-page":
            out.flip = True
        else:
            raise StanzaError("bad-request", f"unexpected element {tag} in the query")
    return out


def _parse_form(x: Element, out: Query, full_text: bool) -> None:
    seen: set[str] = set()
    for field in x:
        if field.tag != _FIELD:
            continue
        var = field.get("var")
        if var is None:
            raise StanzaError("bad-request", "a form field without 'var'")
        if var in seen:
            raise StanzaError("bad-request", f"field {var!r} given twice")
        seen.add(var)
        if var == "FORM_TYPE":
            if _single(field) != NS:
                raise StanzaError("bad-request", f"FORM_TYPE must be {NS}")
        elif var == "with":
            try:
                out.with_ = JID.parse(_single(field)).full
            except InvalidJID:
                raise StanzaError("bad-request", "'with' is not a valid JID") from None
        elif var == "start":
            out.start = parse_datetime(_single(field))
        elif var == "end":
            out.end = parse_datetime(_single(field))
        elif var == "after-id":
            out.after_id = _single(field) or None
        elif var == "before-id":
            out.before_id = _single(field) or None
        elif var == "ids":
            ids = [(v.text or "").strip() for v in field.findall(_VALUE)]
            if not ids or any(not i for i in ids):
                raise StanzaError("bad-request", "'ids' needs non-empty values")
            out.ids = ids
        elif var == FULLTEXT and full_text:
            out.text = _single(field) or None
        else:
            # §4.1.5: "a form field that the server does not recognise"
            raise StanzaError("feature-not-implemented", f"unknown field {var[:60]!r}")
    if out.start is not None and out.end is not None and out.start > out.end:
        out.end = out.start - 1  # an empty range, not an error (§4.1: no results)


def _parse_rsm(s: Element, out: Query) -> None:
    for c in s:
        local = c.tag.rpartition("}")[2]
        text = (c.text or "").strip()
        if local == "max":
            if not text.isdigit():
                raise StanzaError("bad-request", "<max/> must be a non-negative integer")
            out.max = int(text)
        elif local == "after":
            if not text:
                raise StanzaError("bad-request", "<after/> needs an id")
            out.after = text
        elif local == "before":
            out.backward = True
            out.before = text or None
        elif local == "index":
            raise StanzaError("feature-not-implemented", "paging by index is not supported")
        else:
            raise StanzaError("bad-request", f"unexpected <{local}/> in <set/>")


class MAM(Module):
    """XEP-0313 user archives with XEP-0359 stanza ids and XEP-0441 preferences."""

    name = "mam"
    account_features = [NS, NS_EXTENDED, SID]
    Options = MAMOptions

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.archive = ctx.open_store("messages", "archive")
        self.prefs_store = ctx.open_store("prefs", "keyval")
        self._batch: list[Pending] = []
        self._batch_users: set[Key] = set()
        self._inflight_users: set[Key] = set()
        self._prefs: dict[Key, Prefs] = {}
        #: archive sizes of users on domains with a quota (read once, then counted here)
        self._sizes: dict[Key, int] = {}
        self._wake: asyncio.Event | None = None
        self._flush_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: key of the MAC in the archive ids this process assigns (see _mint)
        self._key = secrets.token_bytes(32)
        self._mac = hashlib.blake2b(key=self._key, digest_size=6)
        self._prefix = secrets.token_bytes(6)
        self._count = 0
        #: ids of stanzas the server routes again, already archived (see _stamped; rare, bounded)
        self._rerouted: set[str] = set()
        #: some domain has [mam] max_messages_per_user
        self._quota = any(ctx.options_for(h).max_messages_per_user > 0 for h in ctx.hosts)
        #: domains with [mam] full_text: their items carry the body as searchable text
        self._full_text = {h for h in ctx.hosts if ctx.options_for(h).full_text}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flusher())]
        self.ctx.sessions.serve(FLUSH, self._flush_asked)
        if any(self.ctx.options_for(h).retention > 0 for h in self.ctx.hosts):
            self._tasks.append(loop.create_task(self._cleaner()))

    async def stop(self) -> None:
        self.ctx.sessions.serve(FLUSH, None)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        await self.flush()

    async def _flusher(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            await asyncio.sleep(FLUSH_DELAY)
            wake.clear()
            await self.flush()

    async def _cleaner(self) -> None:
        while True:
            try:
                await self.clean_up()
            except Exception:
                self.log.exception("archive clean-up failed")
            await asyncio.sleep(self.options.cleanup_interval)

    async def clean_up(self) -> int:
        """Delete what is older than each domain's ``retention`` (§2.2: the oldest first)."""
        await self.flush()
        removed = 0
        now = time.time()
        for host in self.ctx.hosts:
            days = self.ctx.options_for(host).retention
            if days > 0:
                removed += await self.archive.prune(now - days * 86400.0, host=host)
        if removed:
            self.log.info("retention: removed %d archived messages", removed)
            self._sizes.clear()
        return removed

    async def _enforce_quota(self, written: dict[Key, int]) -> None:
        """``[mam] max_messages_per_user``: the oldest messages of a user over it are deleted."""
        for key, n in written.items():
            limit = self.ctx.options_for(key[0]).max_messages_per_user
            if limit <= 0:
                continue
            size = self._sizes.get(key)
            if size is None:
                size = await self.archive.count(*key)
            else:
                size += n
            if size > limit:
                removed = await self.archive.trim(key[0], key[1], limit)
                self.log.info("quota: removed the %d oldest archived messages of %s@%s (limit %d)",
                              removed, key[1], key[0], limit)
                size = limit
            self._sizes[key] = size

    # -- batching ----------------------------------------------------------------------------------
    def _enqueue(self, key: Key, item_id: str, with_: str | None, el: Element, hide: str | None = None) -> None:
        """The message path's only archive work: one list append.  The element is serialized when the
        batch is written (``_items``), once for both archives of a message between local users; ``hide``
        names the archive whose stanza-id the copy must not show (the recipient's, on a sent message)."""
        self._batch.append((key[0], key[1], item_id, time.time(), with_, el, hide))
        self._batch_users.add(key)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def _items(self, batch: list[Pending]) -> list[tuple[str, str, ArchiveItem]]:
        """Serialize a batch: each element once, the sender's copy without the recipient's stamp."""
        done: dict[int, str] = {}
        out = []
        full_text = self._full_text
        for host, user, item_id, when, with_, el, hide in batch:
            value = done.get(id(el))
            if value is None:
                value = done[id(el)] = serialize(el)
            if hide is not None:
                for c in el:
                    if c.tag == _SID_TAG and c.get("by") == hide:
                        value = value.replace(serialize(c), "", 1)
                        break
            text = el.findtext("body") if host in full_text else None
            out.append((host, user, ArchiveItem(item_id, when, with_, value, text)))
        return out

    async def flush(self) -> None:
        """Write every pending item (transactions of at most ``MAX_WRITE`` items); on failure keep
        them for the next try."""
        lock = self._flush_lock
        if lock is None:
            return
        async with lock:
            while self._batch:
                batch, self._batch = self._batch[:MAX_WRITE], self._batch[MAX_WRITE:]
                users = {(b[0], b[1]) for b in batch}
                self._inflight_users = users
                if not self._batch:
                    self._batch_users = set()
                try:
                    await self.archive.append_many(self._items(batch))
                    if self._quota:
                        written: dict[Key, int] = {}
                        for b in batch:
                            written[(b[0], b[1])] = written.get((b[0], b[1]), 0) + 1
                        try:
                            await self._enforce_quota(written)
                        except Exception:  # the batch is written: never retried for this
                            self.log.exception("archive quota enforcement failed")
                            self._sizes.clear()
                except Exception:
                    self.log.exception("archive write of %d messages failed; retrying", len(batch))
                    if len(batch) + len(self._batch) <= MAX_PENDING:
                        self._batch[:0] = batch
                        self._batch_users |= users
                    else:
                        self.log.error("archive backlog over %d messages: %d dropped", MAX_PENDING, len(batch))
                    self._inflight_users = set()
                    await asyncio.sleep(0.5)
                    if self._wake is not None:
                        self._wake.set()
                    return
                finally:
                    self._inflight_users = set()

    async def _flush_for(self, key: Key) -> None:
        if key in self._batch_users or key in self._inflight_users:
            await self.flush()
        peers = self.ctx.sessions.peers()
        if peers:  # other workers (issue 12) write what they archived for this user too
            await asyncio.gather(*(self.ctx.sessions.call(w, FLUSH, list(key), timeout=3.0) for w in peers),
                                 return_exceptions=True)

    async def _flush_asked(self, key: list[str]) -> bool:
        """Another worker queries this archive: what is pending for it is written first."""
        if (key[0], key[1]) in self._batch_users or (key[0], key[1]) in self._inflight_users:
            await self.flush()
        return True

    # -- preferences -------------------------------------------------------------------------------
    async def prefs(self, host: str, user: str) -> Prefs:
        key = (host, user)
        p = self._prefs.get(key)
        if p is None:
            try:
                p = Prefs.loads(await self.prefs_store.get(host, user))
            except (ValueError, TypeError):
                self.log.warning("unreadable archive preferences of %s@%s; using defaults", user, host)
                p = Prefs()
            if len(self._prefs) >= 50_000:
                self._prefs.pop(next(iter(self._prefs)))
            # what another worker's change put here meanwhile is newer than what was read
            p = self._prefs.setdefault(key, p)
        return p

    def _archives(self, key: Key, prefs: Prefs, peer: JID) -> bool | Awaitable[bool]:
        """XEP-0441 §2: whether ``key``'s archive takes a message with ``peer``."""
        d = prefs.decide(peer)
        if d is not None:
            return d
        # default='roster': the peer's bare JID is in the user's roster (§2.3)
        if not self.ctx.has_service("roster"):
            return False
        roster = self.ctx.service("roster")
        items = roster.cached(*key)
        if items is not None:
            return peer.bare in items
        return self._in_roster(roster, key, peer)

    @staticmethod
    async def _in_roster(roster: Any, key: Key, peer: JID) -> bool:
        return await roster.get_item(key[0], key[1], peer.bare) is not None

    async def _decide(self, key: Key, peer: JID) -> bool:
        r = self._archives(key, await self.prefs(*key), peer)
        return r if isinstance(r, bool) else await r

    # -- archiving: outgoing ------------------------------------------------------------------------
    @hook("pre-message", priority=-1000)
    def outgoing(self, st: Stanza) -> Awaitable[None] | None:
        """A message a local user sends goes to their archive (never handles the stanza)."""
        frm, to = st.from_, st.to
        if frm is None or to is None or frm.local is None:
            return None
        el = st.el
        _strip_ids(el, frm.bare)  # XEP-0359 §4 rule 2: no stanza-id in our user's name
        if (st.type != "chat" and st.type != "normal") or not archivable(el) or to.bare == frm.bare:
            return None  # a message to oneself is archived once, as incoming
        key = (frm.domain, frm.local)
        prefs = self._prefs.get(key)
        if prefs is None:
            return self._outgoing_later(st, key, to)
        r = self._archives(key, prefs, to)
        if r is True:
            self._enqueue(key, self._mint(frm.bare), to.full, el, to.bare)
        elif r is not False:
            return self._outgoing_after(r, st, key, to)
        return None

    async def _outgoing_later(self, st: Stanza, key: Key, to: JID) -> None:
        if await self._decide(key, to):
            self._enqueue(key, self._mint(key[1] + "@" + key[0]), to.full, st.el, to.bare)

    async def _outgoing_after(self, r: Awaitable[bool], st: Stanza, key: Key, to: JID) -> None:
        if await r:
            self._enqueue(key, self._mint(key[1] + "@" + key[0]), to.full, st.el, to.bare)

    # -- archiving: incoming ------------------------------------------------------------------------
    @hook("message/bare", priority=-1000)
    def incoming_bare(self, st: Stanza) -> Awaitable[None] | None:
        return self.incoming(st)

    @hook("message/full", priority=-1000)
    def incoming_full(self, st: Stanza) -> Awaitable[None] | None:
        return self.incoming(st)

    def incoming(self, st: Stanza) -> Awaitable[None] | None:
        """Stamp the stanza-id of the recipient's archive on a message about to be delivered (the
        chain runs before the router's delivery; never handles the stanza)."""
        to = st.to
        assert to is not None
        el = st.el
        if self._stamped(st, to.bare):
            return None  # routed again by the server: archived on its first trip already
        if (st.type != "chat" and st.type != "normal") or not archivable(el):
            return None
        frm = st.from_
        if frm is None or to.local is None:
            return None
        key = (to.domain, to.local)
        prefs = self._prefs.get(key)
        if prefs is None:
            return self._incoming_later(st, key, frm)
        r = self._archives(key, prefs, frm)
        if r is True:
            SubElement(el, _SID_TAG, {"id": self._mint(to.bare), "by": to.bare})
        elif r is not False:
            return self._incoming_after(r, st, to, frm)
        return None

    def _stamped(self, st: Stanza, by: str) -> bool:
        """Remove stanza-ids claiming to be by ``by`` (XEP-0359 §4 rule 2), except, on a stanza the
        server itself routes again (no client origin), the one this process assigned: True then."""
        el = st.el
        for c in el:
            if c.tag == _SID_TAG and c.get("by") == by:
                sid = c.get("id", "")
                if st.origin is None and self._ours(sid, by):
                    if len(self._rerouted) >= MAX_REROUTED:
                        self._rerouted.clear()
                    self._rerouted.add(sid)
                    return True
                _strip_ids(el, by)
                return False
        return False

    async def _incoming_later(self, st: Stanza, key: Key, frm: JID) -> None:
        to = st.to
        assert to is not None
        if await self._decide(key, frm):
            SubElement(st.el, _SID_TAG, {"id": self._mint(to.bare), "by": to.bare})

    async def _incoming_after(self, r: Awaitable[bool], st: Stanza, to: JID, frm: JID) -> None:
        if await r:
            SubElement(st.el, _SID_TAG, {"id": self._mint(to.bare), "by": to.bare})

    def _mint(self, by: str) -> str:
        """A new archive id for ``by``'s archive (XEP-0313 §2: unpredictable and unique): a random
        per-process prefix, a counter, and a 48-bit keyed BLAKE2 MAC of both and ``by``, so that the
        ids cannot be guessed and a stanza the server routes again (e.g. re-routed from a dead stream)
        is recognised as already stamped and archived (``_stamped``).  No system call per id."""
        self._count += 1
        head = self._prefix + self._count.to_bytes(6, "big")
        mac = self._mac.copy()
        mac.update(head + by.encode())
        tag = mac.digest()
        return base64.urlsafe_b64encode(head + tag).decode()

    def _ours(self, sid: str, by: str) -> bool:
        try:
            raw = base64.urlsafe_b64decode(sid.encode())
        except (ValueError, UnicodeEncodeError):
            return False
        if len(raw) != 18:
            return False
        mac = self._mac.copy()
        mac.update(raw[:12] + by.encode())
        tag = mac.digest()
        return hmac.compare_digest(tag, raw[12:])

    def _archive_incoming(self, st: Stanza) -> None:
        to = st.to
        if to is None or to.local is None:
            return
        el = st.el
        bare = to.bare
        for i in range(len(el) - 1, -1, -1):
            c = el[i]
            if c.tag == _SID_TAG and c.get("by") == bare:
                sid = c.get("id", "")
                if self._rerouted and sid in self._rerouted:  # archived on an earlier trip
                    self._rerouted.discard(sid)
                    return
                frm = st.from_
                self._enqueue((to.domain, to.local), sid, frm.full if frm else None, el)
                return

    @hook("message-delivered")
    def delivered(self, st: Stanza, targets: Any) -> None:
        """Archive a message we stamped once it is delivered (once, whatever the number of targets)."""
        self._archive_incoming(st)  # (the module manager scopes it to our domains)

    @fold("delivery-failed", priority=-1000)
    def stored_offline(self, handled: Any, st: Stanza) -> Any:
        """After offline storage (XEP-0160) took the message: archive it too.  Passes the value on."""
        if handled is True:
            self._archive_incoming(st)
        return handled

    @hook("session-bound")
    async def session_bound(self, session: Any) -> None:
        """Load the user's preferences before they send or receive anything, so that the message
        path finds them in memory (it awaits storage only when they are missing)."""
        jid = session.jid
        if jid.local is not None:
            await self.prefs(jid.domain, jid.local)

    @hook("user-deleted")
    @hook("user-forgotten")  # deleted on another worker (issue 12)
    def user_deleted(self, host: str, user: str) -> None:
        key = (host, user)
        self._prefs.pop(key, None)
        self._sizes.pop(key, None)
        if key in self._batch_users:
            self._batch = [b for b in self._batch if (b[0], b[1]) != key]
            self._batch_users.discard(key)

    # -- queries (§4) -----------------------------------------------------------------------------
    def _own(self, st: Stanza) -> Key:
        to, frm = st.to, st.from_
        assert to is not None
        if to.local is None or frm is None or frm.bare != to.bare:
            raise StanzaError("forbidden", "only the account itself may use its archive")  # §8.1
        return to.domain, to.local

    @iq_handler("get", NS, "query", to="bare")
    def query_form(self, st: Stanza) -> Element:
        """§4.1.5: the fields a query may use."""
        key = self._own(st)
        q = Element(f"{{{NS}}}query")
        x = SubElement(q, _X, type="form")
        f = SubElement(x, _FIELD, var="FORM_TYPE", type="hidden")
        SubElement(f, _VALUE).text = NS
        SubElement(x, _FIELD, var="with", type="jid-single")
        SubElement(x, _FIELD, var="start", type="text-single")
        SubElement(x, _FIELD, var="end", type="text-single")
        SubElement(x, _FIELD, var="before-id", type="text-single")
        SubElement(x, _FIELD, var="after-id", type="text-single")
        ids = SubElement(x, _FIELD, var="ids", type="list-multi")
        v = SubElement(ids, "{http://jabber.org/protocol/xdata-validate}validate", datatype="xs:string")
        SubElement(v, "{http://jabber.org/protocol/xdata-validate}open")
        if self.ctx.options_for(key[0]).full_text:
            SubElement(x, _FIELD, var=FULLTEXT, type="text-single")
        return st.result(q)

    @iq_handler("set", NS, "query", to="bare")
    async def query(self, st: Stanza) -> Element:
        key = self._own(st)
        opts = self.ctx.options_for(key[0])
        q = parse_query(st.el[0], opts.full_text)
        await self._flush_for(key)
        limit = opts.max_page if q.max is None else min(q.max, opts.max_page)
        try:
            items, complete = await self._run(key, q, limit)
        except KeyError:
            raise StanzaError("item-not-found", "no such id in the archive") from None
        origin = st.origin
        to = st.from_
        assert to is not None
        sent = items[::-1] if q.flip else items
        for item in sent:
            msg = self._result(item, q.queryid, key, to.full)
            if msg is not None:
                if origin is not None:
                    self.ctx.sessions.deliver(origin, msg)
        fin = Element(f"{{{NS}}}fin")
        if complete:
            fin.set("complete", "true")
        rs = SubElement(fin, f"{{{RSM}}}set")
        if items:
            first = SubElement(rs, f"{{{RSM}}}first")
            first.text = items[0].id
            SubElement(rs, f"{{{RSM}}}last").text = items[-1].id
            whole = complete and q.after is None and q.before is None
            if whole and q.after_id is None and q.before_id is None:
                first.set("index", "0")
                SubElement(rs, f"{{{RSM}}}count").text = str(len(items))
        elif complete and q.after is None and q.before is None and q.after_id is None and q.before_id is None:
            SubElement(rs, f"{{{RSM}}}count").text = "0"
        return st.result(fin)

    async def _run(self, key: Key, q: Query, limit: int) -> tuple[list[ArchiveItem], bool]:
        host, user = key
        filters: dict[str, Any] = {"with_": q.with_, "start": q.start, "end": q.end}
        if q.text is not None:
            filters["text"] = q.text
        if q.ids is not None:
            found = []
            for i in dict.fromkeys(q.ids):
                item = await self.archive.get(host, user, i)
                if item is None:
                    raise KeyError(i)
                found.append(item)
            matching = sorted((i for i in found if _matches(i, q)), key=lambda i: i.when)
            return matching[:limit], len(matching) <= limit
        after, before = q.after or q.after_id, q.before or q.before_id
        for given, used in ((q.after_id, after), (q.before_id, before)):
            if given is not None and given != used and await self.archive.get(host, user, given) is None:
                raise KeyError(given)
        if limit == 0:
            probe = await self.archive.query(host, user, after=after, before=before, limit=1,
                                             reverse=q.backward, **filters)
            return [], not probe
        rows = await self.archive.query(host, user, after=after, before=before, limit=limit + 1,
                                        reverse=q.backward, **filters)
        complete = len(rows) <= limit
        rows = rows[:limit]
        if q.backward:
            rows.reverse()
        return rows, complete

    def _result(self, item: ArchiveItem, queryid: str | None, key: Key, to: str) -> Element | None:
        try:
            original = fromstring(f"<w xmlns='{ns.CLIENT}'>{item.value}</w>")[0]
        except (ParseError, IndexError):
            self.log.warning("unreadable archived message %s of %s@%s", item.id, key[1], key[0])
            return None
        msg = Element("message", {"to": to, "from": f"{key[1]}@{key[0]}", "id": _new_id()})
        r = SubElement(msg, f"{{{NS}}}result", {"id": item.id})
        if queryid is not None:
            r.set("queryid", queryid)
        fwd = SubElement(r, f"{{{FORWARD}}}forwarded")
        SubElement(fwd, f"{{{ns.DELAY}}}delay", stamp=format_datetime(item.when, fraction=True))
        fwd.append(original)
        return msg

    # -- metadata (§5) ------------------------------------------------------------------------------
    @iq_handler("get", NS, "metadata", to="bare")
    async def metadata(self, st: Stanza) -> Element:
        key = self._own(st)
        await self._flush_for(key)
        md = Element(f"{{{NS}}}metadata")
        first = await self.archive.query(*key, limit=1)
        if first:
            last = await self.archive.query(*key, limit=1, reverse=True)
            for tag, item in (("start", first[0]), ("end", last[0])):
                SubElement(md, f"{{{NS}}}{tag}", id=item.id, timestamp=format_datetime(item.when))
        return st.result(md)

    # -- preferences (XEP-0441 §2.1) ----------------------------------------------------------------
    @iq_handler("get", NS, "prefs", to="bare")
    async def prefs_get(self, st: Stanza) -> Element:
        key = self._own(st)
        return st.result(_prefs_element(await self.prefs(*key)))

    @iq_handler("set", NS, "prefs", to="bare")
    async def prefs_set(self, st: Stanza) -> Element:
        key = self._own(st)
        el = st.el[0]
        default = el.get("default")
        if default not in ("always", "never", "roster"):
            raise StanzaError("bad-request", "default must be always, never or roster")
        lists: dict[str, list[str]] = {"always": [], "never": []}
        for child in el:
            local = child.tag.rpartition("}")[2]
            if child.tag != f"{{{NS}}}{local}" or local not in lists:
                raise StanzaError("bad-request", f"unexpected element {child.tag} in <prefs/>")
            for j in child:
                if j.tag != f"{{{NS}}}jid":
                    raise StanzaError("bad-request", f"unexpected element {j.tag} in <{local}/>")
                try:
                    jid = JID.parse((j.text or "").strip()).full
                except InvalidJID:
                    raise StanzaError("jid-malformed", "not a JID in the preferences") from None
                if jid not in lists[local]:
                    lists[local].append(jid)
        p = Prefs(default, lists["always"], lists["never"])
        data = p.dumps()
        await self.prefs_store.set(key[0], key[1], data)
        self.ctx.sessions.broadcast(PREFS_CHANGED, key[0], key[1], data)  # other workers (issue 12)
        self._prefs[key] = p
        return st.result(_prefs_element(p))

    @hook(PREFS_CHANGED)
    def prefs_changed_elsewhere(self, host: str, user: str, data: str) -> None:
        """Another worker stored these preferences: the message path here uses them at once."""
        try:
            self._prefs[(host, user)] = Prefs.loads(data)
        except (ValueError, TypeError):
            self._prefs.pop((host, user), None)


def _matches(item: ArchiveItem, q: Query) -> bool:
    """The query's filters applied to one item (for ``ids``, §4.1.3)."""
    if q.start is not None and item.when < q.start:
        return False
    if q.end is not None and item.when > q.end:
        return False
    if q.with_ is not None:
        peer = item.with_ or ""
        if "/" in q.with_:
            return peer == q.with_
        return peer.partition("/")[0] == q.with_
    return True


def _prefs_element(p: Prefs) -> Element:
    el = Element(f"{{{NS}}}prefs", default=p.default)
    for name, jids in (("always", p.always), ("never", p.never)):
        lst = SubElement(el, f"{{{NS}}}{name}")
        for j in jids:
            SubElement(lst, f"{{{NS}}}jid").text = j
    return el


def _strip_ids(el: Element, by: str) -> None:
    """XEP-0359 §4 rule 2: remove stanza-ids claiming to be assigned by ``by``."""
    for c in el:
        if c.tag == _SID_TAG and c.get("by") == by:
            for d in [d for d in el if d.tag == _SID_TAG and d.get("by") == by]:
                el.remove(d)
            return


def _new_id() -> str:
    """An unpredictable id (XEP-0359 §4 rule 1): 96 random bits."""
    return secrets.token_urlsafe(12)
