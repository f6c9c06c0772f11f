"""XEP-0082 date/time profiles as XEP-0202 and XEP-0203 use them."""

import re
from datetime import UTC, datetime, timedelta, timezone
from xml.etree.ElementTree import Element

from rookery.modules.offline import is_chat_state_only, stamp
from rookery.modules.time import format_datetime, format_tzo, time_element
from rookery.xml import ns

TZD = re.compile(r"^[+-]\d\d:\d\d$")


def test_datetime_is_xep_0082_utc_with_z():
    assert format_datetime(1166551115.0) == "2006-12-19T17:58:35Z"


def test_datetime_fraction_is_milliseconds():
    assert format_datetime(1166551115.25, fraction=True) == "2006-12-19T17:58:35.250Z"


def test_aware_datetime_is_converted_to_utc():
    dt = datetime(2006, 12, 19, 11, 58, 35, tzinfo=timezone(timedelta(hours=-6)))
    assert format_datetime(dt) == "2006-12-19T17:58:35Z"
    assert format_datetime(datetime(2006, 12, 19, 17, 58, 35, tzinfo=UTC)) == "2006-12-19T17:58:35Z"


def test_tzo_formats():
    assert format_tzo(timedelta(hours=-6)) == "-06:00"
    assert format_tzo(timedelta(hours=5, minutes=30)) == "+05:30"
    assert format_tzo(timedelta(0)) == "+00:00"
    assert format_tzo(None) == "+00:00"
    assert format_tzo(timedelta(hours=-3, minutes=-30)) == "-03:30"


def test_time_element_has_tzo_and_utc():
    el = time_element(1166551115.0)
    assert el.tag == f"{{{ns.TIME}}}time"
    assert TZD.match(el.findtext(f"{{{ns.TIME}}}tzo"))
    assert el.findtext(f"{{{ns.TIME}}}utc") == "2006-12-19T17:58:35Z"


def test_offline_stamp_adds_one_delay_and_leaves_the_original_alone():
    msg = Element("message", {"from": "a@example.org/x", "to": "b@example.org"})
    body = Element("body")
    body.text = "hi"
    msg.append(body)
    forged = Element(f"{{{ns.DELAY}}}delay", {"from": "example.org", "stamp": "1999-01-01T00:00:00Z"})
    msg.append(forged)
    out = stamp(msg, "example.org", 1166551115.0)
    delays = out.findall(f"{{{ns.DELAY}}}delay")
    assert len(delays) == 1
    assert delays[0].get("stamp") == "2006-12-19T17:58:35.000Z"
    assert delays[0].get("from") == "example.org"
    assert out.findtext("body") == "hi"
    assert len(msg) == 2 and msg[1] is forged  # original untouched


def test_chat_state_only_detection():
    cs = "http://jabber.org/protocol/chatstates"
    m = Element("message")
    m.append(Element(f"{{{cs}}}composing"))
    assert is_chat_state_only(m)
    m.append(Element("body"))
    assert not is_chat_state_only(m)
    assert not is_chat_state_only(Element("message"))
