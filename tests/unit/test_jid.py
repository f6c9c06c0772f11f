"""RFC 7622: XMPP addresses, with PRECIS (RFC 8264/8265) and IDNA2008 (RFC 5890/5891)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rookery.jid import JID, InvalidJID, nameprep, nodeprep, resourceprep

# -- RFC 7622 §3.5 examples ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "local", "domain", "resource"),
    [
        ("juliet@example.com", "juliet", "example.com", None),
        ("juliet@example.com/foo", "juliet", "example.com", "foo"),
        ("juliet@example.com/foo bar", "juliet", "example.com", "foo bar"),
        ("juliet@example.com/foo@bar", "juliet", "example.com", "foo@bar"),
        ("foo\\20bar@example.com", "foo\\20bar", "example.com", None),
        ("fussball@example.com", "fussball", "example.com", None),
        ("fußball@example.com", "fußball", "example.com", None),
        ("π@example.com", "π", "example.com", None),
        ("Σ@example.com/foo", "σ", "example.com", "foo"),
        ("σ@example.com/foo", "σ", "example.com", "foo"),
        ("ς@example.com/foo", "ς", "example.com", "foo"),
        ("king@example.com/♚", "king", "example.com", "♚"),
        ("example.com", None, "example.com", None),
        ("example.com/foobar", None, "example.com", "foobar"),
        ("a.example.com/b@example.net", None, "a.example.com", "b@example.net"),
    ],
)
def test_rfc7622_valid_examples(text, local, domain, resource):
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)


def test_capital_sigma_is_case_mapped_to_small_sigma():
    assert JID.parse("Σ@example.com/foo") == JID.parse("σ@example.com/foo")
    assert str(JID.parse("Σ@example.com/foo")) == "σ@example.com/foo"
    # final sigma is a different code point and stays distinct (RFC 8265 uses toLowerCase, not folding)
    assert JID.parse("ς@example.com") != JID.parse("σ@example.com")
    # sharp s is not folded to "ss"
    assert JID.parse("fußball@example.com") != JID.parse("fussball@example.com")


@pytest.mark.parametrize(
    "text",
    [
        '"juliet"@example.com',  # quotation marks are forbidden in localparts (§3.3.1)
        "foo bar@example.com",  # space in the localpart (IdentifierClass)
        "@example.com/",  # empty localpart and resourcepart
        "henry\u2163@example.com",  # ROMAN NUMERAL FOUR, a compatibility character
        "♚@example.com",  # a symbol in the localpart
        "juliet@",  # empty domainpart
        "/foobar",  # empty domainpart
        "",
        "@example.com",
        "example.com/",
        "juliet@example.com/",
        "a@b@example.com",
        "juliet&romeo@example.com",
        "juliet'@example.com",
        "ju:liet@example.com",
        "<juliet>@example.com",
        "a\u0000@example.com",
        "juliet@example.com/\u0000",
        "juliet@example.com/a\u0007b",
        "juliet@exa mple.com",
        "juliet@example..com",
        "juliet@.example.com",
        "juliet@.",
        "juliet@example.com..",
        "juliet@example.com.。",
        "juliet@bücher.example.。",
        "juliet@[::1",
        "juliet@[not:an:address]",
        "juliet@[1.2.3.4]",
        "juliet@xn--zz.example",  # not a valid A-label
        "juliet@a.xn--",
        "juliet@" + "a" * 64 + ".com",  # a DNS label is at most 63 octets
    ],
)
def test_invalid_jids_are_refused(text):
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_invalid_jid_is_a_value_error():
    with pytest.raises(ValueError):
        JID.parse("juliet@")


def test_leading_space_in_resourcepart_is_accepted():
    """RFC 7622 §3.5 lists "juliet@example.com/ foo" among invalid JIDs, but no rule of §3.4 makes it
    so: the resourcepart is an OpaqueString (RFC 8265 §4.2), which permits U+0020 anywhere.  We follow
    the rules, as other implementations do, so that addresses other servers accept are not refused."""
    jid = JID.parse("juliet@example.com/ foo")
    assert jid.resource == " foo"
    assert JID.parse("juliet@example.com/foo ").resource == "foo "


def test_slash_splits_at_the_first_slash_and_resources_may_hold_anything():
    jid = JID.parse("juliet@example.com/a/b@c/d")
    assert (jid.local, jid.domain, jid.resource) == ("juliet", "example.com", "a/b@c/d")
    assert JID.parse("example.com/@").resource == "@"


# -- normalization ------------------------------------------------------------------------------------


def test_localpart_is_case_mapped_and_width_mapped():
    assert JID.parse("JuLiEt@example.com").local == "juliet"
    assert JID.parse("ＪＵＬＩＥＴ@example.com").local == "juliet"  # fullwidth
    assert JID.parse("ÉLODIE@example.com").local == "élodie"
    # NFC: e + COMBINING ACUTE ACCENT becomes one code point
    assert JID.parse("e\u0301lodie@example.com").local == "\u00e9lodie"


def test_resourcepart_keeps_case_and_width_but_is_normalized():
    assert JID.parse("juliet@example.com/Balcony").resource == "Balcony"
    assert JID.parse("juliet@example.com/Ｂ").resource == "Ｂ"
    assert JID.parse("juliet@example.com/e\u0301").resource == "\u00e9"
    assert JID.parse("juliet@example.com/a\u3000b").resource == "a b"  # non-ASCII space mapped to U+0020


def test_domainpart_is_lowercased():
    assert JID.parse("juliet@Example.COM").domain == "example.com"
    assert JID.parse("juliet@EXAMPLE.com") == JID.parse("juliet@example.com")


@pytest.mark.parametrize("dot", [".", "\u3002", "\uff0e", "\uff61"])
def test_final_label_separator_is_removed(dot):
    assert JID.parse(f"juliet@example.com{dot}/r") == JID.parse("juliet@example.com/r")
    assert JID.parse(f"bücher.example{dot}").domain == "bücher.example"


def test_ideographic_full_stop_separates_labels():
    assert JID.parse("juliet@example\u3002com").domain == "example.com"


def test_internationalized_domains_use_u_labels():
    assert JID.parse("juliet@bücher.example").domain == "bücher.example"
    assert JID.parse("juliet@BÜCHER.example").domain == "bücher.example"
    assert JID.parse("juliet@ｅｘａｍｐｌｅ.com").domain == "example.com"  # width-mapped (UTS #46)


def test_a_labels_are_converted_to_u_labels():
    """§3.2.1: the domainpart MUST NOT include A-labels; each is converted to a U-label."""
    assert JID.parse("juliet@xn--bcher-kva.example").domain == "bücher.example"
    assert JID.parse("juliet@XN--BCHER-KVA.example") == JID.parse("juliet@bücher.example")


def test_ip_literals():
    assert JID.parse("juliet@[::1]").domain == "[::1]"
    assert JID.parse("juliet@[0:0:0:0:0:0:0:1]/r").domain == "[::1]"
    assert JID.parse("juliet@[2001:DB8::1]").domain == "[2001:db8::1]"
    assert JID.parse("juliet@192.0.2.1").domain == "192.0.2.1"


# -- §3.1 lengths: 1023 octets per part, after normalization ------------------------------------------


def test_localpart_limit_is_1023_octets():
    assert len(JID.parse("a" * 1023 + "@example.com").local) == 1023
    with pytest.raises(InvalidJID):
        JID.parse("a" * 1024 + "@example.com")
    assert JID.parse("é" * 511 + "a@example.com").local == "é" * 511 + "a"  # 1023 octets
    with pytest.raises(InvalidJID):
        JID.parse("é" * 512 + "@example.com")  # 512 characters but 1024 octets


def test_localpart_limit_applies_after_normalization():
    # 1023 fullwidth letters are 3069 octets before width mapping and 1023 after
    assert JID.parse("ａ" * 1023 + "@example.com").local == "a" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("ａ" * 1024 + "@example.com")


def test_resourcepart_limit_is_1023_octets():
    assert len(JID.parse("juliet@example.com/" + "r" * 1023).resource) == 1023
    with pytest.raises(InvalidJID):
        JID.parse("juliet@example.com/" + "r" * 1024)
    with pytest.raises(InvalidJID):
        JID.parse("juliet@example.com/" + "€" * 342)  # 1026 octets


def test_domainpart_limit_is_1023_octets():
    domain = ".".join(["a" * 63] * 16)  # 1023 octets
    assert len(domain) == 1023
    assert JID.parse("juliet@" + domain).domain == domain
    with pytest.raises(InvalidJID):
        JID.parse("juliet@b" + domain)


def test_longest_jid_is_3071_octets():
    text = "a" * 1023 + "@" + ".".join(["a" * 63] * 16) + "/" + "r" * 1023
    assert len(text) == 3071
    assert str(JID.parse(text)) == text


def test_huge_inputs_are_refused_cheaply():
    with pytest.raises(InvalidJID):
        JID.parse("a" * 100_000 + "@example.com")
    with pytest.raises(InvalidJID):
        nodeprep("a" * 100_000)
    with pytest.raises(InvalidJID):
        resourceprep("r" * 100_000)
    with pytest.raises(InvalidJID):
        nameprep("a" * 100_000)


# -- the JID object ------------------------------------------------------------------------------------


def test_equality_and_hash_follow_the_normalized_form():
    a = JID.parse("Juliet@Example.com/Balcony")
    b = JID("juliet", "example.com", "Balcony")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, JID.parse("juliet@example.com/Balcony")}) == 1
    assert JID.parse("juliet@example.com/balcony") != a  # resources are case-sensitive
    assert a != "juliet@example.com/Balcony"  # not equal to strings
    assert {a: 1}[JID.parse("JULIET@EXAMPLE.COM/Balcony")] == 1


def test_parts_and_properties():
    full = JID.parse("juliet@example.com/balcony")
    assert (full.bare, full.full, str(full)) == (
        "juliet@example.com",
        "juliet@example.com/balcony",
        "juliet@example.com/balcony",
    )
    assert not full.is_bare and not full.is_host
    assert repr(full) == "JID('juliet@example.com/balcony')"
    host = JID.parse("example.com")
    assert host.is_bare and host.is_host and host.bare == "example.com"


def test_bare_jid_and_with_resource():
    full = JID.parse("juliet@example.com/balcony")
    bare = full.bare_jid()
    assert bare == JID.parse("juliet@example.com") and bare.resource is None
    assert bare.bare_jid() is bare
    assert bare.with_resource("chamber") == JID.parse("juliet@example.com/chamber")
    assert full.with_resource("e\u0301").resource == "\u00e9"  # the new resource is normalized
    with pytest.raises(InvalidJID):
        bare.with_resource("")
    assert JID.parse("example.com/x").bare_jid() == JID.parse("example.com")


def test_constructor_validates_parts():
    with pytest.raises(InvalidJID):
        JID("a b", "example.com")
    with pytest.raises(InvalidJID):
        JID("juliet", "exa mple.com")
    with pytest.raises(InvalidJID):
        JID("", "example.com")
    assert JID(None, "Example.com").full == "example.com"


def test_parsing_is_cached():
    assert JID.parse("romeo@example.net/orchard") is JID.parse("romeo@example.net/orchard")
    full = JID.parse("romeo@example.net/orchard")
    assert full.bare_jid() is JID.parse("romeo@example.net")


def test_prep_functions():
    assert nodeprep("JULIET") == "juliet"
    assert resourceprep("Balcony") == "Balcony"
    assert nameprep("Example.COM.") == "example.com"
    for bad in ("", "a@b", "a b"):
        with pytest.raises(InvalidJID):
            nodeprep(bad)
    with pytest.raises(InvalidJID):
        nameprep("")


# -- property: parse(str(parse(x))) == parse(x) ---------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        "-",
        "_",
        ".",
        "@",
        "/",
        " ",
        "\\20",
        "xn--",
        "xn--bcher-kva",
        "ß",
        "Σ",
        "ς",
        "İ",
        "ǅ",
        "é",
        "e\u0301",
        "ａ",
        "Ａ",
        "\u3002",
        "\uff0e",
        "\u3000",
        "\u00a0",
        "♚",
        "Ⅳ",
        "日本",
        "ü",
        "[",
        "]",
        "::1",
        "\u200d",
        "\u0627",
        "\u05d0",
        "1",
        "example",
        "com",
        "'",
        '"',
        "&",
        "<",
        ":",
    ]
)
_FREE = st.text(st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFFF), max_size=12)
_DOMAINS = st.sampled_from(
    [
        "example.com",
        "Example.COM.",
        "bücher.example",
        "xn--bcher-kva.example",
        "[::1]",
        "a.b\u3002c",
        "ü",
        "192.0.2.1",
        "[2001:DB8::1]",
        "ｅｘａｍｐｌｅ.com",
    ]
)
_LIKELY_VALID = st.tuples(
    st.none() | st.text("abcXYZ09-_.ßΣςπéüİ日本ａＡ\\", min_size=1, max_size=8),
    _DOMAINS,
    st.none() | st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8),
).map(lambda t: (t[0] + "@" if t[0] else "") + t[1] + ("/" + t[2] if t[2] is not None else ""))
_JIDISH = st.one_of(
    _LIKELY_VALID,
    st.lists(_PIECES, max_size=12).map("".join),
    st.tuples(
        st.lists(_PIECES, max_size=4).map("".join) | _FREE,
        _DOMAINS | st.lists(_PIECES, min_size=1, max_size=4).map("".join),
        st.none() | st.lists(_PIECES, min_size=1, max_size=4).map("".join) | _FREE,
    ).map(lambda t: (t[0] + "@" if t[0] else "") + t[1] + ("/" + t[2] if t[2] is not None else "")),
    _FREE,
)


@settings(max_examples=400, deadline=None)
@given(_JIDISH)
def test_parsing_the_string_form_gives_the_same_jid(text):
    try:
        jid = JID.parse(text)
    except InvalidJID:
        return
    again = JID.parse(str(jid))
    assert again == jid
    assert (again.local, again.domain, again.resource) == (jid.local, jid.domain, jid.resource)
    # each part is a fixed point of its preparation and within the §3.1 limits
    assert nameprep(jid.domain) == jid.domain
    if jid.local is not None:
        assert nodeprep(jid.local) == jid.local
        assert len(jid.local.encode()) <= 1023
    if jid.resource is not None:
        assert resourceprep(jid.resource) == jid.resource
        assert len(jid.resource.encode()) <= 1023
    assert len(jid.domain.encode()) <= 1023
    assert JID(jid.local, jid.domain, jid.resource) == jid


@settings(max_examples=300, deadline=None)
@given(_JIDISH)
def test_parse_raises_only_invalid_jid(text):
    try:
        JID.parse(text)
    except InvalidJID:
        pass
