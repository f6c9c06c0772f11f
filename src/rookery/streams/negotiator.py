"""Stream negotiators (RFC 6120 §4.3): STARTTLS, SASL, resource binding … each is a small object the
stream runs, not a method of the stream.  A negotiator offers its stream features while it applies and
handles the top-level elements it names (by qualified name; for an ``<iq/>`` by its payload's name).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol
from xml.etree.ElementTree import Element

from ..jid import JID
from ..stanza import StanzaError
from .transport import Transport


class NegotiatingStream(Protocol):
    """What negotiators use of the c2s stream."""

    transport: Transport
    local_domain: str
    closed: bool
    authenticated: bool
    username: str | None

    @property
    def settings(self) -> Any: ...

    def send(self, el: Element) -> None: ...

    def stream_error(self, condition: str, text: str | None = None) -> None: ...

    def restart(self) -> None: ...

    def plain_allowed(self) -> bool: ...

    def bind(self, resource: str, reply: Callable[[JID], Element] | None = None) -> JID | None: ...


class Negotiator(Protocol):
    """Stateless, shared by every stream of a kind: per-stream state lives on the stream."""

    #: qualified names of the elements it handles (``{ns}name``; for iq stanzas, the payload's)
    handles: ClassVar[tuple[str, ...]]

    def offer(self, stream: Any, features: Element) -> None:
        """Add this negotiator's features when it applies now (RFC 6120 §4.3.2)."""
        ...

    def handle(self, stream: Any, el: Element) -> Awaitable[Any] | None: ...

    def ended(self, stream: Any) -> None:
        """The stream is over (whatever the state of the negotiation)."""
        ...


class Negotiators:
    """The negotiators of one stream kind, in feature order, and the table of what each handles
    (built once, shared by every stream)."""

    __slots__ = ("order", "table")

    def __init__(self, negotiators: list[Negotiator]) -> None:
        self.order = tuple(negotiators)
        self.table: dict[str, Negotiator] = {}
        for n in negotiators:
            for tag in n.handles:
                if tag in self.table:
                    raise ValueError(f"two negotiators handle {tag}")
                self.table[tag] = n


def iq_reply(el: Element, *children: Element) -> Element:
    """An iq result to a negotiation iq (no addresses: the stream is not bound yet)."""
    r = Element("iq", type="result")
    if el.get("id") is not None:
        r.set("id", el.get("id", ""))
    r.extend(children)
    return r


def iq_error(el: Element, condition: str, text: str | None = None) -> Element:
    r = Element("iq", type="error")
    if el.get("id") is not None:
        r.set("id", el.get("id", ""))
    r.append(StanzaError(condition, text).to_element())
    return r
