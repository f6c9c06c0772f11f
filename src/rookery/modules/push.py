"""XEP-0357: Push Notifications (the user's server side).

- §4 "Discovering Support": ``urn:xmpp:push:0`` in the disco#info of each account.
- §5 "Enabling Notifications": an iq set to the user's own bare JID with ``<enable jid node/>`` (and
  optionally a ``http://jabber.org/protocol/pubsub#publish-options`` form) registers an App Server's
  XMPP Push Service for the account; enabling the same ``jid``/``node`` again replaces its publish
  options.  The registration is stored with the account and remembered by the session that made it.
  No ``jid`` (or a bad one) is ``bad-request``/``jid-malformed``; another account's is ``forbidden``.
- §6 "Disabling Notifications": ``<disable jid [node]/>`` removes that combination, or every node of
  ``jid`` when ``node`` is absent.
- §7 "Publishing Notifications": a message with a body delivered to a resource that is detached
  (XEP-0198: its connection is lost, the session waits for resumption) notifies the registrations
  that resource made; a message stored offline (no resource took it) notifies every registration of
  the account.  The notification is a pubsub publish iq from the account's bare JID to the service
  JID, through the router (the normal routing path), carrying a ``urn:xmpp:push:summary`` form with
  ``message-count`` (messages since the account last bound a resource) and ``last-message-sender``;
  ``last-message-body`` only with ``[modules.push] include_body = true`` (§9: bodies go through
  third parties).  The stored publish options are sent as ``<publish-options/>``.
- §7.1 "Publish Errors": an iq error in answer to a notification disables that ``jid``/``node``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable
from typing import Any
from xml.etree.ElementTree import Element, SubElement, fromstring

from ..jid import JID, InvalidJID
from ..module import Module, Options, fold, hook, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import serialize

NS = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
XDATA = "jabber:x:data"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
SUMMARY = "urn:xmpp:push:summary"
KEY = "push"
#: published ``ext`` flag of a push-enabled session kept detached (other workers tell its worker what
#: they deliver to it: issue 12)
DETACHED = "push.detached"
#: cluster event: a message was delivered to a detached push-enabled session of another worker
DELIVERED = "push-delivered"
#: cluster event: a registration was disabled on another worker
DISABLED = "push-disabled"


def _form_type(x: Element) -> str | None:
    for f in x.findall(f"{{{XDATA}}}field"):
        if f.get("var") == "FORM_TYPE":
            return f.findtext(f"{{{XDATA}}}value")
    return None


def _field(x: Element, var: str, value: str) -> None:
    f = SubElement(x, f"{{{XDATA}}}field", var=var)
    SubElement(f, f"{{{XDATA}}}value").text = value


class PushOptions(Options):
    #: include the message body (``last-message-body``) in notifications (§9: off by default)
    include_body: bool = False


class Push(Module):
    """XEP-0357 registrations and notifications; see the module docstring."""

    name = "push"
    account_features = [NS]
    Options = PushOptions

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.registrations = ctx.open_store("registrations", "map")
        #: bare JID -> messages notified since the account last bound a resource
        self._counts: dict[str, int] = {}
        #: id of a notification iq -> (host, user, service jid, node), for §7.1 publish errors
        self._sent: dict[str, tuple[str, str, str, str]] = {}
        #: push-enabled sessions kept detached (XEP-0198); the message-delivered hook is installed
        #: only while there are some (the message path pays nothing otherwise)
        self._detached: set[Any] = set()
        #: other workers' sessions that published ``DETACHED`` (full JIDs)
        self._remote: set[str] = set()
        self._hook: Any = None

    # -- §5, §6 --------------------------------------------------------------------------------
    @staticmethod
    def _own(request: Stanza) -> tuple[str, str]:
        to, frm = request.to, request.from_
        if to is None or to.local is None or frm is None or frm.bare != to.bare:
            raise StanzaError("forbidden", "push notifications are set up for your own account")
        return to.domain, to.local

    @staticmethod
    def _service(el: Element) -> str:
        jid = el.get("jid")
        if not jid:
            raise StanzaError("bad-request", "a 'jid' attribute is required")
        try:
            return JID.parse(jid).full
        except InvalidJID:
            raise StanzaError("jid-malformed") from None

    @iq_handler("set", NS, "enable", to="bare")
    async def enable(self, request: Stanza) -> Element:
        host, user = self._own(request)
        el = request.el[0]
        service = self._service(el)
        node = el.get("node", "")
        options = ""
        for x in el.findall(f"{{{XDATA}}}x"):
            if _form_type(x) != PUBLISH_OPTIONS or x.get("type", "submit") != "submit":
                raise StanzaError("bad-request", "only a publish-options form of type submit is accepted")
            options = serialize(x)
        key = json.dumps([service, node])
        await self.registrations.set(host, user, key, options)
        session = request.origin
        if session is not None:
            regs = session.ext.setdefault(KEY, {})
            regs[key] = (service, node, options)
        return request.result()

    @iq_handler("set", NS, "disable", to="bare")
    async def disable(self, request: Stanza) -> Element:
        host, user = self._own(request)
        el = request.el[0]
        service = self._service(el)
        node = el.get("node")
        for key in await self.registrations.keys(host, user):
            s, n = json.loads(key)
            if s == service and (node is None or n == node):
                await self.registrations.delete(host, user, key)
        self.ctx.sessions.broadcast(DISABLED, host, user, service, node)  # other workers' sessions (issue 12)
        self._disabled(host, user, service, node)
        return request.result()

    @hook(DISABLED)
    def _disabled(self, host: str, user: str, service: str, node: str | None) -> None:
        """The registrations kept on this worker's sessions of the account go too."""
        for ref in self.ctx.sessions.resources(f"{user}@{host}").values():
            regs = ref.ext.get(KEY) if ref.where == "local" else None
            if regs:
                for key, (s, n, _o) in list(regs.items()):
                    if s == service and (node is None or n == node):
                        del regs[key]

    # -- §7 triggers ---------------------------------------------------------------------------
    @hook("session-bound")
    def bound(self, session: Any) -> None:
        self._counts.pop(session.jid.bare, None)
        if session.ext.get(DETACHED):  # handed over from another worker to be resumed (issue 12)
            self.ctx.sessions.publish(session, DETACHED, None)

    @fold("session-stream-lost", priority=-100)
    def stream_lost(self, keep: Any, session: Any) -> Any:
        """After stream management decided (priority 0): a push-enabled session kept detached."""
        if keep is True and session.ext.get(KEY):
            self._detached.add(session)
            if self.ctx.sessions.peers():
                self.ctx.sessions.publish(session, DETACHED, True)
            self._hooked()
        return keep

    def _hooked(self) -> None:
        if self._hook is None:
            self._hook = self.ctx.hook("message-delivered", self.delivered)

    # -- workers (issue 12): detached sessions of other workers ---------------------------------
    @hook("session-announced")
    def announced(self, ref: Any) -> None:
        full = ref.jid.full
        if ref.ext.get(DETACHED):
            self._remote.add(full)
            self._hooked()
        elif full in self._remote:
            self._remote.discard(full)
            self._prune()

    @hook("session-gone")
    def gone(self, ref: Any) -> None:
        if ref.jid.full in self._remote:
            self._remote.discard(ref.jid.full)
            self._prune()

    @hook(DELIVERED)
    def delivered_elsewhere(self, full: str, sender: str | None, body: str) -> None:
        """Another worker delivered a message to a detached session of ours."""
        try:
            session = self.ctx.sessions.get(JID.parse(full))
            frm = JID.parse(sender) if sender else None
        except InvalidJID:
            return
        if session is None or session not in self._detached or getattr(session, "attached", True):
            return
        el = Element("message")
        SubElement(el, "body").text = body
        self._notify_session(session, Stanza(el, frm, session.jid))

    @hook("session-ended")
    @hook("session-handed-over")  # resumed on another worker (issue 12)
    def session_ended(self, session: Any) -> None:
        self._detached.discard(session)
        self._prune()

    def _prune(self) -> None:
        for s in [s for s in self._detached if getattr(s, "attached", False) or getattr(s, "ended", False)]:
            self._detached.discard(s)  # resumed or over
            if not s.ended and s.ext.get(DETACHED):
                self.ctx.sessions.publish(s, DETACHED, None)
        if not self._detached and not self._remote and self._hook is not None:
            h, self._hook = self._hook, None
            h.remove()
            if h in self.ctx.handles:
                self.ctx.handles.remove(h)

    def delivered(self, st: Stanza, targets: list[Any]) -> None:
        """A message reached a detached resource (XEP-0198): notify what that resource enabled."""
        detached = self._detached
        for t in targets:
            if st.el.find("body") is None:
                break
            if t in detached and not getattr(t, "attached", True):
                self._notify_session(t, st)
            elif t.where != "local" and t.ext.get(DETACHED):
                frm = st.from_
                self.ctx.sessions.broadcast(DELIVERED, t.jid.full, frm.full if frm is not None else None,
                                            st.el.findtext("body") or "")
        self._prune()

    def _notify_session(self, t: Any, st: Stanza) -> None:
        regs = t.ext.get(KEY)
        if not regs:
            return
        jid = t.jid
        n = self._bump(jid.bare)
        for service, node, options in list(regs.values()):
            self._publish(jid.domain, jid.local, service, node, options, st, n)

    @fold("delivery-failed", priority=-100)
    def stored(self, handled: bool, st: Stanza) -> bool:
        """After offline storage (priority 0) kept a message for an account with no resource."""
        to = st.to
        if handled is True and to is not None and to.local is not None and st.el.find("body") is not None:
            self.ctx.spawn(self._notify_account(to.domain, to.local, st))
        return handled

    async def _notify_account(self, host: str, user: str, st: Stanza) -> None:
        keys = await self.registrations.keys(host, user)
        if not keys:
            return
        n = self._bump(f"{user}@{host}")
        for key in keys:
            options = await self.registrations.get(host, user, key) or ""
            service, node = json.loads(key)
            self._publish(host, user, service, node, options, st, n)

    def _bump(self, bare: str) -> int:
        n = self._counts.get(bare, 0) + 1
        self._counts[bare] = n
        return n

    def _publish(self, host: str, user: str, service: str, node: str, options: str, st: Stanza,
                 count: int) -> None:
        """§7: the pubsub publish of a ``<notification/>`` with the summary form."""
        iq_id = "push-" + secrets.token_hex(8)
        iq = Element("iq", {"type": "set", "from": f"{user}@{host}", "to": service, "id": iq_id})
        pubsub = SubElement(iq, f"{{{PUBSUB}}}pubsub")
        publish = SubElement(pubsub, f"{{{PUBSUB}}}publish")
        if node:
            publish.set("node", node)
        item = SubElement(publish, f"{{{PUBSUB}}}item")
        notification = SubElement(item, f"{{{NS}}}notification")
        x = SubElement(notification, f"{{{XDATA}}}x", type="submit")
        _field(x, "FORM_TYPE", SUMMARY)
        _field(x, "message-count", str(count))
        if st.from_ is not None:
            _field(x, "last-message-sender", st.from_.full)
        if self.ctx.options_for(host).include_body:
            _field(x, "last-message-body", st.el.findtext("body") or "")
        if options:
            po = SubElement(pubsub, f"{{{PUBSUB}}}publish-options")
            po.append(fromstring(options))
        if len(self._sent) > 10000:
            self._sent.clear()
        self._sent[iq_id] = (host, user, service, node)
        r: Awaitable[Any] | None = self.ctx.router.send(iq)
        if r is not None:
            self.ctx.spawn(r)

    # -- §7.1 publish errors -------------------------------------------------------------------
    @hook("iq-error/bare")
    def publish_error(self, st: Stanza) -> bool | None:
        sent = self._sent.pop(st.el.get("id", ""), None)
        if sent is None:
            return None
        host, user, service, node = sent
        self.log.info("push service %s (node %s) answered an error: disabled for %s@%s", service, node,
                      user, host)
        self.ctx.spawn(self.registrations.delete(host, user, json.dumps([service, node])))
        for ref in self.ctx.sessions.resources(f"{user}@{host}").values():
            regs = ref.ext.get(KEY)
            if regs:
                regs.pop(json.dumps([service, node]), None)
        return True

    @hook("iq-result/bare")
    def publish_result(self, st: Stanza) -> bool | None:
        return True if self._sent.pop(st.el.get("id", ""), None) is not None else None
