"""XEP-0280: Message Carbons (urn:xmpp:carbons:2), with the XEP-0334 hints and XEP-0297 forwarding.

§3/§4 "Enabling"/"Disabling": an iq-set ``<enable/>``/``<disable/>`` from a local client to its own
account (no ``to``) switches carbons on/off for that resource (state: ``session.ext["carbons"]``);
repeating either is not an error (§9 "Handling Multiple Enable/Disable Requests"); a request for
another account is ``<not-allowed/>``.

§6 "Which Messages Are Carbon-Copied?" (``eligible``): a message without a ``<private/>`` or XEP-0334
``<no-copy/>`` hint (§7) is copied when it is of type ``chat``; of type ``normal`` with a ``<body/>``;
or carries XEP-0184 receipts, XEP-0085 chat states or XEP-0333 markers; and of the MUC rules, XEP-0249
direct and mediated invitations are copied, ``groupchat`` messages and private messages received from
a MUC occupant are not.  ``error`` and ``headline`` messages are not copied, nor are carbons themselves
(``<sent/>``/``<received/>``), which is why the server does not advertise
``urn:xmpp:carbons:rules:0`` (the rule for errors answering eligible messages is not implemented).

§6 "Receiving Messages": after RFC 6121 §8.5 delivery (the router's ``message-delivered(stanza,
targets)`` event) every other carbons-enabled resource of the recipient gets ``<received/>`` — also
when no resource took the message (``delivery-failed``: offline storage follows as usual).  §6
"Sending Messages": on ``pre-message`` (before routing; never handles the stanza) every other
carbons-enabled resource of the sender gets ``<sent/>``, whether or not the sender enabled carbons.
Copies are ``<message from='user@domain' to='user@domain/resource' type='(same)'>`` wrapping the
original in a XEP-0297 ``<forwarded/>``.  These hooks are installed only while some resource has carbons
enabled.  Copies are delivered straight to the sessions, never routed,
so a copy is never copied again and a failing copy never bounces to the sender (§11).
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, SubElement

from ..module import Module, hook, iq_handler
from ..routing.registry import SessionRef
from ..stanza import Stanza, StanzaError
from ._switch import Switch

NS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
HINTS = "urn:xmpp:hints"
MUC_USER = "http://jabber.org/protocol/muc#user"

_PRIVATE = f"{{{NS}}}private"
_NO_COPY = f"{{{HINTS}}}no-copy"
_CARBON = (f"{{{NS}}}sent", f"{{{NS}}}received")
#: IM payloads that make any message eligible (§6.1: XEP-0184, XEP-0085, XEP-0333)
_IM_NAMESPACES = ("urn:xmpp:receipts", "http://jabber.org/protocol/chatstates", "urn:xmpp:chat-markers:0")
_DIRECT_INVITE = "{jabber:x:conference}x"
_MUC_X = f"{{{MUC_USER}}}x"


def eligible(el: Element, mtype: str, inbound: bool) -> bool:
    """XEP-0280 §6.1 (and §7 private messages): should this message be carbon-copied?
    ``inbound``: seen by the recipient's server (private messages from MUC occupants are not copied)."""
    if mtype in ("groupchat", "error", "headline"):
        return False
    copy = mtype == "chat"
    muc_x = None
    for child in el:
        tag = child.tag
        if tag == _PRIVATE or tag == _NO_COPY or tag in _CARBON:
            return False
        if tag == "body":
            if mtype == "normal":
                copy = True
        elif tag == _DIRECT_INVITE:
            copy = True
        elif tag == _MUC_X:
            muc_x = child
        elif tag[:1] == "{" and tag[1:].partition("}")[0] in _IM_NAMESPACES:
            copy = True
    if muc_x is not None:
        if muc_x.find(f"{{{MUC_USER}}}invite") is not None:
            return True  # mediated invitation
        if inbound and "/" in el.get("from", ""):
            return False  # a private message from a MUC occupant: the MUC replicates it itself
    return copy


def qualify(el: Element) -> Element:
    """A copy of a stanza whose stream-namespace elements (parsed without a namespace) are put in
    ``jabber:client`` explicitly, so that it keeps its namespace inside ``<forwarded/>`` (XEP-0297 §3).
    Namespaced subtrees are shared, not copied."""
    tag = el.tag
    out = Element(tag if tag[:1] == "{" else CLIENT + tag, el.attrib)
    out.text = el.text
    for child in el:
        out.append(child if child.tag[:1] == "{" else qualify(child))
    return out


def wrap(el: Element, direction: str, bare: str, to: str, mtype: str) -> Element:
    """The §6 copy: ``<message from=bare to=resource type><sent|received><forwarded>original``
    (``el`` already ``qualify``-ed)."""
    attrs = {"from": bare, "to": to}
    if mtype != "normal":
        attrs["type"] = mtype
    out = Element("message", attrs)
    fwd = SubElement(SubElement(out, f"{{{NS}}}{direction}"), f"{{{FORWARD}}}forwarded")
    fwd.append(el)
    return out


CLIENT = "{jabber:client}"


class Carbons(Module):
    """XEP-0280 Message Carbons."""

    name = "carbons"
    features = [NS]

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        #: bare JID -> resource -> session, for the carbons-enabled sessions (one lookup per message);
        #: with workers, also the other workers' sessions that published ``ext["carbons"]`` (issue 12)
        self.enabled: dict[str, dict[str, SessionRef]] = {}
        #: the message-path hooks, installed only while some resource has carbons enabled
        self._copying = Switch(ctx, lambda c: [c.hook("pre-message", self.sent, priority=900),
                                               c.hook("message-delivered", self.delivered),
                                               c.hook("delivery-failed", self.undelivered, priority=1000)])

    # -- §3, §4 enable / disable --------------------------------------------------------------
    def _own(self, request: Stanza) -> SessionRef:
        frm, to, origin = request.from_, request.to, request.origin
        if origin is None or frm is None or to is None or frm.bare != to.bare or frm.resource is None:
            raise StanzaError("not-allowed", "carbons are enabled by a client of this account")
        return origin  # type: ignore[no-any-return]

    @iq_handler("set", NS, "enable", to="bare")
    def enable(self, request: Stanza) -> Element:
        session = self._own(request)
        self.ctx.sessions.publish(session, "carbons", True)  # other workers copy to it too
        self._remember(session)
        return request.result()

    def _remember(self, session: SessionRef) -> None:
        jid = session.jid
        self.enabled.setdefault(jid.bare, {})[jid.resource or ""] = session
        self._copying.set(True)

    @iq_handler("set", NS, "disable", to="bare")
    def disable(self, request: Stanza) -> Element:
        session = self._own(request)
        self._forget(session)
        return request.result()

    def _forget(self, session: Any, publish: bool = True) -> None:
        if publish and session.ext.get("carbons") and session.where == "local":
            self.ctx.sessions.publish(session, "carbons", None)
        session.ext.pop("carbons", None)
        self._drop(session)

    def _drop(self, session: Any) -> None:
        jid = session.jid
        res = self.enabled.get(jid.bare)
        if res is not None and res.get(jid.resource or "") is session:
            del res[jid.resource or ""]
            if not res:
                del self.enabled[jid.bare]
                self._copying.set(bool(self.enabled))

    @hook("session-ended")
    def session_ended(self, session: Any) -> None:
        if session.where == "local":
            session.ext.pop("carbons", None)  # gone: nothing to announce (its end is announced)
        self._drop(session)

    # -- workers (issue 12): the carbons-enabled resources of the other workers -------------------
    @hook("session-bound")
    def session_bound(self, session: Any) -> None:
        """A session handed over from another worker (XEP-0198 resumption) keeps carbons on."""
        if session.ext.get("carbons"):
            self._remember(session)

    @hook("session-handed-over")
    def handed_over(self, session: Any) -> None:
        """A session of ours continues on another worker (its announcement follows)."""
        self._drop(session)

    @hook("session-announced")
    def session_announced(self, ref: Any) -> None:
        """Another worker's session was announced (bound, changed): copied to when it enabled carbons."""
        jid = ref.jid
        res = self.enabled.get(jid.bare)
        had = res.get(jid.resource or "") if res is not None else None
        if ref.ext.get("carbons"):
            if had is not ref:
                self._remember(ref)
        elif had is not None:
            self._drop(had)

    @hook("session-gone")
    def session_gone(self, ref: Any) -> None:
        """Another worker's session ended (or its worker died)."""
        self._drop(ref)

    # -- §6 copies ----------------------------------------------------------------------------
    def _copy(self, st: Stanza, bare: str, skip: Any, direction: str) -> None:
        res = self.enabled.get(bare)
        if not res:
            return
        if len(res) == 1:  # the common case (one carbons-enabled client): no list to build
            for only in res.values():
                if only in skip or getattr(only, "ended", False):
                    return
                targets = [only]
        else:
            targets = [s for s in res.values() if s not in skip and not getattr(s, "ended", False)]
        if not targets or not eligible(st.el, st.type, direction == "received"):
            return
        deliver = self.ctx.sessions.deliver
        inner = qualify(st.el)
        for s in targets:
            deliver(s, wrap(inner, direction, bare, s.jid.full, st.type))

    def sent(self, st: Stanza) -> None:
        """§6 "Sending Messages": ``<sent/>`` to the sender's other carbons-enabled resources."""
        frm, to = st.from_, st.to
        if st.origin is None or frm is None:
            return None
        bare = frm.bare
        if bare not in self.enabled or (to is not None and to.bare == bare):
            return None  # to one's own account: the receiving side copies it
        self._copy(st, bare, (st.origin,), "sent")
        return None

    def delivered(self, st: Stanza, targets: list[SessionRef]) -> None:
        """§6 "Receiving Messages": ``<received/>`` to the recipient's carbons-enabled resources
        that did not get the message."""
        to = st.to
        if to is None:
            return
        bare = to.bare
        if bare in self.enabled:
            self._copy(st, bare, (*targets, st.origin), "received")

    def undelivered(self, handled: bool, st: Stanza) -> bool:
        """No resource took the message (RFC 6121 §8.5.2.2): carbons-enabled resources (e.g. of
        negative priority) still get ``<received/>``; the message goes on to offline storage."""
        to = st.to
        if to is not None and to.bare in self.enabled:
            self._copy(st, to.bare, (), "received")
        return handled
