"""XEP-0198: Stream Management (v1.6): acknowledgements and resumption of c2s streams.

- §3 "Stream Feature": ``<sm xmlns='urn:xmpp:sm:3'/>`` in the features of authenticated streams.
- §3 "Enabling Stream Management": ``<enable/>`` after resource binding is answered ``<enabled/>``
  (with an unguessable ``id``, ``resume='true'`` and ``max``, the resumption time in seconds, when
  the client asked for ``resume`` and ``[c2s] resume_timeout`` is not 0); before binding, or a second
  time, ``<failed><unexpected-request/></failed>``.
- §4 "Acks": both counters are 32-bit and wrap (§4: "2^32 - 1 ... MUST be reset to zero").  The
  inbound count is the session's ``stanzas_in`` (counted by the c2s stream) since ``<enable/>``; the
  outbound count and the stanzas not yet acknowledged are kept by an outbound filter that runs after
  every other one (what another filter drops is not counted).  Only ``message``, ``presence`` and
  ``iq`` count, never nonzas.  ``<r/>`` is answered at once; the server asks ``<r/>`` itself after
  ``request_ack_after`` unacknowledged stanzas.  An ``h`` that is not an unsigned 32-bit number is an
  ``<invalid-xml/>`` stream error (the schema's ``xs:unsignedInt``); one acknowledging more than was
  sent is §6's ``<undefined-condition/>`` stream error with ``<handled-count-too-high/>``.
- §5 "Resumption": when the connection of a resumable session is *lost* (not closed by either side),
  the session stays registered and available, detached from any stream (``session-stream-lost``
  fold), for ``max`` seconds; what is routed to it meanwhile is counted and kept like everything
  else.  ``<resume previd h/>`` on a new stream authenticated as the same account (before binding)
  takes the session over: ``<resumed previd h/>`` then exactly the stanzas ``h`` did not acknowledge,
  in order.  An old stream still attached is closed with ``<conflict/>`` first.  An unknown or expired
  id, or another account's, is ``<failed><item-not-found/></failed>``.
- §4 (end): when a session with stream management ends (not resumed in time, closed, replaced), its
  unacknowledged stanzas are treated as sent to an unavailable resource: messages are routed again
  (another resource of the account, else offline storage) with a XEP-0203 delay stamp of their first
  delivery time (except messages to the bare JID that an available resource of at least the same
  priority received too: RFC 6121 §8.5.2.1.1 gave it its own copy), iq requests are routed again (the router answers their sender with an error), the
  rest (presence, iq results) is dropped.  Nothing acknowledged is re-sent, nothing unacknowledged is
  lost.
- Acknowledgement tracking for other modules (the ``smacks`` service): ``tracker(session)`` is the
  session's ``SMState`` (None without stream management); ``tracker.out`` is the position of the
  last stanza sent, ``tracker.is_acked(pos)`` whether the client acknowledged it, ``await
  wait_acked(session, tracker, pos, timeout)`` asks ``<r/>`` and waits (True once acknowledged; False on
  timeout or when the session ends first), ``tracker.stored_elsewhere(pos)`` marks a stanza that is
  still kept elsewhere (offline storage, issue F5): not routed again when the session ends
  unacknowledged.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any
from xml.etree.ElementTree import Element

from pydantic import Field

from ..jid import JID, InvalidJID
from ..module import Module, Options, element_handler, fold, hook
from ..routing.registry import PUBLISHED
from ..xml import ns
from ..xml.parser import parse_fragment
from ..xml.serializer import serialize
from .time import format_datetime

NS = "urn:xmpp:sm:3"
STANZA_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAM_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
KEY = "smacks"
MASK = 0xFFFFFFFF  # §4: h is an unsigned 32-bit integer and wraps to zero
_STANZAS = frozenset(("message", "presence", "iq", "{jabber:client}message", "{jabber:client}presence",
                      "{jabber:client}iq"))
_DELAY = f"{{{ns.DELAY}}}delay"
#: published ``ext`` key: the SM-ID of a resumable session (a worker that gets ``<resume/>`` finds the
#: holder of a session in the directory by it: issue 12)
ID_KEY = "smacks.id"
#: cluster call: give up a detached session to the worker where the client resumes it
HANDOVER = "smacks.handover"
#: seconds the resuming worker waits for the holder's answer
HANDOVER_TIMEOUT = 5.0
#: seconds before that timeout after which the holder no longer gives a session up
HANDOVER_MARGIN = 1.0


# -- §4 counter arithmetic (pure) -----------------------------------------------------------------
def inc(counter: int, n: int = 1) -> int:
    """``counter + n`` modulo 2^32 (§4: after 2^32 - 1 comes 0)."""
    return (counter + n) & MASK


def newly_acked(h: int, acked: int) -> int:
    """How many stanzas an ``h`` acknowledges beyond the last acknowledged count ``acked``,
    modulo 2^32 (so that an ``h`` that wrapped past zero still counts right)."""
    return (h - acked) & MASK


def parse_h(value: str | None) -> int | None:
    """An ``h`` attribute (``xs:unsignedInt``), or None when it is missing or not one."""
    if value is None:
        return None
    v = value.strip()
    if not v.isdigit() or not v.isascii():
        return None
    n = int(v)
    return n if n <= MASK else None


class SMState:
    """One session's stream management state (kept in ``session.ext["smacks"]``)."""

    __slots__ = ("id", "max", "base_in", "out", "acked", "unacked", "r_pending", "overflow", "taking_over",
                 "timer", "request_after", "max_unacked", "waiters", "keep")

    def __init__(self, base_in: int, request_after: int, max_unacked: int) -> None:
        self.id: str | None = None  # the SM-ID when resumable
        self.max = 0  # resumption time, seconds
        self.base_in = base_in  # session.stanzas_in at <enable/>
        self.out = 0  # stanzas sent, mod 2^32
        self.acked = 0  # the last h the client acknowledged, mod 2^32
        #: sent and not acknowledged yet, oldest first: (element, time of first delivery)
        self.unacked: deque[tuple[Element, float]] = deque()
        self.r_pending = False
        self.overflow = False
        self.taking_over = False  # a <resume/> is closing the old stream of the session
        self.timer: asyncio.TimerHandle | None = None
        self.request_after = request_after
        self.max_unacked = max_unacked
        #: (position, future) of modules waiting for an acknowledgement (``wait_acked``)
        self.waiters: list[tuple[int, asyncio.Future[bool]]] = []
        #: positions of unacknowledged stanzas kept elsewhere: not routed again at the end
        self.keep: set[int] = set()

    def is_acked(self, pos: int) -> bool:
        """Whether the stanza sent at position ``pos`` (a past value of ``out``) was acknowledged."""
        return ((self.out - pos) & MASK) >= ((self.out - self.acked) & MASK)

    def stored_elsewhere(self, pos: int) -> None:
        """The stanza at ``pos`` is still kept elsewhere: when unacknowledged at the end, it is not
        routed again (it would be there twice)."""
        if not self.is_acked(pos):
            self.keep.add(pos)

    def _wake(self, result: bool | None = None) -> None:
        """Resolve the waiters whose position is acknowledged (or, with ``result``, all of them)."""
        if not self.waiters:
            return
        left = []
        for pos, fut in self.waiters:
            if fut.done():
                continue
            if result is not None:
                fut.set_result(result)
            elif self.is_acked(pos):
                fut.set_result(True)
            else:
                left.append((pos, fut))
        self.waiters = left

    def h_in(self, session: Any) -> int:
        return (session.stanzas_in - self.base_in) & MASK

    def ack(self, h: int) -> bool:
        """Apply an acknowledgement; False when ``h`` acknowledges more than was sent."""
        n = newly_acked(h, self.acked)
        q = self.unacked
        if n > len(q):
            return False
        if n == len(q):
            q.clear()  # everything sent was acknowledged: the usual case
        else:
            for _ in range(n):
                q.popleft()
        if self.keep:
            self.keep = {p for p in self.keep if ((self.out - p) & MASK) < ((self.out - h) & MASK)}
        self.acked = h
        self.r_pending = False
        self._wake()
        return True


class StreamManagementOptions(Options):
    #: the server sends <r/> once this many stanzas wait for an acknowledgement
    request_ack_after: int = Field(5, ge=1)
    #: a session with more unacknowledged stanzas than this is ended (they are re-routed)
    max_unacked_stanzas: int = Field(10000, ge=1)


def _failed(condition: str, h: int | None = None) -> Element:
    f = Element(f"{{{NS}}}failed")
    if h is not None:
        f.set("h", str(h))
    f.append(Element(f"{{{STANZA_ERR}}}{condition}"))
    return f


class StreamManagement(Module):
    """XEP-0198 acks and resumption; see the module docstring for the rules."""

    name = "smacks"
    provides = ["smacks"]
    Options = StreamManagementOptions

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        #: SM-ID -> resumable session (until it ends)
        self._by_id: dict[str, Any] = {}
        #: sessions with stream management enabled; the outbound filter is installed only while
        #: there are some (the message path of clients without it pays nothing)
        self._enabled = 0
        self._filter: Any = None

    async def start(self) -> None:
        self.ctx.sessions.serve(HANDOVER, self._give_up)

    async def stop(self) -> None:
        self.ctx.sessions.serve(HANDOVER, None)
        # detached sessions cannot be resumed without us: end them (their stanzas are re-routed)
        for session in list(self._by_id.values()):
            if session.stream is None and not session.ended:
                self.ctx.sessions.close(session)
        for session in list(self._by_id.values()):
            st = session.ext.get(KEY)
            if st is not None and st.timer is not None:
                st.timer.cancel()
        self._by_id.clear()

    # -- the smacks service: acknowledgements for other modules ----------------------------------
    @staticmethod
    def tracker(session: Any) -> SMState | None:
        """The session's stream management state (None when not enabled)."""
        st = session.ext.get(KEY)
        return st if isinstance(st, SMState) else None

    async def wait_acked(self, session: Any, st: SMState, pos: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the client acknowledged the stanza at ``pos``;
        asks with ``<r/>``.  False on timeout or when the session ended first."""
        if st.is_acked(pos):
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        st.waiters.append((pos, fut))
        if session.ext.get(KEY) is not st:
            return False  # the session ended (its state is gone)
        if not st.r_pending:
            st.r_pending = True
            self._request_ack(session)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return False
        finally:
            st.waiters = [(p, f) for p, f in st.waiters if f is not fut]

    # -- §3 feature ----------------------------------------------------------------------------
    @fold("stream-features")
    def feature(self, features: Element, stream: Any) -> Element:
        features.append(Element(f"{{{NS}}}sm"))
        return features

    # -- §3 enable -----------------------------------------------------------------------------
    @element_handler(f"{{{NS}}}enable")
    def on_enable(self, stream: Any, el: Element) -> None:
        session = stream.session
        if session is None or KEY in session.ext:
            # before binding (§3 "MUST NOT ... until after it has completed Resource Binding"), or twice
            stream.send(_failed("unexpected-request"))
            return
        opts = self.ctx.options_for(session.jid.domain)
        st = SMState(session.stanzas_in, opts.request_ack_after, opts.max_unacked_stanzas)
        reply = Element(f"{{{NS}}}enabled")
        timeout = float(getattr(stream.settings, "resume_timeout", 300.0))
        if el.get("resume") in ("true", "1") and timeout > 0:
            mx = max(1, int(timeout))
            asked = parse_h(el.get("max"))  # the client's preferred maximum (§3), honoured when lower
            if asked is not None and 0 < asked < mx:
                mx = asked
            st.id = secrets.token_urlsafe(24)
            st.max = mx
            self._by_id[st.id] = session
            if self.ctx.sessions.peers():
                self.ctx.sessions.publish(session, ID_KEY, st.id)  # found from any worker (issue 12)
            reply.set("id", st.id)
            reply.set("resume", "true")
            reply.set("max", str(mx))
        session.ext[KEY] = st
        self._counting()
        stream.send(reply)

    def _counting(self) -> None:
        self._enabled += 1
        if self._filter is None:
            self._filter = self.ctx.filter(self.count, priority=-1000)

    def _not_counting(self) -> None:
        self._enabled -= 1
        if self._enabled <= 0 and self._filter is not None:
            h, self._filter, self._enabled = self._filter, None, 0
            h.remove()
            if h in self.ctx.handles:
                self.ctx.handles.remove(h)

    # -- §4 acks -------------------------------------------------------------------------------
    @staticmethod
    def _enabled_on(stream: Any) -> Any:
        """The stream's session's SM state; without one, the stream error of §4 (and None)."""
        session = stream.session
        st = session.ext.get(KEY) if session is not None else None
        if st is None:
            stream.stream_error("unsupported-stanza-type", "stream management is not enabled")
        return st

    @element_handler(f"{{{NS}}}r")
    def on_r(self, stream: Any, el: Element) -> None:
        st = self._enabled_on(stream)
        if st is not None:
            stream.send(Element(f"{{{NS}}}a", h=str(st.h_in(stream.session))))

    @element_handler(f"{{{NS}}}a")
    def on_a(self, stream: Any, el: Element) -> None:
        st = self._enabled_on(stream)
        if st is None:
            return
        h = parse_h(el.get("h"))
        if h is None:
            stream.stream_error("invalid-xml", "'h' must be an unsigned 32-bit integer")
            return
        if not st.ack(h):
            self._too_high(stream, h, st)

    def _too_high(self, stream: Any, h: int, st: SMState) -> None:
        """§6: ``<undefined-condition/>`` with ``<handled-count-too-high h send-count/>``."""
        err = Element(f"{{{ns.STREAM}}}error")
        err.append(Element(f"{{{STREAM_ERR}}}undefined-condition"))
        err.append(Element(f"{{{NS}}}handled-count-too-high", {"h": str(h), "send-count": str(st.out)}))
        t = Element(f"{{{STREAM_ERR}}}text")
        t.text = f"You acknowledged {h} stanzas, but I only sent you {st.out} so far."
        err.append(t)
        stream.send(err)
        stream.close()

    # -- counting what goes out ----------------------------------------------------------------
    def count(self, session: Any, el: Element) -> Element:
        """The outbound filter (installed while some session has stream management enabled), run
        last of all filters: counts and keeps every stanza that goes out."""
        st = session.ext.get(KEY)
        if st is None or el.tag not in _STANZAS:
            return el
        st.out = (st.out + 1) & MASK
        q = st.unacked
        q.append((el, time.time()))
        n = len(q)
        if n >= st.request_after and not st.r_pending:
            st.r_pending = True
            asyncio.get_running_loop().call_soon(self._request_ack, session)
        if n > st.max_unacked and not st.overflow:
            st.overflow = True
            asyncio.get_running_loop().call_soon(self._overflow, session)
        return el

    def _request_ack(self, session: Any) -> None:
        s = session.stream
        if s is not None and not s.closed:
            s.send(Element(f"{{{NS}}}r"))
        # detached: r_pending stays set; <resume/> asks again after the replay

    def _overflow(self, session: Any) -> None:
        if not session.ended:
            self.log.info("%s: too many unacknowledged stanzas, ending the session", session.jid)
            self.ctx.sessions.close(session, "policy-violation", "too many unacknowledged stanzas")

    # -- §5 resumption -------------------------------------------------------------------------
    @fold("session-stream-lost")
    def keep_detached(self, keep: bool, session: Any) -> bool:
        """Keep a resumable session whose connection was lost (not closed) for ``max`` seconds."""
        st = session.ext.get(KEY)
        if keep is True or st is None or st.id is None or st.overflow:
            return keep
        stream = session.stream
        if not (st.taking_over or getattr(stream, "lost", False)):
            return keep  # a closing handshake or a stream error: the session ends (§5 is for outages)
        if self.ctx.sessions.get(session.jid) is not session:
            return keep  # replaced by a new session with its full JID (RFC 6120 §7.7.2.2)
        if st.timer is not None:
            st.timer.cancel()
        st.timer = asyncio.get_running_loop().call_later(st.max, self._expire, session)
        return True

    def _expire(self, session: Any) -> None:
        st = session.ext.get(KEY)
        if st is not None:
            st.timer = None
        if session.stream is None and not session.ended:
            self.ctx.sessions.close(session)  # ends it: session-ended re-routes what was not acked

    @element_handler(f"{{{NS}}}resume")
    def on_resume(self, stream: Any, el: Element) -> None:
        if not stream.authenticated or stream.session is not None:
            stream.send(_failed("unexpected-request"))  # §5: after authentication, instead of binding
            return
        h = parse_h(el.get("h"))
        if h is None:
            stream.send(_failed("bad-request"))
            return
        previd = el.get("previd") or ""
        session = self._by_id.get(previd)
        if session is None and previd and self.ctx.sessions.peers():
            return self._resume_from_elsewhere(stream, previd, h)  # type: ignore[return-value]
        if (session is None or session.ended or session.jid.local != stream.username
                or session.jid.domain != stream.local_domain):
            # unknown, expired, or another account's: the same answer, nothing to learn from it
            stream.send(_failed("item-not-found"))
            return
        st = session.ext.get(KEY)
        if st is None:
            stream.send(_failed("item-not-found"))
            return
        if newly_acked(h, st.acked) > len(st.unacked):
            self._too_high(stream, h, st)
            return
        if not self._take_over(session, st):
            stream.send(_failed("item-not-found"))
            return
        # what waited in the session queue is also in ``unacked``: sent once, from there, below
        kept = {id(e) for e, _ in st.unacked}
        extra = [e for e in session.take_queue() if id(e) not in kept]
        self._resumed(stream, session, st, h, extra)

    @staticmethod
    def _take_over(session: Any, st: SMState) -> bool:
        """Detach the session from a stream that still carries it; False when that ended it."""
        old = session.stream
        if old is not None:
            # §5: "the server SHOULD send a 'conflict' stream error and close that stream"
            st.taking_over = True
            try:
                session.close("conflict", "the session was resumed on another connection")
            finally:
                st.taking_over = False
            if session.stream is not None or session.ended:
                return False
        return True

    def _resumed(self, stream: Any, session: Any, st: SMState, h: int, extra: list[Element]) -> None:
        """§5: ``<resumed/>``, then what ``h`` did not acknowledge, then what waited besides."""
        st.ack(h)
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        st.r_pending = False
        stream.send(Element(f"{{{NS}}}resumed", h=str(st.h_in(session)), previd=st.id or ""))
        stream.resume(session)
        for e, _ in st.unacked:
            stream.send(e)
        for e in extra:
            session.send(e)
        if st.unacked:
            st.r_pending = True
            stream.send(Element(f"{{{NS}}}r"))

    # -- §5 resumption on another worker (issue 12) ----------------------------------------------
    def _give_up(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """The holder's side of a hand-over: the detached (or still attached: closed with
        ``<conflict/>``) session ``req["id"]`` of ``req["user"]@req["domain"]`` leaves this worker
        without ending — no ``session-ended``: its presence, rooms and unacknowledged stanzas go on
        elsewhere — and its state is the answer (None: no such session here)."""
        if time.time() > float(req.get("until", 0) or 0):
            return None  # the resuming worker stops waiting before the answer could reach it
        session: Any = self._by_id.get(str(req.get("id", "")))
        if (session is None or session.ended or session.jid.local != req.get("user")
                or session.jid.domain != req.get("domain")):
            return None
        st = session.ext.get(KEY)
        if st is None or st.overflow or not self._take_over(session, st):
            return None
        # modules let go of it, and give it what they hold back (CSI): counted and kept below
        r = self.ctx.fire("session-handed-over", session)
        if r is not None:
            self.ctx.spawn(r)
        kept = {id(e) for e, _ in st.unacked}
        extra = [serialize(e) for e in session.take_queue() if id(e) not in kept]
        ext = session.ext
        published = {k: ext[k] for k in ext.get(PUBLISHED, ()) if k in ext}
        pres = session.presence
        state = {
            "jid": session.jid.full, "priority": session.priority, "available": session.available,
            "interested": session.interested, "presence": serialize(pres) if pres is not None else None,
            "ext": published, "directed": sorted(ext.get("presence.directed") or ()),
            "id": st.id, "max": st.max, "h_in": st.h_in(session), "out": st.out, "acked": st.acked,
            "unacked": [[serialize(e), when] for e, when in st.unacked], "keep": sorted(st.keep),
            "extra": extra,
        }
        # forget it here, with no side effect: the resuming worker announces it as moved
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        del ext[KEY]
        if st.id is not None and self._by_id.get(st.id) is session:
            del self._by_id[st.id]
        self._not_counting()
        st.unacked.clear()
        st._wake(False)
        session.ended = True
        self.ctx.sessions.remove(session, moved=True)
        self.log.info("%s: handed over for resumption on another worker", session.jid)
        return state

    async def _resume_from_elsewhere(self, stream: Any, previd: str, h: int) -> None:
        """The resuming side: find the worker that holds ``previd`` (its published SM-ID), ask it to
        give the session up, and resume it here; ``<failed><item-not-found/>`` when that fails."""
        sessions = self.ctx.sessions
        bare = f"{stream.username}@{stream.local_domain}"
        holder = next((r for r in sessions.resources(bare).values()
                       if r.where != "local" and r.ext.get(ID_KEY) == previd), None)
        state = None
        if holder is not None:
            try:
                state = await sessions.call(holder.worker, HANDOVER,  # type: ignore[attr-defined]
                                            {"id": previd, "user": stream.username, "domain": stream.local_domain,
                                             # a late holder keeps the session rather than give it up
                                             # into a call that timed out (its stanzas would be lost)
                                             "until": time.time() + HANDOVER_TIMEOUT - HANDOVER_MARGIN},
                                            timeout=HANDOVER_TIMEOUT)
            except (TimeoutError, ConnectionError, RuntimeError) as err:
                self.log.warning("resumption of a session of %s on %s failed: %s", bare, holder.where, err)
        if not state:
            if not stream.closed:
                stream.send(_failed("item-not-found"))
            return
        try:
            session, st, extra = self._adopt(stream, state)
        except (ValueError, InvalidJID, KeyError, TypeError):
            self.log.exception("a handed-over session of %s could not be restored", bare)
            if not stream.closed:
                stream.send(_failed("item-not-found"))
            return
        if stream.closed or stream.session is not None:
            # the client went away meanwhile: the session ends here as if never resumed (its
            # unacknowledged stanzas are routed again: nothing is lost)
            for e in extra:
                session.send(e)
            sessions.close(session)
            return
        if newly_acked(h, st.acked) > len(st.unacked):
            for e in extra:
                session.send(e)
            self._too_high(stream, h, st)
            sessions.close(session)
            return
        kept = {id(e) for e, _ in st.unacked}
        extra += [e for e in session.take_queue() if id(e) not in kept]
        self._resumed(stream, session, st, h, extra)

    def _adopt(self, stream: Any, state: dict[str, Any]) -> tuple[Any, SMState, list[Element]]:
        jid = JID.parse(state["jid"])
        opts = self.ctx.options_for(jid.domain)
        st = SMState(0, opts.request_ack_after, opts.max_unacked_stanzas)
        st.base_in = (-int(state["h_in"])) & MASK  # the new session counts from 0: h_in carries on
        st.id, st.max = state["id"], int(state["max"])
        st.out, st.acked = int(state["out"]) & MASK, int(state["acked"]) & MASK
        st.unacked.extend((parse_fragment(x), float(when)) for x, when in state["unacked"])
        st.keep = {int(p) for p in state["keep"]}
        extra = [parse_fragment(x) for x in state["extra"]]
        published = dict(state["ext"])
        ext: dict[str, Any] = dict(published)
        ext[PUBLISHED] = set(published)
        if state["directed"]:
            ext["presence.directed"] = set(state["directed"])
        ext[KEY] = st
        pres = state["presence"]
        routing = {"priority": int(state["priority"]), "available": bool(state["available"]),
                   "interested": bool(state["interested"]),
                   "presence": parse_fragment(pres) if pres else None}
        self._counting()
        try:
            session = stream.host.adopt(stream, jid, routing, ext)
        except Exception:
            self._not_counting()
            raise
        if st.id is not None:
            self._by_id[st.id] = session
        return session, st, extra

    # -- the end of a session: what was not acknowledged goes elsewhere -------------------------
    @hook("session-ended")
    def ended(self, session: Any) -> None:
        st = session.ext.pop(KEY, None)
        if st is None:
            return
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if st.id is not None and self._by_id.get(st.id) is session:
            del self._by_id[st.id]
        self._not_counting()
        unacked = list(st.unacked)
        st.unacked.clear()
        st._wake(False)
        if not unacked:
            return
        kept = {id(e) for e, _ in unacked}
        extra = [e for e in session.take_queue() if id(e) not in kept]
        first = (st.acked + 1) & MASK  # the position of unacked[0]
        for i, (e, when) in enumerate(unacked):
            if st.keep and ((first + i) & MASK) in st.keep:
                continue  # still stored elsewhere (offline storage): not a second copy
            self._reroute(session, e, when)
        for e in extra:
            self._spawn(self.ctx.router.send(e))

    def _reroute(self, session: Any, el: Element, when: float) -> None:
        """§4: as if sent to an unavailable resource (RFC 6121 §8.5.3.2.1), delay-stamped."""
        tag = el.tag.rpartition("}")[2]
        if tag == "message":
            if self._delivered_elsewhere(session, el):
                return
            out = copy.deepcopy(el)
            domain = session.jid.domain
            if not any(c.tag == _DELAY and c.get("from") == domain for c in out):
                d = Element(_DELAY, {"from": domain, "stamp": format_datetime(when, fraction=True)})
                out.append(d)
        elif tag == "iq" and el.get("type") in ("get", "set"):
            out = copy.deepcopy(el)  # the router answers its sender: the resource is gone
        else:
            return  # presence (state is sent again on the next login), iq results and errors
        self._spawn(self.ctx.router.send(out))

    def _delivered_elsewhere(self, session: Any, el: Element) -> bool:
        """A message to the bare JID went to every resource of the highest priority (RFC 6121
        §8.5.2.1.1; headlines to every non-negative one): an available resource at least as high
        as this one had its own copy, so routing it again would duplicate it there."""
        to = el.get("to", "")
        if "/" in to:
            return False
        floor = 0 if el.get("type") == "headline" else max(session.priority, 0)
        return any(r is not session and r.available and r.priority >= floor
                   for r in self.ctx.sessions.resources(session.jid.bare).values())

    def _spawn(self, r: Awaitable[Any] | None) -> None:
        if r is not None:
            self.ctx.spawn(r)
