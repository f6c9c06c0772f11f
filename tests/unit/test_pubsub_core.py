"""The pure parts of the publish-subscribe core (XEP-0060): configuration forms, max_items, paging."""

from __future__ import annotations

from xml.etree.ElementTree import fromstring

import pytest

from rookery.pubsub.core import (
    NODE_CONFIG,
    Item,
    Node,
    Service,
    build_form,
    coerce,
    parse_config,
)
from rookery.pubsub.engine import PubSubEngine
from rookery.stanza import StanzaError


def test_max_items_accepts_numbers_within_the_limit_and_max():
    assert coerce("pubsub#max_items", ["5"], 10) == "5"
    assert coerce("pubsub#max_items", ["max"], 10) == "max"
    for bad in ("0", "11", "-1", "many", ""):
        with pytest.raises(ValueError):
            coerce("pubsub#max_items", [bad], 10)


def test_booleans_and_list_singles_are_checked():
    assert coerce("pubsub#persist_items", ["1"], 10) is True
    assert coerce("pubsub#persist_items", ["false"], 10) is False
    with pytest.raises(ValueError):
        coerce("pubsub#persist_items", ["yes"], 10)
    assert coerce("pubsub#access_model", ["whitelist"], 10) == "whitelist"
    with pytest.raises(ValueError):
        coerce("pubsub#access_model", ["friends"], 10)


def test_config_form_round_trip_ignores_unknown_fields_and_refuses_collections():
    x = build_form(NODE_CONFIG, {"pubsub#title": "T", "pubsub#max_items": "3", "pubsub#deliver_payloads": False,
                                 "pubsub#roster_groups_allowed": ["A", "B"]}, type="submit")
    x.append(fromstring("<field xmlns='jabber:x:data' var='x-unknown'><value>1</value></field>"))
    cfg = parse_config(x, 10)
    assert cfg == {"pubsub#title": "T", "pubsub#max_items": "3", "pubsub#deliver_payloads": False,
                   "pubsub#roster_groups_allowed": ["A", "B"]}
    with pytest.raises(KeyError):
        parse_config(x, 10, strict=True)
    coll = build_form(NODE_CONFIG, {"pubsub#node_type": "collection"}, type="submit")
    with pytest.raises(StanzaError) as e:
        parse_config(coll, 10)
    assert e.value.condition == "feature-not-implemented"


def test_publishing_past_max_items_drops_the_oldest_and_same_id_replaces():
    svc = Service("pubsub.example.org")
    node = Node("n", {"pubsub#max_items": "2"})
    for i in ("a", "b", "c"):
        dropped = svc.add_item(node, Item(i, "x@example.org", None, 0.0), 100)
    assert [d.id for d in dropped] == ["a"]
    assert list(node.items) == ["b", "c"]
    svc.add_item(node, Item("b", "x@example.org", "<p/>", 1.0), 100)
    assert list(node.items) == ["c", "b"]  # replaced, now the newest
    node.config["pubsub#max_items"] = "max"
    assert node.max_items(7) == 7


def _items(*ids: str) -> list[Item]:
    return [Item(i, "", None, 0.0) for i in ids]


def _rsm(body: str):
    return fromstring(f"<set xmlns='http://jabber.org/protocol/rsm'>{body}</set>")


def test_rsm_pages_forward_and_backward():
    items = _items("e", "d", "c", "b", "a")  # newest first
    page, out = PubSubEngine._page(items, _rsm("<max>2</max>"))
    assert [i.id for i in page] == ["e", "d"]
    assert out.find("{http://jabber.org/protocol/rsm}count").text == "5"
    page, _ = PubSubEngine._page(items, _rsm("<max>2</max><after>d</after>"))
    assert [i.id for i in page] == ["c", "b"]
    page, _ = PubSubEngine._page(items, _rsm("<max>2</max><before/>"))
    assert [i.id for i in page] == ["b", "a"]
    page, _ = PubSubEngine._page(items, _rsm("<max>2</max><before>b</before>"))
    assert [i.id for i in page] == ["d", "c"]
    with pytest.raises(StanzaError):
        PubSubEngine._page(items, _rsm("<after>zz</after>"))
    with pytest.raises(StanzaError):
        PubSubEngine._page(items, _rsm("<max>many</max>"))
