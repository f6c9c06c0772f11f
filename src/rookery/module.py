"""The module API (DESIGN.md "Modules"): every feature is a ``Module`` that registers handlers.

Handlers are found by one dict lookup, never by scanning modules:

* ``@iq_handler(type, namespace, name, to=...)`` — iq get/set whose payload is ``{namespace}name``,
  addressed to the server (``to="host"``), to an account's bare JID (``"bare"``, also used for iqs a
  client sends with no ``to``: they are addressed to its own account, RFC 6120 §10.3.3), or to a full
  JID (``"full"``).  The handler gets a ``Stanza`` and returns the reply ``Element`` (or ``None`` if it
  replied itself), raises ``StanzaError``, or is ``async`` and does the same.  An uncaught exception
  replies ``<internal-server-error/>`` and is logged; the session lives on.
* ``@hook(event, priority=0)`` — stanza events ``"<kind>/<target>"`` (``message/bare``,
  ``presence/full``, ``iq/host``...) for stanzas delivered to a local entity, and ``"pre-<kind>"`` for
  stanzas a local client sends, before routing.  Higher priority runs first; returning ``True`` (or a
  coroutine, which is then awaited) means handled, stop.  Other events (``session-bound``,
  ``session-ended``, ``user-deleted``, ``stream-features``...) get their own arguments; their return
  value is ignored (coroutines are awaited).

Disco features and identities are declared on the class and collected by the disco module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .server import Server

IQ_TARGETS = ("host", "bare", "full")


def iq_handler(type: str, namespace: str, name: str, to: str = "host") -> Callable[[Callable], Callable]:
    """Register a method for iq ``type`` ("get"/"set") with payload ``{namespace}name`` sent ``to``."""
    if type not in ("get", "set") or to not in IQ_TARGETS:
        raise ValueError("iq_handler(type in get/set, ..., to in host/bare/full)")

    def deco(fn: Callable) -> Callable:
        fn.__dict__.setdefault("_rookery_iq", []).append((type, namespace, name, to))
        return fn

    return deco


def hook(event: str, priority: int = 0) -> Callable[[Callable], Callable]:
    """Register a method for ``event`` (see module docstring)."""

    def deco(fn: Callable) -> Callable:
        fn.__dict__.setdefault("_rookery_hooks", []).append((event, priority))
        return fn

    return deco


class Module:
    """Base class of every feature module.  Subclasses set ``name`` and declare handlers."""

    name: ClassVar[str] = ""
    #: disco#info features of the server itself (XEP-0030)
    features: ClassVar[list[str]] = []
    #: disco#info features of each account's bare JID
    account_features: ClassVar[list[str]] = []
    #: disco#info identities of the server: (category, type, name)
    identities: ClassVar[list[tuple[str, str, str | None]]] = []
    #: modules this one needs loaded first
    depends: ClassVar[list[str]] = []

    def __init__(self, server: Server) -> None:
        self.server = server
        self.log = logging.getLogger(f"rookery.modules.{self.name}")

    @property
    def storage(self) -> Any:
        return self.server.storage

    @property
    def config(self) -> Any:
        return self.server.config

    async def start(self) -> None:
        """Called once after every module is loaded and storage is open."""

    async def stop(self) -> None:
        """Called at shutdown, before storage closes."""

    def handlers(self) -> tuple[list[tuple[tuple[str, str, str, str], Callable]], list[tuple[str, int, Callable]]]:
        """(iq handlers, hooks) declared on this instance."""
        iqs: list[tuple[tuple[str, str, str, str], Callable]] = []
        hooks: list[tuple[str, int, Callable]] = []
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            if not callable(fn):
                continue
            bound = getattr(self, attr)
            for key in getattr(fn, "_rookery_iq", ()):
                iqs.append((key, bound))
            for event, prio in getattr(fn, "_rookery_hooks", ()):
                hooks.append((event, prio, bound))
        return iqs, hooks
