"""Feature modules, one per file, each named for its feature and citing its spec first.

Built-in modules are listed in ``BUILTIN``; third parties ship more through the ``rookery.modules``
entry-point group (``name = "package.module:Class"``), or name a class directly in ``modules``
(``"package.module:Class"``, importable from the server's Python path).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

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
    "register": "rookery.modules.register:Register",
    "contact_info": "rookery.modules.contact_info:ContactInfo",
    "carbons": "rookery.modules.carbons:Carbons",
    "csi": "rookery.modules.csi:CSI",
    "blocking": "rookery.modules.blocking:Blocking",
    "smacks": "rookery.modules.stream_management:StreamManagement",
    "push": "rookery.modules.push:Push",
    "mam": "rookery.modules.mam:MAM",
    "upload": "rookery.modules.upload:Upload",
    "proxy65": "rookery.modules.proxy65:Proxy65",
    "external_services": "rookery.modules.external_services:ExternalServices",
    "websocket": "rookery.modules.websocket:WebSocket",
    "bosh": "rookery.modules.bosh:BOSH",
    "http_discovery": "rookery.modules.http_discovery:HTTPDiscovery",
    "web_client": "rookery.modules.web_client:WebClient",
    "muc": "rookery.modules.muc:MUC",
    "pubsub": "rookery.modules.pubsub:PubSub",
    "pep": "rookery.modules.pep:PEP",
    "avatar_conversion": "rookery.modules.avatar_conversion:AvatarConversion",
}


def available_modules() -> dict[str, str]:
    mods = dict(BUILTIN)
    for ep in entry_points(group="rookery.modules"):
        mods.setdefault(ep.name, ep.value)
    return mods


class ModuleLoadError(Exception):
    """A module name that names no loadable module class."""


def load_module_class(name: str) -> Any:
    """The ``Module`` subclass for ``name`` (a built-in, an entry point, or "package.module:Class")."""
    target = available_modules().get(name)
    if target is None:
        if ":" not in name:
            raise ModuleLoadError(f"unknown module {name!r}")
        target = name
    mod_name, _, cls_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ModuleLoadError(f"cannot load module {name!r}: {e}") from None
    from ..module import Module

    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise ModuleLoadError(f"{name!r} is not a rookery Module class")
    return cls
