"""``rookery export`` / ``rookery import`` (XEP-0227): a round trip between two fresh data dirs, an import
shaped like Prosody's and ejabberd's exports, and malformed files that change nothing."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, cli, plain_auth, write_config
from xmpp_helpers import RawClient

from rookery.storage.base import ArchiveItem, RosterItem
from rookery.storage.sql import make_storage
from rookery.streams.sasl import make_credentials
from rookery.testing import RunningServer


async def populate(data_dir: Path) -> None:
    st = make_storage("sqlite", str(data_dir))
    await st.open()
    try:
        assert await st.accounts.create("localhost", "alice", make_credentials("alice-pw", iterations=4096))
        assert await st.accounts.create("example.org", "bob", make_credentials("bob-pw", iterations=4096))
        await st.roster.set_item("localhost", "alice", RosterItem("bob@example.org", "Bob", "both", groups=["Friends"]))
        await st.roster.set_item("localhost", "alice", RosterItem("carol@remote.example", None, "none", ask=True))
        await st.roster.add_pending_in("localhost", "alice", "dave@remote.example",
                                       "<presence type='subscribe' from='dave@remote.example' to='alice@localhost'/>")
        await st.kv.set("vcard", "localhost", "alice", "vcard", "<vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard>")
        await st.kv.set("private", "localhost", "alice", "{storage:bookmarks}storage",
                        "<storage xmlns='storage:bookmarks'><conference jid='room@muc.example' autojoin='true'/></storage>")
        await st.kv.set("last", "localhost", "alice", "last", '{"when": 1700000000, "status": "gone"}')
        await st.archive.append_many("mam/messages", [
            ("localhost", "alice", ArchiveItem("arch-1", 1700000000.25, "bob@example.org",
                                               "<message from='alice@localhost/x' to='bob@example.org' type='chat'>"
                                               "<body>archived hello</body></message>")),
            ("localhost", "alice", ArchiveItem("arch-2", 1700000001.5, "bob@example.org/y",
                                               "<message from='bob@example.org/y' to='alice@localhost' type='chat'>"
                                               "<body>archived reply</body></message>", "archived reply")),
        ])
        await st.offline.push("localhost", "alice", "<message from='bob@example.org/x' to='alice@localhost' "
                                                    "type='chat' id='m1'><body>while you were out &amp; about</body></message>")
    finally:
        await st.close()


async def test_export_import_round_trip_between_two_fresh_data_dirs(tmp_path):
    a_cfg = write_config(tmp_path / "a")
    b_cfg = write_config(tmp_path / "b")
    await populate(tmp_path / "a" / "data")
    dump = tmp_path / "dump.xml"
    r = cli("export", dump, "-c", a_cfg)
    assert (r.returncode, r.stdout.strip()) == (0, f"exported 2 account(s) to {dump}"), r.stderr
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    text = dump.read_text()
    assert "urn:xmpp:pie:0" in text and "scram-credentials" in text and "alice-pw" not in text
    r = cli("import", dump, "-c", b_cfg)
    assert (r.returncode, r.stdout.strip()) == (0, f"imported 2 account(s) from {dump}"), r.stderr
    again = cli("export", "-c", b_cfg)  # to stdout
    assert again.returncode == 0 and again.stdout == text  # nothing lost, nothing changed
    # importing it twice: the accounts exist, nothing changes
    r = cli("import", dump, "-c", b_cfg)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, "exists already", "nothing imported")

    # the imported accounts work on a server: password, roster, vCard, private XML, offline message
    s = RunningServer({"domains": ["localhost", "example.org"]}, tmp_path / "b" / "data").start()
    try:
        c = await RawClient().login(s.c2s_port, "alice@localhost", "alice-pw")
        roster = await c.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        items = {i.get("jid"): i for i in roster.iter("{jabber:iq:roster}item")}
        assert items["bob@example.org"].get("subscription") == "both"
        assert items["bob@example.org"].findtext("{jabber:iq:roster}group") == "Friends"
        assert items["carol@remote.example"].get("ask") == "subscribe"
        vc = await c.iq("<iq type='get' id='v'><vCard xmlns='vcard-temp'/></iq>")
        assert vc.findtext(".//{vcard-temp}FN") == "Alice A."
        pv = await c.iq("<iq type='get' id='p'><query xmlns='jabber:iq:private'>"
                        "<storage xmlns='storage:bookmarks'/></query></iq>")
        assert pv.find(".//{storage:bookmarks}conference").get("jid") == "room@muc.example"
        c.send("<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2' queryid='x'/></iq>")
        mam = await c.collect_until(lambda got: bool(got) and got[-1].tag.endswith("iq") and got[-1].get("id") == "q")
        bodies = [e.findtext(".//{jabber:client}body") for e in mam if e.tag.endswith("message")]
        assert bodies == ["archived hello", "archived reply"]
        c.send("<presence/>")
        msg = await c.recv_until(lambda e: e.tag.endswith("message"))
        assert msg.findtext("{jabber:client}body") == "while you were out & about"
        await c.close()
        b = await RawClient().login(s.c2s_port, "bob@example.org", "bob-pw")
        await b.close()
    finally:
        s.stop()


def scram(password: str, hash_name: str) -> tuple[str, str, str, int]:
    c = make_credentials(password, iterations=4096)[hash_name]
    enc = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return enc(c.salt), enc(c.server_key), enc(c.stored_key), c.iterations


def prosody_like(tmp_path: Path) -> Path:
    """Shaped like Prosody's mod_storage_xep0227 / ejabberd's export: scram-credentials (SHA-1) or a
    plaintext password, roster, vCard, private XML, offline messages, PEP and privacy lists (skipped)."""
    salt, server_key, stored_key, iters = scram("juliet-pw", "SHA-1")
    f = tmp_path / "prosody.xml"
    f.write_text(f"""<?xml version='1.0' encoding='UTF-8'?>
<server-data xmlns='urn:xmpp:pie:0'>
  <host jid='localhost'>
    <user name='Juliet'>
      <scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>
        <iter-count>{iters}</iter-count><salt>{salt}</salt>
        <server-key>{server_key}</server-key><stored-key>{stored_key}</stored-key>
      </scram-credentials>
      <query xmlns='jabber:iq:roster'>
        <item jid='romeo@localhost' name='Romeo' subscription='both'><group>Lovers</group></item>
        <item jid='nurse@localhost' subscription='none' ask='subscribe'/>
      </query>
      <vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN></vCard>
      <query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'><defaultnick>Jul</defaultnick></exodus></query>
      <offline-messages>
        <message xmlns='jabber:client' from='romeo@localhost/orchard' to='juliet@localhost' type='chat'>
          <body>Wherefore art thou?</body>
          <delay xmlns='urn:xmpp:delay' from='localhost' stamp='2024-01-01T00:00:00Z'/>
        </message>
      </offline-messages>
      <presence xmlns='jabber:client' type='subscribe' from='tybalt@localhost' to='juliet@localhost'/>
      <pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:avatar:metadata'/></pubsub>
      <query xmlns='jabber:iq:privacy'/>
      <archive xmlns='urn:xmpp:pie:0#mam'>
        <result xmlns='urn:xmpp:mam:2' id='prosody-arch-1'>
          <forwarded xmlns='urn:xmpp:forward:0'>
            <delay xmlns='urn:xmpp:delay' stamp='2024-01-01T10:00:00Z'/>
            <message xmlns='jabber:client' from='romeo@localhost/orchard' to='juliet@localhost' type='chat'>
              <body>But soft!</body></message>
          </forwarded>
        </result>
      </archive>
    </user>
    <user name='romeo' password='romeo-pw'>
      <query xmlns='jabber:iq:roster'><item jid='juliet@localhost' subscription='both'/></query>
    </user>
  </host>
</server-data>
""")
    return f


async def test_import_of_a_prosody_or_ejabberd_shaped_export(tmp_path):
    cfg = write_config(tmp_path)
    r = cli("import", prosody_like(tmp_path), "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert "imported 2 account(s)" in r.stdout
    assert "{http://jabber.org/protocol/pubsub}pubsub x1" in r.stdout and "jabber:iq:privacy" in r.stdout
    assert "1 account(s) have no SCRAM-SHA-256 keys" in r.stdout
    exported = cli("export", "-c", cfg).stdout
    assert "Wherefore art thou?" in exported and "Juliet Capulet" in exported
    assert "exodus:prefs" in exported and "tybalt@localhost" in exported and "Lovers" in exported
    assert "prosody-arch-1" in exported and "But soft!" in exported and "2024-01-01T10:00:00.000000Z" in exported
    assert "with='romeo@localhost'" in exported  # the other party, derived from the message
    s = RunningServer({"domains": ["localhost"]}, tmp_path / "data").start()
    try:
        # SCRAM-SHA-1 keys only: a SCRAM-SHA-1 login works; the plaintext password became keys
        from xmpp_helpers import disconnect, slix_client

        j = await slix_client(s, "juliet@localhost", "juliet-pw", mech="SCRAM-SHA-1")
        await disconnect(j)
        assert await plain_auth(s.c2s_port, "juliet@localhost", "juliet-pw") == "success"  # PLAIN too
        c = await RawClient().login(s.c2s_port, "romeo@localhost", "romeo-pw")
        roster = await c.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        assert [i.get("jid") for i in roster.iter("{jabber:iq:roster}item")] == ["juliet@localhost"]
        await c.close()
    finally:
        s.stop()


MALFORMED = {
    "not_xml": ("<server-data xmlns='urn:xmpp:pie:0'><host", "not well-formed XML"),
    "wrong_root": ("<data xmlns='urn:xmpp:pie:0'/>", "root element"),
    "dtd": ("<!DOCTYPE x [<!ENTITY a 'b'>]><server-data xmlns='urn:xmpp:pie:0'/>", "DTD"),
    "domain_not_served": ("<server-data xmlns='urn:xmpp:pie:0'><host jid='elsewhere.example'>"
                          "<user name='x'/></host></server-data>", "not served here"),
    "bad_username": ("<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='a@b'/></host>"
                     "</server-data>", "not a valid username"),
    "bad_base64": ("<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='ok1'/><user name='x'>"
                   "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-256'><iter-count>4096"
                   "</iter-count><salt>!!</salt><server-key>AA==</server-key><stored-key>AA==</stored-key>"
                   "</scram-credentials></user></host></server-data>", "salt: not base64"),
    "bad_subscription": ("<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='ok2'/>"
                         "<user name='x'><query xmlns='jabber:iq:roster'><item jid='a@b' subscription='maybe'/>"
                         "</query></user></host></server-data>", "unknown subscription"),
    "bad_archive_stamp": ("<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'><user name='x'>"
                          "<archive xmlns='urn:xmpp:pie:0#mam'><result xmlns='urn:xmpp:mam:2' id='a'>"
                          "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='yesterday'/>"
                          "<message xmlns='jabber:client'/></forwarded></result></archive></user></host>"
                          "</server-data>", "is not a time"),
    "missing_file": (None, "cannot read"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_import_changes_nothing(tmp_path, case):
    cfg = write_config(tmp_path)
    assert cli("adduser", "existing@localhost", "-p", "pw", "-c", cfg).returncode == 0
    text, expected = MALFORMED[case]
    f = tmp_path / "bad.xml"
    if text is not None:
        f.write_text(text)
    r = cli("import", f, "-c", cfg)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, expected)
    assert cli("users", "-c", cfg).stdout.split() == ["existing@localhost"]


def test_import_with_one_existing_account_writes_nothing_at_all(tmp_path):
    cfg = write_config(tmp_path)
    assert cli("adduser", "romeo@localhost", "-p", "pw", "-c", cfg).returncode == 0
    r = cli("import", prosody_like(tmp_path), "-c", cfg)  # juliet is new, romeo exists: one transaction
    assert_one_line_error(r.returncode, r.stdout, r.stderr, "romeo@localhost exists already")
    assert cli("users", "-c", cfg).stdout.split() == ["romeo@localhost"]


def test_export_of_a_domain_not_served_is_an_error(tmp_path):
    r = cli("export", "-d", "elsewhere.example", "-c", write_config(tmp_path))
    assert_one_line_error(r.returncode, r.stdout, r.stderr, "not served here")
