"""``ClusterSessionRegistry``: local sessions and the directory of the other workers' as one registry
(``routing.registry.SessionRegistry``; issue 12).

* ``get``/``resources``/``all`` see every worker's sessions, so the RFC 6121 §8 delivery rules
  (priorities, bare-JID fan-out, presence broadcast) pick targets exactly as in one process;
* ``deliver`` to a ``RemoteSession`` writes one frame on the link to its worker, which hands the
  stanza to the session there (its outbound filters, its XEP-0198 queue) — frames between two workers
  stay in order, so one sender's stanzas are never reordered;
* ``add``/``update``/``publish``/``remove`` of a local session announce it to every worker;
  a full JID bound on two workers keeps the later bind (RFC 6120 §7.7.2.2: the older session gets
  ``<conflict/>``), decided the same way on both sides by the bind order;
* a worker that dies (its link closes) is forgotten at once: ``on_lost`` is told which sessions went
  with it (their contacts get unavailable presence from one surviving worker).

Frame types on the link: ``A`` session state (JSON), ``D`` session gone, ``S`` stanza for a session
there, ``R`` stanza to route there (a service's home worker), ``C`` close a session, ``E`` event, ``Q``/``P``
request/response of an RPC (``call``: e.g. the XEP-0198 hand-over of a detached session).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from ..jid import JID, InvalidJID
from ..routing.registry import PUBLISHED, LocalSessionRegistry, SessionRef, addressed
from ..xml.parser import parse_fragment
from ..xml.serializer import serialize
from .directory import Directory, RemoteSession
from .link import Mesh

log = logging.getLogger(__name__)

A, D, S, R, C, E, Q, P = (ord(c) for c in "ADSRCEQP")
#: bind order of a local session (``ext``)
SEQ = "cluster.seq"
#: what other workers see of a session's ``auth`` (``rookery sessions``)
_AUTH_SHOWN = ("ip", "mechanism", "tls", "secure")
#: the call ``broadcast_wait`` makes on each worker: fire an event, answer once it is handled
EVENT = "cluster.event"


def _nothing(*_: Any) -> None:
    return None


class ClusterSessionRegistry:
    """The registry of one worker among ``count``."""

    def __init__(self, local: LocalSessionRegistry, index: int, count: int, sockets: Path) -> None:
        self.local = local
        self.index = index
        self.workers = count
        self.directory = Directory()
        self.mesh = Mesh(index, count, sockets, self)
        #: set by the server: a stanza for a local session that is gone (re-route it)
        self.undeliverable: Callable[[Element], None] = _nothing
        #: set by the server: route a stanza here (this worker is the home of its destination)
        self.route_here: Callable[[Element], None] = _nothing
        #: set by the server: close (and with ``end``, end at once) a local session
        self.close_local: Callable[[Any, str | None, str | None, bool], None] = _nothing
        #: set by the server: sessions of a worker that died; ``designated``: this worker speaks for them
        self.on_lost: Callable[[list[RemoteSession], bool], None] = _nothing
        #: set by the server: a cluster event (``broadcast``) from another worker; may return an
        #: awaitable (``broadcast_wait`` waits for it)
        self.on_event: Callable[[str, list[Any]], Any] = _nothing
        #: set by the server: another worker's session was announced (``gone``: False) or is gone (True)
        self.on_remote: Callable[[RemoteSession, bool], None] = _nothing
        #: RPC handlers (``call`` from another worker): name -> fn(payload) -> reply (JSON), or awaitable
        self.rpc_handlers: dict[str, Callable[[Any], Any]] = {EVENT: self._event_call}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count(1)
        self._replying: set[asyncio.Future[None]] = set()
        self._bind_clock = 0.0
        #: set when this worker stops (a peer that goes meanwhile is stopping too)
        self.stopping = False

    @property
    def on_detached_close(self) -> Any:
        return self.local.on_detached_close

    @on_detached_close.setter
    def on_detached_close(self, fn: Any) -> None:
        self.local.on_detached_close = fn

    async def start(self) -> None:
        await self.mesh.start()

    async def shutdown(self) -> None:
        await self.mesh.close()

    # -- announcements -------------------------------------------------------------------------
    def _state(self, s: Any, moved: bool = False) -> bytes:
        pres = s.presence
        ext = s.ext
        published = {k: ext[k] for k in ext.get(PUBLISHED, ()) if k in ext}
        d = {
            "j": s.jid.full, "p": s.priority, "a": s.available, "i": s.interested,
            "x": serialize(pres) if pres is not None else None, "e": published, "t": s.ext.get(SEQ),
            # for operators (``rookery sessions``): how it authenticated, from where
            "u": {k: v for k, v in getattr(s, "auth", {}).items() if k in _AUTH_SHOWN},
        }
        if moved:
            d["m"] = True
        return json.dumps(d, separators=(",", ":")).encode()

    def _announce(self, s: Any, moved: bool = False) -> None:
        self.mesh.broadcast(A, self._state(s, moved))

    def peer_up(self, peer: int) -> None:
        """A worker connected (started, or restarted): it gets every local session."""
        for s in self.local.all():
            self.mesh.send(peer, A, self._state(s))

    def peer_down(self, peer: int) -> None:
        lost = self.directory.drop_worker(peer)
        if self.stopping:  # the whole server stops: nobody is left to tell
            lost = []
        alive = [i for i in self.mesh.alive() if i != peer]
        designated = bool(alive) and alive[0] == self.index
        if lost:
            log.warning("worker %d is gone with %d session(s)%s", peer, len(lost),
                        ": this worker announces their end" if designated else "")
        for ref in lost:
            self.on_remote(ref, True)
        for fut in list(self._calls.values()):  # calls to that worker will not be answered
            if getattr(fut, "worker", None) == peer and not fut.done():
                fut.set_exception(ConnectionError(f"worker {peer} is gone"))
        self.on_lost(lost, designated)

    # -- SessionRegistry -----------------------------------------------------------------------
    def add(self, session: Any, moved: bool = False) -> SessionRef | None:
        """``moved``: the session continues here from another worker (XEP-0198 hand-over): the entry
        it replaces is not a session that ended (no ``session-gone`` for it, here or elsewhere)."""
        now = time.time()
        self._bind_clock = max(now, self._bind_clock + 1e-6)  # strictly increasing here
        session.ext[SEQ] = [self._bind_clock, self.index]
        old = self.local.add(session)
        jid = session.jid
        other = self.directory.get(jid)
        if other is not None:
            # the same full JID on another worker: ours is the later bind; that worker closes its
            # session when our announcement reaches it (the same rule runs there)
            self.directory.remove(jid, other.worker)
            if not moved:
                self.on_remote(other, True)
        self._announce(session, moved)
        return old

    def remove(self, ref: SessionRef, moved: bool = False) -> bool:
        """``moved``: handed over to another worker, whose announcement replaces it everywhere (no ``D``)."""
        if isinstance(ref, RemoteSession):
            return False
        if self.local.remove(ref):
            if not moved:
                self.mesh.broadcast(D, ref.jid.full.encode())
            return True
        return False

    def get(self, jid: JID) -> SessionRef | None:
        s = self.local.get(jid)
        if s is not None:
            return s
        return self.directory.get(jid)

    def resources(self, bare: str) -> dict[str, SessionRef]:
        here = self.local.resources(bare)
        there = self.directory.by_bare.get(bare)
        if not there:
            return here
        if not here:
            return there  # type: ignore[return-value]
        out: dict[str, SessionRef] = dict(there)
        out.update(here)
        return out

    def count(self) -> int:
        return self.local.count() + self.directory.count()

    def all(self) -> list[SessionRef]:
        return self.local.all() + self.directory.all()  # type: ignore[operator]

    def local_all(self) -> list[SessionRef]:
        return self.local.all()

    def update(self, ref: SessionRef, **state: Any) -> None:
        """A remote ref changes only here (the session of a dead worker being ended for it): its
        holder is the one that announces."""
        self.local.update(ref, **state)
        if not isinstance(ref, RemoteSession):
            self._announce(ref)

    def publish(self, ref: SessionRef, key: str, value: Any) -> None:
        self.local.publish(ref, key, value)
        if not isinstance(ref, RemoteSession):
            self._announce(ref)

    def broadcast(self, name: str, *args: Any) -> None:
        self.mesh.broadcast(E, json.dumps([name, list(args)], separators=(",", ":")).encode())

    async def broadcast_wait(self, name: str, *args: Any, timeout: float = 15.0) -> list[int]:
        """``broadcast``, then wait until every connected worker has handled the event (awaited what
        its handler returned): what an operator's command (``reload``, ``cert import``) must see done
        everywhere before it answers.  A call (``EVENT``) per worker; returns the workers that did not
        answer in time or failed."""
        peers = self.peers()
        results = await asyncio.gather(*(self.call(p, EVENT, [name, list(args)], timeout) for p in peers),
                                       return_exceptions=True)
        return [p for p, r in zip(peers, results, strict=True) if isinstance(r, BaseException)]

    async def _event_call(self, payload: Any) -> None:
        r = self.on_event(str(payload[0]), list(payload[1]))
        if inspect.isawaitable(r):
            await r

    def deliver(self, ref: SessionRef, el: Element) -> None:
        if ref.__class__ is RemoteSession:
            self.mesh.send(ref.worker, S, ref.jid.full.encode() + b"\n" + serialize(el).encode())  # type: ignore[attr-defined]
        else:
            ref.send(el)  # type: ignore[attr-defined]

    def deliver_many(self, refs: list[SessionRef], el: Element) -> None:
        here = [r for r in refs if r.__class__ is not RemoteSession]
        if len(here) != len(refs):
            data = serialize(el).encode()
            for r in refs:
                if r.__class__ is RemoteSession:
                    self.mesh.send(r.worker, S, r.jid.full.encode() + b"\n" + data)  # type: ignore[attr-defined]
        if here:
            self.local.deliver_many(here, el)

    def deliver_each(self, targets: list[tuple[SessionRef, str]], el: Element) -> None:
        here = [t for t in targets if t[0].__class__ is not RemoteSession]
        if len(here) != len(targets):
            for r, to in targets:
                if r.__class__ is RemoteSession:
                    self.mesh.send(r.worker, S,  # type: ignore[attr-defined]
                                   r.jid.full.encode() + b"\n" + serialize(addressed(el, to)).encode())
        if here:
            self.local.deliver_each(here, el)

    def close(self, ref: SessionRef, condition: str | None = None, text: str | None = None,
              end: bool = False) -> None:
        if isinstance(ref, RemoteSession):
            self.mesh.send(ref.worker, C, json.dumps({"j": ref.jid.full, "c": condition, "t": text, "e": end}).encode())
        else:
            self.local.close(ref, condition, text)

    def route_to(self, worker: int, el: Element) -> None:
        """Route ``el`` on ``worker`` (the home of its destination: services, components)."""
        self.mesh.send(worker, R, serialize(el).encode())

    # -- frames from other workers -----------------------------------------------------------------
    def frame(self, peer: int, ftype: int, payload: bytes) -> None:
        if ftype == S:
            full, _, data = payload.partition(b"\n")
            s: Any = self.local.get(JID.parse(full.decode()))
            if s is None:
                self.undeliverable(parse_fragment(data))
            elif s.attached and not self.local.filtering:
                s.send_data(data.decode())  # written as serialized there: no parse, no serialization
            else:
                s.send(parse_fragment(data))
        elif ftype == R:
            self.route_here(parse_fragment(payload))
        elif ftype == A:
            self._state_from(peer, json.loads(payload))
        elif ftype == D:
            try:
                gone = self.directory.remove(JID.parse(payload.decode()), peer)
            except InvalidJID:
                gone = None
            if gone is not None:
                self.on_remote(gone, True)
        elif ftype == Q:
            self._answer(peer, json.loads(payload))
        elif ftype == P:
            self._answered(json.loads(payload))
        elif ftype == C:
            req = json.loads(payload)
            s = self.local.get(JID.parse(req["j"]))
            if s is not None:
                self.close_local(s, req.get("c"), req.get("t"), bool(req.get("e")))
        elif ftype == E:
            name, args = json.loads(payload)
            self.on_event(name, args)
        else:
            log.error("cluster link: unknown frame %r from worker %d", ftype, peer)

    def _state_from(self, peer: int, d: dict[str, Any]) -> None:
        jid = JID.parse(d["j"])
        seq = tuple(d["t"]) if d.get("t") else (0.0, peer)
        mine = self.local.get(jid)
        if mine is not None:
            my_seq = tuple(mine.ext.get(SEQ) or (0.0, self.index))  # type: ignore[attr-defined]
            if my_seq > seq:
                return  # ours is the later bind: that worker closes its session
            self.close_local(mine, "conflict", "replaced by a new session", False)
        ref = self.directory.get(jid)
        if ref is None or ref.worker != peer:
            ref = RemoteSession(jid, peer)
        ref.seq = seq  # type: ignore[assignment]
        ref.priority = int(d["p"])
        ref.available = bool(d["a"])
        ref.interested = bool(d["i"])
        x = d.get("x")
        ref.presence = parse_fragment(x.encode()) if x else None
        ref.ext = dict(d.get("e") or {})
        ref.auth = dict(d.get("u") or {})
        replaced = self.directory.put(ref)
        if replaced is not None and not d.get("m"):
            self.on_remote(replaced, True)
        self.on_remote(ref, False)

    # -- RPC (request ``Q`` / response ``P``) -------------------------------------------------------
    def peers(self) -> list[int]:
        return sorted(self.mesh.peers)

    def serve(self, name: str, fn: Callable[[Any], Any] | None) -> None:
        if fn is None:
            self.rpc_handlers.pop(name, None)
        else:
            self.rpc_handlers[name] = fn

    async def call(self, worker: int, name: str, payload: Any, timeout: float = 5.0) -> Any:
        """Run the handler ``name`` (``rpc_handlers``) on ``worker`` with ``payload`` (JSON) and return its
        reply.  Raises ``TimeoutError``, ``ConnectionError`` (that worker is gone or not connected) or
        ``RuntimeError`` (the handler failed there, or there is none)."""
        if worker not in self.mesh.peers:
            raise ConnectionError(f"worker {worker} is not connected")
        cid = next(self._call_ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.worker = worker  # type: ignore[attr-defined]
        self._calls[cid] = fut
        try:
            self.mesh.send(worker, Q, json.dumps({"i": cid, "n": name, "p": payload}).encode())
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._calls.pop(cid, None)

    def _answer(self, peer: int, req: dict[str, Any]) -> None:
        cid, name = req.get("i"), req.get("n", "")
        fn = self.rpc_handlers.get(name)

        def reply(ok: bool, value: Any) -> None:
            self.mesh.send(peer, P, json.dumps({"i": cid, "ok": ok, "r": value}).encode())

        if fn is None:
            reply(False, f"no handler {name!r}")
            return
        try:
            r = fn(req.get("p"))
        except Exception as e:
            log.exception("cluster RPC %s failed", name)
            reply(False, str(e))
            return
        if not inspect.isawaitable(r):
            reply(True, r)
            return

        async def later() -> None:
            try:
                value = await r
            except Exception as e:
                log.exception("cluster RPC %s failed", name)
                reply(False, str(e))
                return
            reply(True, value)

        task = asyncio.ensure_future(later())
        self._replying.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._replying.discard)

    def _answered(self, resp: dict[str, Any]) -> None:
        fut = self._calls.get(resp.get("i", 0))
        if fut is None or fut.done():
            return  # timed out meanwhile
        if resp.get("ok"):
            fut.set_result(resp.get("r"))
        else:
            fut.set_exception(RuntimeError(str(resp.get("r"))))
