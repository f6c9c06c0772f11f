"""Stanzas as the router and modules see them (RFC 6120 §8), and stanza errors (§8.3).

A ``Stanza`` wraps the parsed element with its kind, type and parsed ``from``/``to`` JIDs and the
session it came from.  Replies are built with ``result()`` / ``error()``.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, SubElement

from .jid import JID
from .xml import ns

# RFC 6120 §8.3.3: each defined condition with its usual error type.
ERROR_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}

_ERR_TAG = "{%s}" % ns.STANZAS_ERR


class StanzaError(Exception):
    """Raise from a handler to reply with this error (RFC 6120 §8.3)."""

    def __init__(self, condition: str, text: str | None = None, type: str | None = None,
                 app: Element | None = None) -> None:
        super().__init__(condition if text is None else f"{condition}: {text}")
        if condition not in ERROR_TYPES:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        self.condition = condition
        self.text = text
        self.type = type or ERROR_TYPES[condition]
        self.app = app

    def to_element(self, by: str | None = None) -> Element:
        err = Element("error", type=self.type)
        if by:
            err.set("by", by)
        SubElement(err, _ERR_TAG + self.condition)
        if self.text:
            t = SubElement(err, _ERR_TAG + "text")
            t.text = self.text
        if self.app is not None:
            err.append(self.app)
        return err


class Stanza:
    """A routed stanza.  ``kind`` is "message" | "presence" | "iq"; ``type`` defaults per RFC 6120 §8.2.

    ``origin`` is the ``SessionRef`` of the session it came from (None for server-generated stanzas
    and, later, for stanzas from other servers).  ``no_to`` is
    True when the sender omitted ``to`` (replies then omit ``from``, RFC 6120 §8.1.2.1).
    """

    __slots__ = ("el", "kind", "type", "from_", "to", "origin", "no_to")

    def __init__(self, el: Element, from_: JID | None, to: JID | None, origin: Any = None,
                 no_to: bool = False) -> None:
        self.el = el
        self.kind: str = el.tag
        t = el.get("type")
        if t is None:
            t = "normal" if self.kind == "message" else "available" if self.kind == "presence" else ""
        self.type: str = t
        self.from_ = from_
        self.to = to
        self.origin = origin
        self.no_to = no_to

    @property
    def id(self) -> str | None:
        return self.el.get("id")

    @property
    def payload(self) -> Element | None:
        """First child element (the iq payload)."""
        for child in self.el:
            return child
        return None

    def find(self, path: str) -> Element | None:
        return self.el.find(path)

    def _reply(self, type: str) -> Element:
        el = Element(self.kind, type=type)
        i = self.el.get("id")
        if i is not None:
            el.set("id", i)
        if self.from_ is not None:
            el.set("to", self.from_.full)
        if self.to is not None and not self.no_to:
            el.set("from", self.to.full)
        return el

    def result(self, *children: Element) -> Element:
        """An iq result (RFC 6120 §8.2.3) carrying ``children``."""
        el = self._reply("result")
        for c in children:
            el.append(c)
        return el

    def error(self, condition: str | StanzaError, text: str | None = None, type: str | None = None) -> Element:
        """The error reply (RFC 6120 §8.3.1): same kind, type 'error', addresses swapped."""
        err = condition if isinstance(condition, StanzaError) else StanzaError(condition, text, type)
        el = self._reply("error")
        if self.kind != "iq":
            for child in self.el:
                if child.tag in ("body", "subject", "thread"):
                    el.append(child)
        el.append(err.to_element())
        return el

    def __repr__(self) -> str:
        return f"<Stanza {self.kind}/{self.type} from={self.from_} to={self.to}>"
