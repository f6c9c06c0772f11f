"""XEP-0060: Publish-Subscribe — the pure data model shared by the pubsub service and PEP.

A ``Service`` holds ``Node``s; a node has its configuration (§16.4 ``pubsub#node_config``, kept as a
plain dict of typed values), affiliations (§4.1: owner, publisher, publish-only, member, none,
outcast; keyed by bare JID), subscriptions (§4.2: subscribed, pending, keyed by the subscribed JID
as given, bare or full) and items (§4.3, oldest first, at most ``max_items``).  Nothing here does I/O;
``store`` persists it and ``engine`` speaks the protocol.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from ..stanza import StanzaError
from ..xml import ns

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = PUBSUB + "#owner"
EVENT = PUBSUB + "#event"
ERRORS = PUBSUB + "#errors"
NODE_CONFIG = PUBSUB + "#node_config"
SUBSCRIBE_OPTIONS = PUBSUB + "#subscribe_options"
SUBSCRIBE_AUTHORIZATION = PUBSUB + "#subscribe_authorization"
PUBLISH_OPTIONS = PUBSUB + "#publish-options"
META_DATA = PUBSUB + "#meta-data"
RSM = "http://jabber.org/protocol/rsm"
X = f"{{{ns.DATA_FORMS}}}x"
FIELD = f"{{{ns.DATA_FORMS}}}field"
VALUE = f"{{{ns.DATA_FORMS}}}value"

AFFILIATIONS = ("owner", "publisher", "publish-only", "member", "none", "outcast")
ACCESS_MODELS = ("open", "presence", "roster", "whitelist", "authorize")
PUBLISH_MODELS = ("publishers", "subscribers", "open")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")


def pubsub_error(condition: str, app: str | None = None, feature: str | None = None,
                 text: str | None = None, type: str | None = None) -> StanzaError:
    """A stanza error with the XEP-0060 application condition (§7, §8: ``<nodeid-required/>``,
    ``<unsupported feature='…'/>`` …)."""
    el = None
    if app is not None:
        el = Element(f"{{{ERRORS}}}{app}")
        if feature is not None:
            el.set("feature", feature)
    return StanzaError(condition, text, type=type, app=el)


def unsupported(feature: str) -> StanzaError:
    return pubsub_error("feature-not-implemented", "unsupported", feature)


# -- node configuration (§16.4) -----------------------------------------------------------------
#: var -> (form field type, options for list-single fields)
CONFIG_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pubsub#title": ("text-single", ()),
    "pubsub#type": ("text-single", ()),
    "pubsub#node_type": ("list-single", ("leaf",)),
    "pubsub#deliver_notifications": ("boolean", ()),
    "pubsub#deliver_payloads": ("boolean", ()),
    "pubsub#notify_config": ("boolean", ()),
    "pubsub#notify_delete": ("boolean", ()),
    "pubsub#notify_retract": ("boolean", ()),
    "pubsub#persist_items": ("boolean", ()),
    "pubsub#max_items": ("text-single", ()),
    "pubsub#subscribe": ("boolean", ()),
    "pubsub#access_model": ("list-single", ACCESS_MODELS),
    "pubsub#roster_groups_allowed": ("list-multi", ()),
    "pubsub#publish_model": ("list-single", PUBLISH_MODELS),
    "pubsub#send_last_published_item": ("list-single", SEND_LAST),
    "pubsub#notification_type": ("list-single", ("headline", "normal")),
    "pubsub#itemreply": ("list-single", ("owner", "publisher", "none")),
}

DEFAULT_CONFIG: dict[str, Any] = {
    "pubsub#title": "",
    "pubsub#type": "",
    "pubsub#node_type": "leaf",
    "pubsub#deliver_notifications": True,
    "pubsub#deliver_payloads": True,
    "pubsub#notify_config": False,
    "pubsub#notify_delete": True,
    "pubsub#notify_retract": True,
    "pubsub#persist_items": True,
    "pubsub#max_items": "10",
    "pubsub#subscribe": True,
    "pubsub#access_model": "open",
    "pubsub#roster_groups_allowed": [],
    "pubsub#publish_model": "publishers",
    "pubsub#send_last_published_item": "on_sub",
    "pubsub#notification_type": "headline",
    "pubsub#itemreply": "none",
}


def parse_bool(value: str) -> bool:
    v = value.strip()
    if v in ("1", "true"):
        return True
    if v in ("0", "false"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def form_values(x: Element) -> dict[str, list[str]]:
    """The fields of an XEP-0004 form: var -> values (FORM_TYPE included)."""
    out: dict[str, list[str]] = {}
    for f in x.findall(FIELD):
        var = f.get("var")
        if var:
            out[var] = [(v.text or "") for v in f.findall(VALUE)]
    return out


def form_type(x: Element) -> str | None:
    vals = form_values(x).get("FORM_TYPE")
    return vals[0] if vals else None


def coerce(var: str, values: list[str], max_items: int) -> Any:
    """The typed value of config field ``var``; raises ``ValueError`` for a bad one."""
    ftype, options = CONFIG_FIELDS[var]
    if ftype == "list-multi":
        return [v for v in values if v]
    v = values[0] if values else ""
    if ftype == "boolean":
        return parse_bool(v)
    if ftype == "list-single":
        if v not in options:
            raise ValueError(f"{var}: {v!r} is not one of {', '.join(options)}")
        return v
    if var == "pubsub#max_items":
        v = v.strip()
        if v == "max":
            return v
        if not v.isdigit() or int(v) < 1 or int(v) > max_items:
            raise ValueError(f"pubsub#max_items must be between 1 and {max_items}, or 'max'")
        return str(int(v))
    return v


def parse_config(x: Element, max_items: int, *, strict: bool = False) -> dict[str, Any]:
    """The known fields of a ``pubsub#node_config`` (or publish-options) form, typed.  Unknown fields
    are ignored, or raise ``KeyError`` when ``strict``; bad values raise ``ValueError``."""
    out: dict[str, Any] = {}
    for var, values in form_values(x).items():
        if var == "FORM_TYPE":
            continue
        if var == "pubsub#node_type" and values and values[0] == "collection":
            raise unsupported("collections")
        if var not in CONFIG_FIELDS:
            if strict:
                raise KeyError(var)
            continue
        out[var] = coerce(var, values, max_items)
    return out


def build_form(form_type_: str, fields: dict[str, Any], type: str = "form",
               types: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> Element:
    """An XEP-0004 form with a hidden FORM_TYPE; booleans as 1/0, lists as several values."""
    types = CONFIG_FIELDS if types is None else types
    x = Element(X, type=type)
    f = SubElement(x, FIELD, var="FORM_TYPE", type="hidden")
    SubElement(f, VALUE).text = form_type_
    for var, value in fields.items():
        ftype, options = types.get(var, ("text-single", ()))
        f = SubElement(x, FIELD, var=var)
        if type == "form":
            f.set("type", ftype)
            for o in options:
                SubElement(SubElement(f, f"{{{ns.DATA_FORMS}}}option"), VALUE).text = o
        if isinstance(value, bool):
            SubElement(f, VALUE).text = "1" if value else "0"
        elif isinstance(value, list):
            for v in value:
                SubElement(f, VALUE).text = v
        else:
            SubElement(f, VALUE).text = str(value)
    return x


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return sorted(a) == sorted(b)
    return bool(a == b)


# -- the model ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Item:
    """§4.3: an item: its id, publisher (bare or full JID), payload (serialized XML or None)."""

    id: str
    publisher: str
    payload: str | None
    when: float
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "publisher": self.publisher, "payload": self.payload, "when": self.when,
                "seq": self.seq}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(str(d["id"]), str(d.get("publisher", "")), d.get("payload"), float(d.get("when", 0)),
                   int(d.get("seq", 0)))


@dataclass(slots=True)
class Subscription:
    """§4.2: a JID's subscription to a node (one per JID): ``subscribed`` or ``pending``."""

    jid: str
    subid: str
    state: str = "subscribed"
    deliver: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"jid": self.jid, "subid": self.subid, "state": self.state, "deliver": self.deliver}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subscription:
        return cls(str(d["jid"]), str(d.get("subid") or new_id()), str(d.get("state", "subscribed")),
                   bool(d.get("deliver", True)))


@dataclass(slots=True)
class Node:
    name: str
    config: dict[str, Any]
    affiliations: dict[str, str] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    items: OrderedDict[str, Item] = field(default_factory=OrderedDict)
    created: float = field(default_factory=time.time)

    # -- configuration shortcuts
    def get(self, var: str) -> Any:
        return self.config.get(var, DEFAULT_CONFIG.get(var))

    @property
    def access_model(self) -> str:
        return str(self.get("pubsub#access_model"))

    @property
    def persistent(self) -> bool:
        return bool(self.get("pubsub#persist_items"))

    def max_items(self, hard_max: int) -> int:
        v = str(self.get("pubsub#max_items"))
        return hard_max if v == "max" else min(int(v), hard_max)

    def affiliation(self, bare: str) -> str:
        return self.affiliations.get(bare, "none")

    def owners(self) -> list[str]:
        return [j for j, a in self.affiliations.items() if a == "owner"]

    def last_item(self) -> Item | None:
        return next(reversed(self.items.values())) if self.items else None

    def to_dict(self) -> dict[str, Any]:
        """Configuration and affiliations (subscriptions and items are stored one by one)."""
        return {"name": self.name, "config": self.config, "affiliations": self.affiliations,
                "created": self.created}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        subs = [Subscription.from_dict(s) for s in d.get("subscriptions", [])]
        return cls(str(d["name"]), dict(d.get("config", {})), dict(d.get("affiliations", {})),
                   {s.jid: s for s in subs}, OrderedDict(), float(d.get("created", time.time())))


def new_id() -> str:
    return secrets.token_hex(8)


class Service:
    """The nodes of one pubsub service (``pubsub.D``, or one account's PEP), in memory; ``seq`` orders
    items across restarts."""

    def __init__(self, jid: str) -> None:
        self.jid = jid
        self.nodes: dict[str, Node] = {}
        self.seq = 0

    def add_item(self, node: Node, item: Item, hard_max: int) -> list[Item]:
        """Publish ``item`` (replacing one with the same id, §7.1.2); returns the items pushed out by
        ``max_items`` (oldest first)."""
        self.seq += 1
        item.seq = self.seq
        node.items.pop(item.id, None)
        node.items[item.id] = item
        dropped = []
        limit = node.max_items(hard_max)
        while len(node.items) > limit:
            dropped.append(node.items.popitem(last=False)[1])
        return dropped
