"""Handler tables and the event bus: where modules plug in (docs/modules.md).

Every registration returns a ``Handle``; ``handle.remove()`` unhooks it (a module stopped at run time
removes all of its handles).  Lookups stay one dict access: chains are rebuilt at registration, never
at dispatch.

* ``HandlerTable`` — the stanza handlers of one *domain kind*: the local accounts' hosts share one
  kind per module set, each internal service (``conference.D`` …) has its own, so a disco#info to a
  MUC room never reaches the account's disco handler.  iq get/set by ``(type, namespace, name,
  target)``; stanza chains by ``"<kind>/<target>"`` (``message/bare`` …) and ``"pre-<kind>"``.
* ``EventBus`` — server-wide events with their own arguments: *plain* (``fire``: every handler runs,
  results ignored, coroutines awaited together), *fold* (``fold``: each handler transforms a value in
  priority order, e.g. ``stream-features``) and the outbound *filter* chain every ``Session.send`` runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

Handler = Callable[..., Any]
IqKey = tuple[str, str, str, str]  # (type, namespace, name, target)

_seq = itertools.count()


class Handle:
    """A registration; ``remove()`` undoes it (idempotent)."""

    __slots__ = ("_undo", "what", "on_removed")

    def __init__(self, undo: Callable[[], None], what: str) -> None:
        self._undo: Callable[[], None] | None = undo
        self.what = what
        #: called once after ``remove`` (the owner forgets the handle)
        self.on_removed: Callable[[Handle], None] | None = None

    @property
    def active(self) -> bool:
        return self._undo is not None

    def remove(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()
            after, self.on_removed = self.on_removed, None
            if after is not None:
                after(self)

    def __repr__(self) -> str:
        return f"<Handle {self.what}{'' if self._undo else ' removed'}>"


K = TypeVar("K")
V = TypeVar("V")


def register(table: dict[K, V], key: K, value: V, what: str) -> Handle:
    """``table[key] = value`` when the key is free (else ``ValueError`` naming ``what``); the handle
    removes exactly this entry (not one registered later under the same key)."""
    if key in table:
        raise ValueError(f"{what} is already registered")
    table[key] = value

    def undo() -> None:
        if table.get(key) is value:
            del table[key]

    return Handle(undo, what)


class _Chains:
    """event -> handlers ordered by priority (higher first), then registration order."""

    __slots__ = ("_entries", "chains")

    def __init__(self) -> None:
        self._entries: dict[str, list[tuple[int, int, Handler]]] = {}
        self.chains: dict[str, list[Handler]] = {}

    def add(self, event: str, fn: Handler, priority: int) -> Handle:
        entry = (-priority, next(_seq), fn)
        lst = self._entries.setdefault(event, [])
        lst.append(entry)
        lst.sort(key=lambda e: (e[0], e[1]))
        self._rebuild(event)

        def undo() -> None:
            entries = self._entries.get(event, [])
            if entry in entries:
                entries.remove(entry)
            self._rebuild(event)

        return Handle(undo, f"hook {event}")

    def _rebuild(self, event: str) -> None:
        entries = self._entries.get(event)
        if entries:
            self.chains[event] = [e[2] for e in entries]
        else:
            self._entries.pop(event, None)
            self.chains.pop(event, None)


class HandlerTable:
    """Stanza handlers of one domain kind (see module docstring)."""

    __slots__ = ("kind", "iq", "_chains", "chains")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.iq: dict[IqKey, Handler] = {}
        self._chains = _Chains()
        self.chains = self._chains.chains

    def add_iq(self, key: IqKey, fn: Handler) -> Handle:
        return register(self.iq, key, fn, f"iq {key} on {self.kind}")

    def add_hook(self, event: str, fn: Handler, priority: int = 0) -> Handle:
        return self._chains.add(event, fn, priority)


class EventBus:
    """Server-wide events (see module docstring)."""

    __slots__ = ("_chains", "chains", "filters", "_filter_entries")

    def __init__(self) -> None:
        self._chains = _Chains()
        self.chains = self._chains.chains
        #: the outbound filter chain, shared (the same list object) with every session
        self.filters: list[Handler] = []
        self._filter_entries: list[tuple[int, int, Handler]] = []

    def on(self, event: str, fn: Handler, priority: int = 0) -> Handle:
        return self._chains.add(event, fn, priority)

    def add_filter(self, fn: Handler, priority: int = 0) -> Handle:
        """``fn(session, element) -> element | None`` on every element sent to a session."""
        entry = (-priority, next(_seq), fn)
        self._filter_entries.append(entry)
        self._filter_entries.sort(key=lambda e: (e[0], e[1]))
        self.filters[:] = [e[2] for e in self._filter_entries]

        def undo() -> None:
            if entry in self._filter_entries:
                self._filter_entries.remove(entry)
            self.filters[:] = [e[2] for e in self._filter_entries]

        return Handle(undo, "filter")

    def fire(self, event: str, *args: Any) -> Awaitable[None] | None:
        """Run every handler of ``event``; an awaitable when some were async (await it or spawn it)."""
        chain = self.chains.get(event)
        if not chain:
            return None
        pending = []
        for fn in chain:
            try:
                r = fn(*args)
            except Exception:
                log.exception("handler for %s failed", event)
                continue
            if r is not None and isawaitable(r):
                pending.append(r)
        if pending:
            if len(pending) == 1:  # the usual case: no gather (a task per awaitable and a future)
                return _await_logged(event, pending[0])
            return _gather_logged(event, pending)
        return None

    def fold(self, event: str, value: Any, *args: Any) -> Any:
        """Fold ``value`` through the handlers: each gets ``(value, *args)`` and returns the new value
        (or a coroutine for it).  Returns the value, or an awaitable of it when a handler was async."""
        chain = self.chains.get(event)
        if not chain:
            return value
        for i, fn in enumerate(chain):
            try:
                r = fn(value, *args)
            except Exception:
                log.exception("fold handler for %s failed", event)
                continue
            if isawaitable(r):
                return _fold_rest(event, r, value, chain[i + 1:], args)
            value = r
        return value


async def _fold_rest(event: str, first: Awaitable[Any], value: Any, rest: list[Handler], args: tuple[Any, ...]) -> Any:
    try:
        value = await first
    except Exception:
        log.exception("fold handler for %s failed", event)
    for fn in rest:
        try:
            r = fn(value, *args)
            value = (await r) if isawaitable(r) else r
        except Exception:
            log.exception("fold handler for %s failed", event)
    return value


async def _await_logged(event: str, aw: Awaitable[Any]) -> None:
    """``_gather_logged`` of one awaitable: its failure is logged, never raised (a cancellation of
    the awaiting task itself goes on)."""
    try:
        await aw
    except asyncio.CancelledError as e:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.error("async handler for %s failed", event, exc_info=e)
    except Exception as e:
        log.error("async handler for %s failed", event, exc_info=e)


async def _gather_logged(event: str, pending: list[Awaitable[Any]]) -> None:
    for r in await asyncio.gather(*pending, return_exceptions=True):
        if isinstance(r, BaseException):
            log.error("async handler for %s failed", event, exc_info=r)
