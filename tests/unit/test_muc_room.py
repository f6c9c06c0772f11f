"""The pure part of XEP-0045 rooms (``modules/_muc_room.py``): RFC 8266 nicknames, the
``muc#roomconfig`` form, roles from affiliations, and the stored form of a room."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

import pytest

from rookery.modules._muc_room import ROOMCONFIG, XDATA, Room, RoomConfig, enforce_nick
from rookery.stanza import StanzaError


def test_nicknames_are_precis_normalised() -> None:
    assert enforce_nick("  Alice  Smith ") == ("Alice Smith", "alice smith")
    assert enforce_nick("\uff21lice")[1] == enforce_nick("alice")[1]  # full-width A
    for bad in ("", "   ", "\u200b", "a\u0000b"):
        with pytest.raises(StanzaError) as e:
            enforce_nick(bad)
        assert e.value.condition == "jid-malformed"


def _form(**fields: str) -> Element:
    x = Element(f"{{{XDATA}}}x", type="submit")
    for var, v in {"FORM_TYPE": ROOMCONFIG, **fields}.items():
        f = SubElement(x, f"{{{XDATA}}}field", var=var)
        SubElement(f, f"{{{XDATA}}}value").text = v
    return x


def test_config_form_round_trip_and_errors() -> None:
    c = RoomConfig()
    c.submit(_form(**{"muc#roomconfig_roomname": "Lounge", "muc#roomconfig_maxusers": "10",
                      "muc#roomconfig_passwordprotectedroom": "1", "muc#roomconfig_roomsecret": "pw",
                      "muc#maxhistoryfetch": "500"}), max_history=50)
    assert (c.name, c.max_users, c.password, c.history_length) == ("Lounge", 10, "pw", 50)
    fields = {f.get("var"): f.findtext(f"{{{XDATA}}}value") for f in c.form(50).iter(f"{{{XDATA}}}field")}
    assert fields["muc#roomconfig_roomname"] == "Lounge" and fields["muc#roomconfig_maxusers"] == "10"
    for bad in ({"muc#roomconfig_maxusers": "many"}, {"muc#roomconfig_whois": "everyone"},
                {"muc#roomconfig_allowpm": "all"}, {"muc#roomconfig_roomsecret": "",
                                                     "muc#roomconfig_passwordprotectedroom": "1"},
                {"FORM_TYPE": "urn:other"}):
        before = c.to_dict()
        with pytest.raises(StanzaError) as e:
            c.submit(_form(**bad), max_history=50)
        assert e.value.condition == "not-acceptable"
        assert c.to_dict() == before  # nothing applied


def test_roles_and_storage() -> None:
    r = Room("room@conference.example.org", RoomConfig(), 50)
    r.config.moderated = True
    r.set_affiliation("owner@example.org", "owner")
    r.set_affiliation("m@example.org", "member", "regular")
    r.registered["m@example.org"] = "Em"
    assert [r.default_role(r.affiliation(j)) for j in ("owner@example.org", "m@example.org", "x@example.org")] == [
        "moderator", "participant", "visitor"]
    assert r.nick_reserved_by(enforce_nick("EM")[1]) == "m@example.org"
    back = Room.loads(r.jid, r.dumps(), 50)
    assert back.affiliations == r.affiliations and back.reasons == {"m@example.org": "regular"}
    assert back.registered == {"m@example.org": "Em"} and back.config.moderated
