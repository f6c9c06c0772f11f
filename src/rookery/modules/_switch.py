"""Registrations a module makes only while they are needed (shared by carbons, csi and blocking).

A hook on the message path or an outbound filter costs every stanza of every user; a module whose
work is needed only while some user uses its feature (carbons enabled, a client inactive, a
non-empty block list online) switches them on and off with a ``Switch``.  Switch only outside the
handlers concerned: ``Session.send`` walks the filter list in place.
"""

from __future__ import annotations

from collections.abc import Callable

from ..module import ModuleContext
from ..routing.hooks import Handle


class Switch:
    __slots__ = ("_ctx", "_register", "_handles")

    def __init__(self, ctx: ModuleContext, register: Callable[[ModuleContext], list[Handle]]) -> None:
        self._ctx = ctx
        self._register = register
        self._handles: list[Handle] = []

    @property
    def on(self) -> bool:
        return bool(self._handles)

    def set(self, on: bool) -> None:
        if on and not self._handles:
            self._handles = self._register(self._ctx)
        elif not on and self._handles:
            for h in self._handles:
                h.remove()
            self._handles = []
            # the context keeps every handle it made (to remove them at stop): forget these
            self._ctx.handles[:] = [h for h in self._ctx.handles if h.active]
