"""RFC 6121 Appendix A: every subscription state x every subscription stanza, both directions,
checked against the tables of A.2 (user's server, outbound) and A.3 (user's server, inbound); plus
the §3.4 pre-approval rows, priority parsing (§4.7.2.3) and roster set validation (§2.3.3)."""

from __future__ import annotations

from dataclasses import replace
from xml.etree.ElementTree import Element, SubElement, fromstring

import pytest

from rookery.modules.presence import SubState, apply_state, inbound, outbound, parse_priority
from rookery.modules.roster import item_element, parse_roster_set
from rookery.stanza import StanzaError
from rookery.storage.base import RosterItem

STATES = {
    "None": SubState(),
    "None + Pending Out": SubState(pending_out=True),
    "None + Pending In": SubState(pending_in=True),
    "None + Pending Out+In": SubState(pending_out=True, pending_in=True),
    "To": SubState(to=True),
    "To + Pending In": SubState(to=True, pending_in=True),
    "From": SubState(from_=True),
    "From + Pending Out": SubState(from_=True, pending_out=True),
    "Both": SubState(to=True, from_=True),
}

# (existing state, route?, new state) -- RFC 6121 A.2.1 .. A.2.4
OUTBOUND = {
    "subscribe": [
        ("None", True, "None + Pending Out"),
        ("None + Pending Out", True, "None + Pending Out"),
        ("None + Pending In", True, "None + Pending Out+In"),
        ("None + Pending Out+In", True, "None + Pending Out+In"),
        ("To", True, "To"),
        ("To + Pending In", True, "To + Pending In"),
        ("From", True, "From + Pending Out"),
        ("From + Pending Out", True, "From + Pending Out"),
        ("Both", True, "Both"),
    ],
    "unsubscribe": [
        ("None", True, "None"),
        ("None + Pending Out", True, "None"),
        ("None + Pending In", True, "None + Pending In"),
        ("None + Pending Out+In", True, "None + Pending In"),
        ("To", True, "None"),
        ("To + Pending In", True, "None + Pending In"),
        ("From", True, "From"),
        ("From + Pending Out", True, "From"),
        ("Both", True, "From"),
    ],
    "subscribed": [
        ("None + Pending In", True, "From"),
        ("None + Pending Out+In", True, "From + Pending Out"),
        ("To + Pending In", True, "Both"),
        ("From", False, "From"),
        ("From + Pending Out", False, "From + Pending Out"),
        ("Both", False, "Both"),
    ],
    "unsubscribed": [
        ("None", False, "None"),
        ("None + Pending Out", False, "None + Pending Out"),
        ("None + Pending In", True, "None"),
        ("None + Pending Out+In", True, "None + Pending Out"),
        ("To", False, "To"),
        ("To + Pending In", True, "To"),
        ("From", True, "None"),
        ("From + Pending Out", True, "None + Pending Out"),
        ("Both", True, "To"),
    ],
}

# (existing state, deliver?, new state) -- RFC 6121 A.3.1 .. A.3.4
INBOUND = {
    "subscribe": [
        ("None", True, "None + Pending In"),
        ("None + Pending Out", True, "None + Pending Out+In"),
        ("None + Pending In", False, "None + Pending In"),
        ("None + Pending Out+In", False, "None + Pending Out+In"),
        ("To", True, "To + Pending In"),
        ("To + Pending In", False, "To + Pending In"),
        ("From", False, "From"),
        ("From + Pending Out", False, "From + Pending Out"),
        ("Both", False, "Both"),
    ],
    "unsubscribe": [
        ("None", False, "None"),
        ("None + Pending Out", False, "None + Pending Out"),
        ("None + Pending In", True, "None"),
        ("None + Pending Out+In", True, "None + Pending Out"),
        ("To", False, "To"),
        ("To + Pending In", True, "To"),
        ("From", True, "None"),
        ("From + Pending Out", True, "None + Pending Out"),
        ("Both", True, "To"),
    ],
    "subscribed": [
        ("None", False, "None"),
        ("None + Pending Out", True, "To"),
        ("None + Pending In", False, "None + Pending In"),
        ("None + Pending Out+In", True, "To + Pending In"),
        ("To", False, "To"),
        ("To + Pending In", False, "To + Pending In"),
        ("From", False, "From"),
        ("From + Pending Out", True, "Both"),
        ("Both", False, "Both"),
    ],
    "unsubscribed": [
        ("None", False, "None"),
        ("None + Pending Out", True, "None"),
        ("None + Pending In", False, "None + Pending In"),
        ("None + Pending Out+In", True, "None + Pending In"),
        ("To", True, "None"),
        ("To + Pending In", True, "None + Pending In"),
        ("From", False, "From"),
        ("From + Pending Out", True, "From"),
        ("Both", True, "From"),
    ],
}


def _rows(table: dict) -> list:
    return [(ptype, *row) for ptype, rows in table.items() for row in rows]


def test_state_names_match_appendix_a():
    for name, state in STATES.items():
        assert state.name == name


@pytest.mark.parametrize("ptype,old,route,new", _rows(OUTBOUND))
def test_outbound_transition_follows_appendix_a2(ptype, old, route, new):
    t = outbound(STATES[old], ptype)
    assert (t.forward, t.state.name, t.auto_reply) == (route, new, None)


@pytest.mark.parametrize("ptype,old,deliver,new", _rows(INBOUND))
def test_inbound_transition_follows_appendix_a3(ptype, old, deliver, new):
    t = inbound(STATES[old], ptype)
    assert (t.forward, t.state.name) == (deliver, new)


@pytest.mark.parametrize("old", ["From", "From + Pending Out", "Both"])
def test_inbound_subscribe_with_existing_from_subscription_is_auto_approved(old):
    assert inbound(STATES[old], "subscribe").auto_reply == "subscribed"


@pytest.mark.parametrize("old", ["None", "None + Pending Out", "To"])
def test_outbound_subscribed_without_request_is_a_pre_approval_and_not_routed(old):
    t = outbound(STATES[old], "subscribed")
    assert not t.forward and t.state.approved and t.state.name == old


@pytest.mark.parametrize("old,new", [("None", "From"), ("None + Pending Out", "From + Pending Out"), ("To", "Both")])
def test_inbound_subscribe_after_pre_approval_is_auto_approved(old, new):
    t = inbound(replace(STATES[old], approved=True), "subscribe")
    assert (t.forward, t.auto_reply, t.state.name, t.state.approved) == (False, "subscribed", new, False)


def test_outbound_unsubscribed_cancels_a_pre_approval_without_routing():
    t = outbound(SubState(approved=True), "unsubscribed")
    assert not t.forward and not t.state.approved


def test_state_round_trips_through_a_roster_item():
    for name, state in STATES.items():
        item = apply_state(None, "c@example.com", state)
        assert SubState.of(item, state.pending_in).name == name
        assert item.ask == state.pending_out
    item = apply_state(RosterItem("c@example.com", name="C", groups=["g"]), "c@example.com", STATES["Both"])
    assert (item.name, item.groups, item.subscription) == ("C", ["g"], "both")


@pytest.mark.parametrize("text,value", [(None, 0), ("5", 5), (" -128 ", -128), ("127", 127), ("+3", 3)])
def test_priority_accepts_integers_in_range(text, value):
    el = Element("presence")
    if text is not None:
        SubElement(el, "priority").text = text
    assert parse_priority(el) == value


@pytest.mark.parametrize("text", ["128", "-129", "high", "", "1.5", "٣"])
def test_priority_out_of_range_or_not_an_integer_is_bad_request(text):
    el = Element("presence")
    SubElement(el, "priority").text = text
    with pytest.raises(StanzaError) as e:
        parse_priority(el)
    assert e.value.condition == "bad-request"


def _query(inner: str) -> Element:
    return fromstring(f"<query xmlns='jabber:iq:roster'>{inner}</query>")


def test_roster_set_parses_name_and_groups_and_normalizes_jid():
    r = parse_roster_set(_query("<item jid='Nurse@Example.COM' name='N'><group>A</group><group>B</group></item>"))
    assert (r.jid, r.remove, r.name, r.groups) == ("nurse@example.com", False, "N", ["A", "B"])


def test_roster_set_ignores_subscription_other_than_remove_and_ask():
    r = parse_roster_set(_query("<item jid='a@b' subscription='both' ask='subscribe' approved='true'/>"))
    assert not r.remove and r.jid == "a@b"
    assert parse_roster_set(_query("<item jid='a@b' subscription='remove'/>")).remove


@pytest.mark.parametrize("inner,condition", [
    ("", "bad-request"),
    ("<item jid='a@b'/><item jid='c@d'/>", "bad-request"),
    ("<item/>", "bad-request"),
    ("<item jid='@@'/>", "jid-malformed"),
    ("<item jid='a@b/res'/>", "bad-request"),
    ("<item jid='a@b'><group>x</group><group>x</group></item>", "bad-request"),
    ("<item jid='a@b'><group/></item>", "not-acceptable"),
    ("<item jid='a@b'><group>" + "g" * 1024 + "</group></item>", "not-acceptable"),
    ("<item jid='a@b' name='" + "n" * 1024 + "'/>", "not-acceptable"),
])
def test_invalid_roster_set_is_rejected_with_the_rfc_6121_condition(inner, condition):
    with pytest.raises(StanzaError) as e:
        parse_roster_set(_query(inner))
    assert e.value.condition == condition


def test_item_element_carries_ask_approved_and_groups():
    el = item_element(RosterItem("a@b", name="A", subscription="none", ask=True, approved=True, groups=["g"]))
    assert el.attrib == {"jid": "a@b", "subscription": "none", "name": "A", "ask": "subscribe", "approved": "true"}
    assert [g.text for g in el] == ["g"]
    assert item_element("a@b").attrib == {"jid": "a@b", "subscription": "remove"}
