"""Coverage-guided fuzzing of the RFC 6120 stream parser with atheris (libFuzzer for Python).

The property: whatever bytes a peer sends, split however the network splits them, ``StreamParser.feed()``
raises nothing but ``XMLStreamError``; every stanza it delivers serializes and parses back to the same
tree; the stream root holds at most the stanza in progress.  (``tests/unit/test_parser_fuzz.py`` checks
the same with hypothesis on every test run; this harness is for long runs.)

atheris is not a test dependency.  Version 3.0.0 is the last with CPython 3.11 wheels::

    python -m venv /tmp/fuzz && /tmp/fuzz/bin/pip install atheris==3.0.0 precis-i18n idna
    mkdir -p /tmp/corpus
    PYTHONPATH=src /tmp/fuzz/bin/python fuzz/fuzz_parser.py /tmp/corpus -max_total_time=600 -max_len=4096

``-seed_corpus`` is not needed: with an empty corpus directory the harness starts from the seeds below
(written on the first run).  Other libFuzzer flags work as usual (``-jobs=2 -workers=2``, ``-runs=N``,
``-dict=...``).  A crash leaves ``crash-<sha1>`` in the working directory; replay it with
``PYTHONPATH=src python fuzz/fuzz_parser.py crash-<sha1>``.
"""

from __future__ import annotations

import os
import re
import sys

import atheris

with atheris.instrument_imports():
    from xml.etree.ElementTree import Element

    from rookery.xml import StreamParser, XMLStreamError, serialize

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>"
)
SEEDS = [
    HEADER
    + b"<message to='a@example.com' type='chat'><body>hi &amp; &#x41;</body></message></stream:stream>",
    HEADER + b"<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
    HEADER + b"<message><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'>"
    b"<body><![CDATA[x]]></body></message></forwarded><xml:foo xmlns:p='urn:p' p:a='&#10;'/></message>",
    b"<?xml version='1.0' encoding='UTF-8'?>\n<!DOCTYPE s [<!ENTITY a 'b'>]><s>&a;</s>",
    HEADER + b"<presence><!-- c --><?pi x?></presence>",
]
_NO_NAMESPACE = re.compile(rb"""xmlns[ \t\r\n]*=[ \t\r\n]*(?:''|"")""")
CONDITIONS = {"not-well-formed", "restricted-xml", "policy-violation", "unsupported-encoding"}


def shape(el: Element) -> tuple:
    return (el.tag, sorted(el.attrib.items()), el.text or None, [(shape(c), c.tail or None) for c in el])


def check_stanza(el: Element, same_tree: bool) -> None:
    text = serialize(el)
    again: list[Element] = []
    try:
        StreamParser(lambda r, n: None, again.append, lambda: None).feed(HEADER + text.encode())
    except XMLStreamError as e:
        raise AssertionError(f"serialized stanza does not parse: {text!r}") from e
    assert len(again) == 1, text
    if same_tree:
        assert shape(again[0]) == shape(el), (text, shape(el))


def split(data: bytes) -> tuple[int, int, list[bytes]]:
    """The first 4 bytes choose the limits and how the rest is chunked: 4 zero bytes mean defaults,
    one chunk."""
    if len(data) < 4:
        return 262144, 32, [data]
    flags, size, depth, ncuts = data[:4]
    rest = data[4:]
    ncuts %= 9
    cuts = [int.from_bytes(rest[2 * i : 2 * i + 2], "little") for i in range(ncuts)]
    payload = rest[2 * ncuts :]
    if flags & 1:
        payload = HEADER + payload
    points = sorted({c % (len(payload) + 1) for c in cuts} | {0, len(payload)})
    chunks = [payload[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
    return (64 * size if size else 262144), (depth if depth else 32), chunks


def TestOneInput(data: bytes) -> None:
    max_size, max_depth, chunks = split(data)
    state: dict[str, Element | None] = {"root": None}
    # A tag without namespace means the content namespace (stripped) or no namespace at all
    # (rookery.xml): elements in no namespace -- xmlns='' or a stream without xmlns='jabber:client',
    # which a c2s stream refuses -- come back in the content namespace, so only well-formedness is
    # checked for those.
    no_namespace = _NO_NAMESPACE.search(b"".join(chunks)) is not None
    same_tree = {"ok": False}

    def on_open(root: Element, nsmap: dict[str, str]) -> None:
        state["root"] = root
        same_tree["ok"] = nsmap.get("") == "jabber:client" and not no_namespace

    def on_stanza(el: Element) -> None:
        assert isinstance(el.tag, str)
        check_stanza(el, same_tree["ok"])

    parser = StreamParser(on_open, on_stanza, lambda: None, max_stanza_size=max_size, max_depth=max_depth)
    for chunk in chunks:
        try:
            parser.feed(chunk)
        except XMLStreamError as e:
            if e.condition not in CONDITIONS:
                raise
            return
        root = state["root"]
        if root is not None and len(root) > 1:
            raise AssertionError(f"{len(root)} children left on the stream root")


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-") and os.path.isdir(a)]
    for directory in corpus[:1]:
        if not os.listdir(directory):
            for i, seed in enumerate(SEEDS):
                with open(os.path.join(directory, f"seed-{i}"), "wb") as f:
                    f.write(b"\x00\x00\x00\x00" + seed)  # defaults, one chunk (see split)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
