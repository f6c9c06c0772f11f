"""RFC 6121 §3 (subscriptions, Appendix A, §3.4 pre-approval) and §4 (presence) against a real server,
with raw-XML clients for exact assertions and slixmpp as an independent real client."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest
from xmpp_helpers import RawClient, disconnect, error_condition, slix_client

from rookery.storage.base import RosterItem
from rookery.testing import ProcessServer, RunningServer

C = "{jabber:client}"
ROSTER = "{jabber:iq:roster}"
_ids = itertools.count()


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-workers"])
def im_server(request) -> Iterator[RunningServer]:
    """Every presence rule holds with one process and with two workers (issue 12: consecutive
    connections land on different workers, so contacts and resources are split between them)."""
    d = tempfile.mkdtemp(prefix="rookery-presence-")
    settings = {"modules": ["roster", "presence"]}
    s = (RunningServer(settings, Path(d)) if request.param == 1
         else ProcessServer({**settings, "workers": 2}, Path(d))).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


class IM:
    """A raw client that keeps what it has not looked at yet, so waits can be in any order."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.jid = raw.jid
        self.bare = raw.jid.split("/")[0]
        self.seen: list[Element] = []

    def send(self, xml: str) -> None:
        self.raw.send(xml)

    async def wait(self, pred: Callable[[Element], bool], timeout: float = 5.0) -> Element:
        for i, el in enumerate(self.seen):
            if pred(el):
                return self.seen.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            el = await self.raw.recv(max(0.01, deadline - loop.time()))
            if pred(el):
                return el
            self.seen.append(el)

    async def never(self, pred: Callable[[Element], bool], timeout: float = 0.4) -> None:
        try:
            el = await self.wait(pred, timeout)
        except (TimeoutError, ConnectionError):
            return
        raise AssertionError(f"unexpected {el.tag} {el.attrib}")

    async def iq(self, xml: str) -> Element:
        i = f"q{next(_ids)}"
        self.send(xml.replace("<iq ", f"<iq id='{i}' ", 1))
        return await self.wait(lambda e: e.tag == C + "iq" and e.get("id") == i)

    async def sync(self) -> None:
        """Round trip: the server has finished with everything this client sent before."""
        await self.iq("<iq type='get' to='localhost'><q xmlns='urn:example:sync'/></iq>")

    async def presence(self, frm: str | None = None, ptype: str | None = None, show: str | None = None,
                       timeout: float = 5.0) -> Element:
        return await self.wait(lambda e: is_presence(e, frm, ptype, show), timeout)

    async def push(self, jid: str, timeout: float = 5.0) -> Element:
        """The next roster push about ``jid``; returns its <item/>."""
        iq = await self.wait(lambda e: e.tag == C + "iq" and e.get("type") == "set"
                             and e.find(f"{ROSTER}query/{ROSTER}item[@jid='{jid}']") is not None, timeout)
        self.send(f"<iq type='result' id='{iq.get('id')}'/>")
        item = iq.find(f"{ROSTER}query/{ROSTER}item")
        assert item is not None
        return item

    async def roster(self) -> dict[str, Element]:
        r = await self.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        return {i.get("jid", ""): i for i in r.iter(ROSTER + "item")}

    async def close(self) -> None:
        self.send("</stream:stream>")
        await self.raw.close()


def is_presence(el: Element, frm: str | None = None, ptype: str | None = None, show: str | None = None) -> bool:
    """``ptype`` None matches available presence (no type attribute)."""
    return (el.tag == C + "presence" and (frm is None or el.get("from") == frm)
            and el.get("type") == ptype and (show is None or el.findtext(C + "show") == show))


async def login(server: RunningServer, jid: str, pw: str, resource: str = "r", *, roster: bool = True,
                presence: str | None = "<presence/>") -> IM:
    """Log in; request the roster (interested resource) and send initial presence (available)."""
    c = IM(await RawClient().login(server.c2s_port, jid, pw, resource))
    if roster:
        await c.roster()
    if presence is not None:
        c.send(presence)
        await c.presence(frm=c.jid)  # the server's echo to our own available resources
    return c


def set_roster(server: RunningServer, owner: str, contact: str, subscription: str, ask: bool = False,
               approved: bool = False) -> None:
    user, host = owner.split("@")
    item = RosterItem(contact, subscription=subscription, ask=ask, approved=approved)
    server.call(server.server.storage.roster.set_item, host, user, item)


def friends(server: RunningServer, a: str, b: str) -> None:
    """A mutual ("both") subscription, written straight to storage (before either logs in)."""
    set_roster(server, a, b, "both")
    set_roster(server, b, a, "both")


def users(server: RunningServer, n: int) -> list[tuple[str, str]]:
    return [server.make_user() for _ in range(n)]


def sub_of(item: Element) -> tuple[str | None, str | None, str | None]:
    return item.get("subscription"), item.get("ask"), item.get("approved")


# -- §3.1 requesting and approving a subscription --------------------------------------------------
async def test_subscribe_creates_pending_out_item_and_reaches_contact_from_bare_jid(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    ca.send(f"<presence to='{b}/ignored-resource' type='subscribe' id='s1'/>")
    item = await ca.push(b)  # §3.1.2: roster push with ask='subscribe'
    assert sub_of(item) == ("none", "subscribe", None)
    req = await cb.presence(frm=a, ptype="subscribe")
    assert req.get("to") == b and req.get("id") == "s1"  # §3.1.2: from stamped to the bare JID
    assert (await cb.roster()) == {}  # §3.1.3: no roster item for an inbound request
    await ca.close()
    await cb.close()


async def test_approving_subscription_pushes_from_and_to_and_sends_contact_presence(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca = await login(im_server, a, pa)
    cb = await login(im_server, b, pb, presence="<presence><show>dnd</show></presence>")
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    assert sub_of(await ca.push(b)) == ("none", "subscribe", None)
    await cb.presence(frm=a, ptype="subscribe")
    cb.send(f"<presence to='{a}' type='subscribed'/>")
    assert sub_of(await cb.push(a)) == ("from", None, None)  # §3.1.5 contact's roster push
    ok = await ca.presence(frm=b, ptype="subscribed")
    assert ok.get("to") == a
    assert sub_of(await ca.push(b)) == ("to", None, None)  # §3.1.6
    p = await ca.presence(frm=cb.jid)  # §3.1.5: the contact's available resources' presence
    assert p.findtext(C + "show") == "dnd"
    await ca.close()
    await cb.close()


async def test_inbound_approval_goes_to_interested_resources_before_the_roster_push(im_server):
    """RFC 6121 §3.1.6: the approval is delivered to the user's *interested* resources (a resource that
    fetched the roster but sent no presence included; one that is available but never asked for the
    roster excluded), and before the roster push."""
    (a, pa), (b, pb) = users(im_server, 2)
    fetched = await login(im_server, a, pa, "fetched", presence=None)  # interested, not available
    avail = await login(im_server, a, pa, "avail", roster=False)  # available, not interested
    cb = await login(im_server, b, pb)
    fetched.send(f"<presence type='subscribe' to='{b}'/>")
    assert sub_of(await fetched.push(b)) == ("none", "subscribe", None)
    await cb.presence(frm=a, ptype="subscribe")
    cb.send(f"<presence type='subscribed' to='{a}'/>")
    first = await fetched.wait(lambda e: is_presence(e, frm=b, ptype="subscribed")
                               or (e.tag == C + "iq" and e.get("type") == "set"))
    assert is_presence(first, frm=b, ptype="subscribed"), first.attrib
    assert sub_of(await fetched.push(b))[0] == "to"
    await avail.never(lambda e: is_presence(e, frm=b, ptype="subscribed"))
    for c in (fetched, avail, cb):
        await c.close()


async def test_mutual_subscription_ends_in_both(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await cb.presence(frm=a, ptype="subscribe")
    cb.send(f"<presence to='{a}' type='subscribed'/>")
    cb.send(f"<presence to='{a}' type='subscribe'/>")
    await ca.presence(frm=b, ptype="subscribe")
    ca.send(f"<presence to='{b}' type='subscribed'/>")
    await ca.sync()
    await cb.sync()
    await asyncio.sleep(0.1)
    assert sub_of((await ca.roster())[b]) == ("both", None, None)
    assert sub_of((await cb.roster())[a]) == ("both", None, None)
    await ca.close()
    await cb.close()


async def test_subscribe_when_contact_already_grants_it_is_answered_by_the_server(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    set_roster(im_server, a, b, "none", ask=True)  # A's side lost the approval
    set_roster(im_server, b, a, "from")
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await ca.presence(frm=b, ptype="subscribed")  # §3.1.3 auto-reply on the contact's behalf
    assert sub_of(await ca.push(b)) == ("to", None, None)
    await cb.never(lambda e: is_presence(e, a, "subscribe"))
    await ca.close()
    await cb.close()


async def test_subscribe_when_already_subscribed_changes_nothing(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    set_roster(im_server, a, b, "to")
    set_roster(im_server, b, a, "from")
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await cb.never(lambda e: is_presence(e, a, "subscribe"))
    await ca.never(lambda e: is_presence(e, b, "subscribed"))  # A.3.3 "To": not delivered
    await ca.never(lambda e: e.tag == C + "iq" and e.get("type") == "set")
    await ca.close()
    await cb.close()


async def test_subscription_request_to_offline_contact_is_delivered_at_each_login_until_answered(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca = await login(im_server, a, pa)
    ca.send(f"<presence to='{b}' type='subscribe'><status>let me in</status></presence>")
    await ca.push(b)
    await ca.sync()
    cb = await login(im_server, b, pb, presence=None)
    await cb.never(lambda e: is_presence(e, a, "subscribe"))  # not before initial presence
    cb.send("<presence/>")
    req = await cb.presence(frm=a, ptype="subscribe")  # §3.1.3: delivered when available
    assert req.findtext(C + "status") == "let me in"
    await cb.close()
    cb = await login(im_server, b, pb, resource="again")
    await cb.presence(frm=a, ptype="subscribe")  # still pending: delivered again
    cb.send(f"<presence to='{a}' type='subscribed'/>")
    await cb.push(a)
    await cb.close()
    cb = await login(im_server, b, pb, resource="third")
    await cb.never(lambda e: is_presence(e, a, "subscribe"))
    await ca.close()
    await cb.close()


async def test_repeated_subscribe_while_pending_is_not_delivered_twice(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await cb.presence(frm=a, ptype="subscribe")
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await cb.never(lambda e: is_presence(e, a, "subscribe"))  # A.3.1 "None + Pending In": no
    await ca.close()
    await cb.close()


async def test_denying_request_clears_ask_and_notifies_requester(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await ca.push(b)
    await cb.presence(frm=a, ptype="subscribe")
    cb.send(f"<presence to='{a}' type='unsubscribed'/>")
    await ca.presence(frm=b, ptype="unsubscribed")
    assert sub_of(await ca.push(b)) == ("none", None, None)  # A.3.4 "None + Pending Out" -> "None"
    await cb.never(lambda e: e.tag == C + "iq" and e.get("type") == "set")  # B had no item: no push
    await ca.close()
    await cb.close()


# -- §3.2 / §3.3 cancelling and unsubscribing ---------------------------------------------------------
async def test_cancelling_subscription_pushes_both_sides_and_sends_unavailable(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    set_roster(im_server, a, b, "to")
    set_roster(im_server, b, a, "from")
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    await ca.presence(frm=cb.jid)
    cb.send(f"<presence to='{a}' type='unsubscribed'/>")
    assert sub_of(await cb.push(a)) == ("none", None, None)  # A.2.4 "From" -> "None"
    await ca.presence(frm=b, ptype="unsubscribed")
    assert sub_of(await ca.push(b)) == ("none", None, None)  # A.3.4 "To" -> "None"
    await ca.presence(frm=cb.jid, ptype="unavailable")  # §3.2.2
    await ca.close()
    await cb.close()


async def test_unsubscribing_pushes_both_sides_and_contact_sends_unavailable(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    await ca.presence(frm=cb.jid)
    ca.send(f"<presence to='{b}' type='unsubscribe'/>")
    assert sub_of(await ca.push(b)) == ("from", None, None)  # A.2.2 "Both" -> "From"
    await cb.presence(frm=a, ptype="unsubscribe")
    assert sub_of(await cb.push(a)) == ("to", None, None)  # A.3.2 "Both" -> "To"
    await ca.presence(frm=cb.jid, ptype="unavailable")  # §3.3.3
    # B still receives A's presence ("from" on A's side)
    ca.send("<presence><show>away</show></presence>")
    await cb.presence(frm=ca.jid, show="away")
    cb.send("<presence><show>xa</show></presence>")
    await ca.never(lambda e: is_presence(e, cb.jid, show="xa"))
    await ca.close()
    await cb.close()


# -- §3.4 pre-approval ------------------------------------------------------------------------------
async def test_pre_approved_request_is_approved_by_the_server(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    cb.send(f"<presence to='{a}' type='subscribed'/>")
    assert sub_of(await cb.push(a)) == ("none", None, "true")  # §3.4.2
    await ca.never(lambda e: is_presence(e, b, "subscribed"))  # a pre-approval is not routed
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await ca.presence(frm=b, ptype="subscribed")
    await cb.never(lambda e: is_presence(e, a, "subscribe"))
    assert sub_of(await cb.push(a)) == ("from", None, None)
    await ca.presence(frm=cb.jid)  # B's presence follows the approval
    await ca.close()
    await cb.close()


async def test_unsubscribed_cancels_a_pre_approval(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    cb.send(f"<presence to='{a}' type='subscribed'/>")
    await cb.push(a)
    cb.send(f"<presence to='{a}' type='unsubscribed'/>")
    assert sub_of(await cb.push(a)) == ("none", None, None)
    await ca.never(lambda e: is_presence(e, b, "unsubscribed"))
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await cb.presence(frm=a, ptype="subscribe")  # a normal request again
    await ca.close()
    await cb.close()


async def test_subscription_stanzas_to_own_bare_jid_are_ignored(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    for t in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
        ca.send(f"<presence to='{a}' type='{t}'/>")
    await ca.sync()
    await ca.never(lambda e: True)
    assert await ca.roster() == {}
    await ca.close()


async def test_subscribe_to_missing_account_is_silently_ignored(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    ca.send("<presence to='nobody-here@localhost' type='subscribe'/>")
    assert sub_of(await ca.push("nobody-here@localhost")) == ("none", "subscribe", None)
    await ca.never(lambda e: e.tag == C + "presence")  # §8.5.1: no error, no answer
    await ca.close()


# -- §4.2 initial presence, §4.3 probes --------------------------------------------------------------
async def test_initial_presence_goes_to_subscribers_and_own_resources_not_to_others(im_server):
    (a, pa), (b, pb), (c, pc), (d, pd) = users(im_server, 4)
    set_roster(im_server, a, b, "from")
    set_roster(im_server, b, a, "to")
    set_roster(im_server, a, c, "to")  # A receives C's presence, C does not receive A's
    set_roster(im_server, c, a, "from")
    cb, cc, cd = await login(im_server, b, pb), await login(im_server, c, pc), await login(im_server, d, pd)
    a1 = await login(im_server, a, pa, resource="one")
    a2 = await login(im_server, a, pa, resource="two", presence=None)
    a2.send("<presence><status>hi</status><priority>5</priority></presence>")
    p = await cb.presence(frm=a2.jid)
    assert p.get("to") == b and p.findtext(C + "status") == "hi"
    await a1.presence(frm=a2.jid)  # §4.2.2: the user's other available resources
    await a2.presence(frm=a2.jid)  # ... including the sender
    await a2.presence(frm=a1.jid)  # and the new resource learns about the others
    await cc.never(lambda e: is_presence(e, a2.jid))
    await cd.never(lambda e: is_presence(e, a2.jid))
    for x in (a1, a2, cb, cc, cd):
        await x.close()


async def test_initial_presence_probes_contacts_and_receives_their_current_presence(im_server):
    (a, pa), (b, pb), (c, pc) = users(im_server, 3)
    friends(im_server, a, b)
    set_roster(im_server, a, c, "from")  # C does not share its presence with A
    set_roster(im_server, c, a, "to")
    cb = await login(im_server, b, pb, presence="<presence><show>chat</show><status>b here</status></presence>")
    cc = await login(im_server, c, pc)
    ca = await login(im_server, a, pa)
    p = await ca.presence(frm=cb.jid)
    assert p.findtext(C + "status") == "b here" and p.get("to") == ca.jid
    await ca.never(lambda e: is_presence(e, cc.jid))
    for x in (ca, cb, cc):
        await x.close()


async def test_probe_of_offline_contact_is_answered_with_its_last_unavailable_presence(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    cb = await login(im_server, b, pb, resource="gone")
    cb.send("<presence type='unavailable'><status>on holiday</status></presence>")
    await cb.sync()
    await cb.close()
    ca = await login(im_server, a, pa)
    p = await ca.presence(frm=f"{b}/gone", ptype="unavailable")  # §4.3.2
    assert p.findtext(C + "status") == "on holiday"
    await ca.close()


async def test_probe_of_never_seen_contact_is_answered_unavailable_from_bare_jid(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    ca = await login(im_server, a, pa)
    await ca.presence(frm=b, ptype="unavailable")
    await ca.close()


async def test_probe_without_subscription_gets_unsubscribed_and_no_presence(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    cb = await login(im_server, b, pb)
    ca = await login(im_server, a, pa)
    ca.send(f"<presence to='{b}' type='probe'/>")
    # §4.3.2: nothing revealed; the "unsubscribed" answer changes nothing on A's side (A.3.4 "None")
    await ca.never(lambda e: e.tag == C + "presence" and e.get("from", "").startswith(b))
    await ca.close()
    await cb.close()


async def test_stale_to_subscription_is_repaired_by_probe_answer(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    set_roster(im_server, a, b, "to")  # B's roster does not agree
    ca = await login(im_server, a, pa)
    assert sub_of(await ca.push(b)) == ("none", None, None)
    await ca.close()


# -- §4.4 subsequent presence, §4.5 unavailable ------------------------------------------------------
async def test_subsequent_presence_is_broadcast_to_subscribers(im_server):
    (a, pa), (b, pb), (c, pc) = users(im_server, 3)
    friends(im_server, a, b)
    ca, cb, cc = await login(im_server, a, pa), await login(im_server, b, pb), await login(im_server, c, pc)
    ca.send("<presence><show>away</show><status>lunch</status></presence>")
    p = await cb.presence(frm=ca.jid, show="away")
    assert p.findtext(C + "status") == "lunch"
    await cc.never(lambda e: is_presence(e, ca.jid))
    for x in (ca, cb, cc):
        await x.close()


async def test_unavailable_presence_is_broadcast_to_subscribers_and_own_resources(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    cb = await login(im_server, b, pb)
    a1, a2 = await login(im_server, a, pa, resource="1"), await login(im_server, a, pa, resource="2")
    a1.send("<presence type='unavailable'><status>bye</status></presence>")
    p = await cb.presence(frm=a1.jid, ptype="unavailable")
    assert p.findtext(C + "status") == "bye"
    await a2.presence(frm=a1.jid, ptype="unavailable")
    # a1 is no longer available: subsequent broadcasts skip it
    a2.send("<presence><show>away</show></presence>")
    await cb.presence(frm=a2.jid, show="away")
    await a1.never(lambda e: is_presence(e, a2.jid, show="away"))
    for x in (a1, a2, cb):
        await x.close()


async def test_closing_the_stream_broadcasts_unavailable(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    await ca.close()
    await cb.presence(frm=ca.jid, ptype="unavailable")  # §4.5.3
    await cb.close()


async def test_abrupt_disconnect_broadcasts_unavailable(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    ca.raw.writer.transport.abort()  # no </stream:stream>, no TCP goodbye
    await cb.presence(frm=ca.jid, ptype="unavailable")  # §4.5.3.1
    await cb.close()


async def test_session_that_never_sent_presence_broadcasts_nothing_when_it_ends(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    cb = await login(im_server, b, pb)
    ca = await login(im_server, a, pa, presence=None)
    await ca.close()
    await cb.never(lambda e: is_presence(e, ca.jid, "unavailable"))
    await cb.close()


# -- §4.6 directed presence -----------------------------------------------------------------------------
async def test_directed_presence_is_delivered_and_followed_by_unavailable_when_session_ends(im_server):
    (a, pa), (c, pc) = users(im_server, 2)
    cc = await login(im_server, c, pc)
    ca = await login(im_server, a, pa)
    ca.send(f"<presence to='{c}'><status>psst</status></presence>")
    p = await cc.presence(frm=ca.jid)
    assert p.findtext(C + "status") == "psst"
    ca.send("<presence><show>away</show></presence>")  # broadcast: C is no contact
    await cc.never(lambda e: is_presence(e, ca.jid))
    ca.raw.writer.transport.abort()
    await cc.presence(frm=ca.jid, ptype="unavailable")  # §4.6.3
    await cc.close()


async def test_directed_presence_to_full_jid_and_directed_unavailable(im_server):
    (a, pa), (c, pc) = users(im_server, 2)
    cc = await login(im_server, c, pc)
    ca = await login(im_server, a, pa, presence=None)  # directed presence needs no initial presence
    ca.send(f"<presence to='{cc.jid}'/>")
    await cc.presence(frm=ca.jid)
    ca.send(f"<presence to='{cc.jid}' type='unavailable'/>")
    await cc.presence(frm=ca.jid, ptype="unavailable")
    await ca.close()
    await cc.never(lambda e: is_presence(e, ca.jid, "unavailable"))  # no longer on the directed list
    await cc.close()


async def test_unavailable_broadcast_reaches_directed_presence_recipients(im_server):
    (a, pa), (c, pc) = users(im_server, 2)
    cc = await login(im_server, c, pc)
    ca = await login(im_server, a, pa)
    ca.send(f"<presence to='{c}'/>")
    await cc.presence(frm=ca.jid)
    ca.send("<presence type='unavailable'/>")
    await cc.presence(frm=ca.jid, ptype="unavailable")
    await ca.close()
    await cc.never(lambda e: is_presence(e, ca.jid, "unavailable"))  # sent once only
    await cc.close()


async def test_directed_presence_to_full_jid_of_offline_resource_is_dropped(im_server):
    (a, pa), (c, pc) = users(im_server, 2)
    cc = await login(im_server, c, pc)
    ca = await login(im_server, a, pa)
    ca.send(f"<presence to='{c}/not-connected'/>")
    await cc.never(lambda e: is_presence(e, ca.jid))
    await ca.never(lambda e: e.tag == C + "presence" and e.get("type") == "error")
    await ca.close()
    await cc.close()


# -- §4.7 syntax: priority, types; errors; presence to oneself -------------------------------------------
@pytest.mark.parametrize("prio", ["128", "-129", "high", ""])
async def test_bad_priority_is_bad_request(im_server, prio):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa, presence=None)
    ca.send(f"<presence id='p1'><priority>{prio}</priority></presence>")
    err = await ca.presence(ptype="error")
    assert error_condition(err) == "bad-request" and err.get("id") == "p1"
    await ca.close()


async def test_unknown_presence_type_is_bad_request(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    ca.send("<presence id='x' type='invisible'/>")
    err = await ca.presence(ptype="error")
    assert error_condition(err) == "bad-request"
    await ca.close()


async def test_negative_priority_resource_receives_presence_but_not_bare_jid_messages(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    low = await login(im_server, a, pa, resource="low", presence="<presence><priority>-1</priority></presence>")
    high = await login(im_server, a, pa, resource="high")
    cb = await login(im_server, b, pb)
    await low.presence(frm=cb.jid)  # presence goes to every available resource (§8.5.2.1.1)
    cb.send(f"<message to='{a}' type='chat'><body>hello</body></message>")
    await high.wait(lambda e: e.tag == C + "message")
    await low.never(lambda e: e.tag == C + "message")
    for x in (low, high, cb):
        await x.close()


async def test_presence_error_is_routed_to_its_addressee_not_broadcast(im_server):
    (a, pa), (b, pb), (c, pc) = users(im_server, 3)
    friends(im_server, a, c)
    cb, cc = await login(im_server, b, pb), await login(im_server, c, pc)
    ca = await login(im_server, a, pa)
    ca.send(f"<presence to='{cb.jid}' type='error'><error type='cancel'>"
            "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>")
    err = await cb.presence(frm=ca.jid, ptype="error")
    assert error_condition(err) == "service-unavailable"
    await cc.never(lambda e: is_presence(e, ca.jid, "error"))
    for x in (ca, cb, cc):
        await x.close()


async def test_presence_to_own_bare_jid_is_a_broadcast(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    friends(im_server, a, b)
    cb = await login(im_server, b, pb)
    ca = await login(im_server, a, pa, presence=None)
    ca.send(f"<presence to='{a}'><show>xa</show></presence>")
    assert (await cb.presence(frm=ca.jid)).findtext(C + "show") == "xa"
    await ca.presence(frm=ca.jid)
    await ca.close()
    await cb.close()


async def test_probe_to_own_bare_jid_returns_own_other_resources(im_server):
    (a, pa), = users(im_server, 1)
    a1 = await login(im_server, a, pa, resource="1", presence="<presence><status>one</status></presence>")
    a2 = await login(im_server, a, pa, resource="2")
    await a2.presence(frm=a1.jid)
    a2.send(f"<presence to='{a}' type='probe'/>")
    assert (await a2.presence(frm=a1.jid)).findtext(C + "status") == "one"
    await a1.close()
    await a2.close()


# -- with a real client ------------------------------------------------------------------------------------
async def test_slixmpp_clients_subscribe_to_each_other_and_see_each_other_online(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    xa = await slix_client(im_server, a, pa, presence=False)
    xb = await slix_client(im_server, b, pb, presence=False)
    try:
        for x in (xa, xb):
            x.roster.auto_authorize = True
            x.roster.auto_subscribe = True
            await x.get_roster()
            x.send_presence()
        online: asyncio.Future = asyncio.get_running_loop().create_future()

        def got_online(pres) -> None:  # type: ignore[no-untyped-def]
            if pres["from"].bare == b and not online.done():
                online.set_result(pres)

        xa.add_event_handler("got_online", got_online)
        xa.send_presence(pto=b, ptype="subscribe")
        await asyncio.wait_for(online, 10)
        for _ in range(50):
            if xa.client_roster[b]["subscription"] == "both" and xb.client_roster[a]["subscription"] == "both":
                break
            await asyncio.sleep(0.1)
        assert xa.client_roster[b]["subscription"] == "both"
        assert xb.client_roster[a]["subscription"] == "both"
    finally:
        await disconnect(xa, xb)
