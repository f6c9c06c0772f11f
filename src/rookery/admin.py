"""What the control socket can ask of a running server: ``status``, ``sessions``, ``kick``, ``reload``,
``debug`` (the ``rookery`` commands of the same names; docs/operations.md).

Extension points for the features that come later (s2s, components, HTTP):

- ``server.status_sections[name] = fn``: ``fn()`` returns a JSON-able value shown as a section of
  ``rookery status`` (e.g. ``"s2s": lambda: [{"domain": ..., "direction": "out"}]``);
- ``control.register_op(name, fn)``: a new control request ``{"op": name, ...}``; ``fn(server, request)``
  returns (or awaits to) a JSON-able dict.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

from . import __version__
from .control import ControlRequestError, register_op
from .jid import JID, InvalidJID

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("rookery.admin")
trace_log = logging.getLogger("rookery.trace")


def memory_rss() -> int:
    """The resident set size of this process, in bytes (the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def storage_backend(server: Server) -> str:
    s = server.config.storage
    return "sqlite" if s == "sqlite" else "postgresql"


def status(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    per_domain = {d: 0 for d in server.config.domains}
    for ref in server.sessions.all():
        per_domain[ref.jid.domain] = per_domain.get(ref.jid.domain, 0) + 1
    out: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "uptime": round(time.time() - server.started_at, 1),
        "domains": list(server.config.domains),
        "listeners": {kind: [_addr(a) for a in addrs] for kind, addrs in server.addresses.items()},
        "sessions": per_domain,
        "connections": len(server.streams),
        "memory_rss": memory_rss(),
        "storage": storage_backend(server),
    }
    for name, fn in server.status_sections.items():
        try:
            out[name] = fn()
        except Exception as e:  # one broken section must not hide the others
            out[name] = f"error: {e}"
    return out


def _addr(a: tuple[str, int]) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def _jid(req: dict[str, Any]) -> JID | None:
    s = req.get("jid")
    if s is None:
        return None
    try:
        return JID.parse(str(s))
    except InvalidJID as e:
        raise ControlRequestError(f"invalid JID {s!r}: {e}") from None


def session_info(ref: Any, now: float) -> dict[str, Any]:
    auth = getattr(ref, "auth", {}) or {}
    stream = getattr(ref, "stream", None)
    tls = auth.get("tls")  # another worker's session: as announced
    if stream is not None:
        t = getattr(getattr(stream, "transport", None), "transport", None)
        ssl_obj = t.get_extra_info("ssl_object") if t is not None else None
        if ssl_obj is not None:
            tls = ssl_obj.version()
    client = None
    pres = ref.presence
    if pres is not None:
        for child in pres:
            if child.tag == "{http://jabber.org/protocol/caps}c":
                client = child.get("node")
    last = getattr(ref, "last_active", None)
    return {
        "jid": ref.jid.full,
        "ip": auth.get("ip"),
        "tls": tls,
        "mechanism": auth.get("mechanism"),
        "client": client,
        "idle": round(now - last, 1) if last is not None else None,
        "state": "attached" if stream is not None else ("detached" if ref.where == "local" else ref.where),
        "available": bool(ref.available),
        "priority": ref.priority,
    }


def sessions(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    j = _jid(req)
    refs = server.sessions.all()
    if j is not None:
        refs = [r for r in refs if r.jid.bare == j.bare and (j.resource is None or r.jid.resource == j.resource)]
    now = time.monotonic()
    return {"sessions": sorted((session_info(r, now) for r in refs), key=lambda s: s["jid"])}


def kick(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    j = _jid(req)
    if j is None or j.local is None:
        raise ControlRequestError("kick needs user@domain or user@domain/resource")
    reason = str(req.get("reason") or "disconnected by an administrator")
    if j.resource is not None:
        ref = server.sessions.get(j)
        refs = [ref] if ref is not None else []
    else:
        refs = list(server.sessions.resources(j.bare).values())
    for ref in refs:
        server.sessions.close(ref, "policy-violation", reason)
    if refs:
        log.info("kicked %s (%d session(s)): %s", j, len(refs), reason)
    return {"kicked": [r.jid.full for r in refs]}


async def reload(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    return await server.reload()


def debug(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    j = _jid(req)
    if j is None or j.local is None or j.resource is not None:
        raise ControlRequestError("debug needs an account address, user@domain")
    if j.domain not in server.config.domains:
        raise ControlRequestError(f"domain {j.domain!r} is not served here")
    server.tracer.set(j.bare, bool(req.get("on", True)))
    if server.cluster is not None:  # the account's sessions may be on any worker
        server.cluster.broadcast("debug", j.bare, bool(req.get("on", True)))
    return {"tracing": sorted(server.tracer.jids)}


class Tracer:
    """``rookery debug JID``: every stanza to and from the account's sessions, logged at debug on
    ``rookery.trace``.  Costs nothing while no account is traced: the inbound hook and the outbound
    filter are installed only while there is one."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.jids: set[str] = set()
        self._filter: Any = None
        self._route: Any = None

    def set(self, bare: str, on: bool) -> None:
        if on:
            self.jids.add(bare)
        else:
            self.jids.discard(bare)
        if self.jids and self._filter is None:
            trace_log.setLevel(logging.DEBUG)
            self._filter = self.server.events.add_filter(self._out, priority=-10**6)
            self._route = self.server.route
            self.server.route = self._in
        elif not self.jids and self._filter is not None:
            self._filter.remove()
            self._filter = None
            self.server.route = self._route
            self._route = None
            trace_log.setLevel(logging.NOTSET)
        log.info("stanza trace %s for %s", "on" if on else "off", bare)

    def _in(self, st: Any) -> Any:
        f = st.from_
        if f is not None and f.bare in self.jids:
            from .xml.serializer import serialize

            trace_log.debug("in  %s: %s", st.from_, serialize(st.el))
        return self._route(st)

    def _out(self, session: Any, el: Any) -> Any:
        if session.jid.bare in self.jids:
            from .xml.serializer import serialize

            trace_log.debug("out %s: %s", session.jid, serialize(el))
        return el


async def reload_tls(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    """``rookery cert import``: load the certificate files again (open connections keep theirs)."""
    domains = server.tls.load()
    log.info("certificates reloaded (own certificates for: %s)", ", ".join(domains) or "none")
    if server.cluster is not None:  # every worker serves TLS
        await server.cluster.broadcast_wait("reload-tls")
    return {"domains": domains}


for _name, _fn in (("reload-tls", reload_tls), ("status", status), ("sessions", sessions), ("kick", kick), ("reload", reload),
                   ("debug", debug)):
    register_op(_name, _fn)
