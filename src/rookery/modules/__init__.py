"""Feature modules, one per file, each named for its feature and citing its spec first.

Built-in modules are listed in ``BUILTIN``; third parties ship more through the ``rookery.modules``
entry-point group (``name = "package.module:Class"``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

BUILTIN: dict[str, str] = {
    "roster": "rookery.modules.roster:Roster",
    "presence": "rookery.modules.presence:Presence",
    "disco": "rookery.modules.disco:Disco",
    "caps": "rookery.modules.caps:Caps",
    "ping": "rookery.modules.ping:Ping",
    "version": "rookery.modules.version:Version",
    "time": "rookery.modules.time:Time",
    "last": "rookery.modules.last:LastActivity",
    "vcard": "rookery.modules.vcard:VCard",
    "private": "rookery.modules.private:PrivateStorage",
    "offline": "rookery.modules.offline:Offline",
    "session": "rookery.modules.session:Session",
}


def available_modules() -> dict[str, str]:
    mods = dict(BUILTIN)
    for ep in entry_points(group="rookery.modules"):
        mods.setdefault(ep.name, ep.value)
    return mods


def load_module_class(name: str) -> type:
    target = available_modules()[name]
    mod_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(mod_name), cls_name)
