"""Issue 7: operating a running server — ``rookery status | sessions | kick | reload | debug``,
``--version``, bulk ``adduser``, SIGHUP/SIGUSR1, the log lines operators read, JSON logs.  Real
``rookery serve`` processes, real sockets, the CLI as subprocesses."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cli import (
    ROOKERY,
    acli,
    assert_one_line_error,
    cli,
    cli_many,
    free_port,
    plain_auth,
    user,
    write_config,
)
from xmpp_helpers import RawClient


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    config: Path
    data_dir: Path
    log: Path  # [log] file
    out: Path  # stdout/stderr

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def log_config(directory: Path, port: int, fmt: str = "plain", level: str = "info", extra: str = "") -> Path:
    return write_config(directory, f'[log]\nlevel = "{level}"\nfile = "{directory / "rookery.log"}"\n'
                                   f'format = "{fmt}"\n{extra}', port=port)


def serve(directory: Path, fmt: str = "plain") -> Served:
    port = free_port()
    config = log_config(directory, port, fmt)
    out = directory / "serve.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*ROOKERY, "serve", "--config", str(config)], stdin=subprocess.DEVNULL,
                                stdout=f, stderr=subprocess.STDOUT)
    sp = Served(proc, port, config, directory / "data", directory / "rookery.log", out)
    deadline = time.monotonic() + 30
    try:
        while True:
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            if (sp.data_dir / "rookery.ctl").exists():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return sp
                except OSError:
                    pass
            time.sleep(0.05)
    except BaseException:
        sp.stop()
        raise


async def wait_for(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    sp = serve(tmp_path_factory.mktemp("ops"))
    try:
        yield sp
    finally:
        sp.stop()


# -- --version, start time -----------------------------------------------------------------------------


def test_version_is_printed_and_the_cli_starts_fast():
    r = cli("--version")
    from rookery import __version__

    assert (r.returncode, r.stdout.strip()) == (0, f"rookery {__version__}")
    # the CLI imports neither storage, TLS nor the server to parse its arguments
    r = subprocess.run([*ROOKERY[:1], "-X", "importtime", "-m", "rookery", "--version"], capture_output=True,
                       text=True, timeout=30)
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()}
    for heavy in ("pydantic", "sqlalchemy", "cryptography", "rookery.server", "rookery.storage.sql", "slixmpp"):
        assert heavy not in imported, heavy


# -- status, sessions, kick, debug against a running server ----------------------------------------


async def test_status_shows_version_uptime_listeners_sessions_memory_storage(served):
    jid = user()
    assert (await acli("adduser", jid, "-p", "pw", "-c", served.config)).returncode == 0
    c = await RawClient().login(served.port, jid, "pw")
    try:
        r = await acli("status", "-c", served.config)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert out.startswith("Rookery 0.") and "up " in out
        assert "domains: localhost, example.org" in out
        assert f"listener c2s: 127.0.0.1:{served.port}" in out
        assert "localhost: 1" in out and "example.org: 0" in out
        assert "MiB RSS" in out and "storage: sqlite" in out
        r = await acli("status", "--json", "-c", served.config)
        st = json.loads(r.stdout)
        assert st["sessions"]["localhost"] >= 1 and st["listeners"]["c2s"] == [f"127.0.0.1:{served.port}"]
        assert st["memory_rss"] > 1_000_000 and st["storage"] == "sqlite" and st["uptime"] >= 0
    finally:
        await c.close()


async def test_sessions_lists_ip_tls_mechanism_client_and_idle_time(served):
    jid = user()
    assert (await acli("adduser", jid, "-p", "pw", "-c", served.config)).returncode == 0
    c = await RawClient().login(served.port, jid, "pw", resource="phone")
    c.send("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.net/client'"
           " ver='abc='/></presence>")
    try:
        await asyncio.sleep(0.3)
        r = await acli("sessions", jid, "--json", "-c", served.config)
        assert r.returncode == 0, r.stderr
        [s] = json.loads(r.stdout)
        assert s["jid"] == f"{jid}/phone" and s["ip"] == "127.0.0.1"
        assert s["tls"] in ("TLSv1.2", "TLSv1.3") and s["mechanism"] == "PLAIN"
        assert s["client"] == "https://example.net/client" and 0 <= s["idle"] < 10 and s["state"] == "attached"
        r = await acli("sessions", "-c", served.config)
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"{jid}/phone"))
        assert "ip 127.0.0.1" in line and "sasl PLAIN" in line and "idle 0m" in line
    finally:
        await c.close()


async def test_kick_disconnects_with_the_reason(served):
    jid = user()
    assert (await acli("adduser", jid, "-p", "pw", "-c", served.config)).returncode == 0
    c = await RawClient().login(served.port, jid, "pw")
    try:
        r = await acli("kick", jid, "--reason", "maintenance", "-c", served.config)
        assert (r.returncode, r.stdout.strip()) == (0, f"kicked {jid}/raw"), r.stderr
        assert await c.stream_error(timeout=3) == "policy-violation"
        assert "maintenance" in served.log_text()
    finally:
        await c.close()


async def test_debug_traces_one_accounts_stanzas_only_while_on(served):
    traced, other = user(), user()
    for j in (traced, other):
        assert (await acli("adduser", j, "-p", "pw", "-c", served.config)).returncode == 0
    a = await RawClient().login(served.port, traced, "pw")
    b = await RawClient().login(served.port, other, "pw")
    try:
        r = await acli("debug", traced, "-c", served.config)
        assert r.returncode == 0 and "trace on" in r.stdout, r.stderr
        await a.iq("<iq type='get' id='traced-ping' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        await b.iq("<iq type='get' id='untraced-ping' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        await wait_for(lambda: "traced-ping" in served.log_text() and "out " + traced in served.log_text())
        assert "untraced-ping" not in served.log_text()
        r = await acli("debug", traced, "--off", "-c", served.config)
        assert r.returncode == 0, r.stderr
        await a.iq("<iq type='get' id='after-off' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        await asyncio.sleep(0.2)
        assert "after-off" not in served.log_text()
    finally:
        await a.close()
        await b.close()


async def test_log_lines_for_connections_logins_and_accounts_never_a_password(served):
    jid = user()
    assert (await acli("adduser", jid, "-p", "s3cret-pw", "-c", served.config)).returncode == 0
    assert await plain_auth(served.port, jid, "wr0ng-pw") == "failure"
    c = await RawClient().login(served.port, jid, "s3cret-pw")
    await c.close()
    assert (await acli("deluser", jid, "-c", served.config)).returncode == 0
    await wait_for(lambda: f"account {jid} deleted" in served.log_text())
    text = served.log_text()
    assert f"account {jid} created" in text
    assert f"login failed: {jid} (PLAIN) from 127.0.0.1: wrong password" in text
    assert f"login ok: {jid.split('@')[0]}@localhost (PLAIN) from 127.0.0.1" in text
    assert "connection from 127.0.0.1 opened: stream " in text
    assert any("connection from 127.0.0.1 closed: stream " in ln and f"{jid}/raw" in ln and " s" in ln
               for ln in text.splitlines())
    assert "s3cret-pw" not in text and "wr0ng-pw" not in text
    assert "sqlalchemy" not in text.lower()


# -- reload and signals -----------------------------------------------------------------------------


async def test_reload_applies_limits_and_log_level_and_names_what_needs_a_restart(tmp_path):
    sp = await asyncio.to_thread(serve, tmp_path)
    try:
        jid = user()
        assert (await acli("adduser", jid, "-p", "pw", "-c", sp.config)).returncode == 0
        c = await RawClient().login(sp.port, jid, "pw")
        text = sp.config.read_text()
        sp.config.write_text(text.replace('level = "info"', 'level = "warning"')
                             .replace("[c2s]\n", "[c2s]\nmax_auth_failures_per_account = 7\n")
                             .replace('domains = ["localhost", "example.org"]', 'domains = ["localhost"]')
                             + "\n[limits]\nmax_roster_items = 5\n")
        r = await acli("reload", "-c", sp.config)
        assert r.returncode == 0, r.stderr
        assert "c2s.max_auth_failures_per_account" in r.stdout and "log" in r.stdout.splitlines()[0]
        assert "limits.max_roster_items" in r.stdout.splitlines()[0]
        assert "needs a restart to take effect: domains" in r.stdout
        # the session survived the reload
        pong = await c.iq("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert pong.get("type") == "result"
        # at warning, logins are not logged any more
        logins = sp.log_text().count("login ok")
        assert await plain_auth(sp.port, jid, "pw") == "success"
        await asyncio.sleep(0.2)
        assert sp.log_text().count("login ok") == logins
        # a bad file changes nothing and says why in one line
        sp.config.write_text(text + "\nbogus = 1\n")
        r = await acli("reload", "-c", sp.config)
        assert_one_line_error(r.returncode, r.stdout, r.stderr, "bogus: unknown key")
        # SIGHUP reloads too (never a kill)
        sp.config.write_text(text)
        sp.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert sp.proc.poll() is None
        # back at info: the reload line is logged again
        await wait_for(lambda: sp.log_text().count("configuration reloaded") >= 1)
        assert await plain_auth(sp.port, jid, "pw") == "success"
        await wait_for(lambda: sp.log_text().count("login ok") == logins + 1)
        # a bad file on SIGHUP: logged, nothing changed, still serving
        sp.config.write_text(text + "\nbogus = 1\n")
        sp.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "reload failed, nothing changed" in sp.log_text())
        assert sp.proc.poll() is None
        pong = await c.iq("<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert pong.get("type") == "result"
        await c.close()
    finally:
        sp.stop()


async def test_sigusr1_reopens_the_log_file_after_rotation(tmp_path):
    sp = await asyncio.to_thread(serve, tmp_path, "json")
    try:
        await wait_for(lambda: "serving" in sp.log_text())
        rotated = sp.log.with_suffix(".log.1")
        sp.log.rename(rotated)
        sp.proc.send_signal(signal.SIGUSR1)
        await wait_for(sp.log.exists)
        assert await plain_auth(sp.port, "nobody@localhost", "x") == "failure"
        await wait_for(lambda: "login failed" in sp.log_text())
        assert "login failed" not in rotated.read_text()
        # JSON lines: one object per line
        for line in (rotated.read_text() + sp.log_text()).splitlines():
            rec = json.loads(line)
            assert set(rec) >= {"time", "level", "logger", "message"}
        assert oct(sp.log.stat().st_mode & 0o777) == "0o600"
        assert sp.proc.poll() is None
    finally:
        sp.stop()


# -- bad input and a server that is not running -------------------------------------------------------

NOT_RUNNING = [["status"], ["sessions"], ["kick", "a@localhost"], ["reload"], ["debug", "a@localhost"]]


def test_commands_need_a_running_server_and_say_so_in_one_line(tmp_path):
    cfg = write_config(tmp_path)
    results = cli_many([([*args, "-c", cfg], None) for args in NOT_RUNNING])
    for rc, out, err in results:
        assert_one_line_error(rc, out, err, "the server is not running")


BAD = {
    "kick_invalid_jid": (["kick", "a@b@localhost"], "invalid JID"),
    "kick_domain_not_served": (["kick", "a@elsewhere.example"], "not served here"),
    "kick_no_session": (["kick", "nobody@localhost"], "has no session"),
    "sessions_invalid_jid": (["sessions", "@@"], "invalid JID"),
    "sessions_domain_not_served": (["sessions", "a@elsewhere.example"], "not served here"),
    "debug_full_jid": (["debug", "a@localhost/res"], "user@domain"),
    "unknown_command": (["frobnicate"], "invalid choice"),
    "unknown_option": (["status", "--bogus"], "unrecognized arguments"),
    "adduser_nothing": (["adduser"], "no account to create"),
    "adduser_missing_file": (["adduser", "--from-file", "/nonexistent/users.txt"], "cannot read"),
}


def test_bad_arguments_give_one_line_errors(served):
    results = cli_many([([*args, "-c", served.config], None) for args, _ in BAD.values()])
    for (name, (_, expected)), (rc, _out, err) in zip(BAD.items(), results, strict=True):
        assert rc != 0, name
        assert len(err.strip().splitlines()) == 1, (name, err)
        assert expected in err, (name, err)


# -- bulk adduser -------------------------------------------------------------------------------------


def test_adduser_several_jids_and_from_file(tmp_path):
    cfg = write_config(tmp_path)
    r = cli("adduser", "a1@localhost", "a2@example.org", "-c", cfg)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["created", "a1@localhost"], ["created", "a2@example.org"]]
    assert all(len(ln.split()) == 3 for ln in lines)  # a generated password each
    listing = tmp_path / "users.txt"
    listing.write_text("# bulk\nb1@localhost pw-one\n\nb2@localhost\n")
    r = cli("adduser", "--from-file", listing, "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "created b1@localhost"
    assert r.stdout.splitlines()[1].startswith("created b2@localhost ")
    # a bad line anywhere: nothing is created
    listing.write_text("c1@localhost\nnot a jid@@\n")
    r = cli("adduser", "--from-file", listing, "-c", cfg)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, "line 2", "invalid JID")
    # existing accounts are reported, the others created
    r = cli("adduser", "b1@localhost", "c2@localhost", "-p", "x", "-c", cfg)
    assert r.returncode == 1 and "created c2@localhost" in r.stdout and "b1@localhost" in r.stderr
    users = cli("users", "-c", cfg).stdout.split()
    assert sorted(users) == ["a1@localhost", "a2@example.org", "b1@localhost", "b2@localhost", "c2@localhost"]


# -- authentication limits: honest clients are never locked out ---------------------------------------


async def test_channel_binding_variants_before_the_right_login_never_slow_or_lock_out(rookery_server_factory):
    """Issue 7 item 7: slixmpp 1.8 tries channel-binding variants first (tls-unique, tls-exporter: not
    offered here) and falls back; those failures test no password and must not count, however often."""
    from test_streams import _scram

    s = rookery_server_factory(c2s={"max_auth_failures_per_ip": 3, "max_auth_failures_per_account": 2,
                                    "auth_failure_delay": 0.5})
    jid, pw = s.make_user()
    user = jid.split("@")[0]
    for _ in range(6):  # six logins in a row from one address, each after two failed variants
        c = await RawClient().connect(s.direct_tls_port, tls=True)
        await c.open_stream()
        for cb_type in ("tls-unique", "tls-exporter"):
            first = base64.b64encode(f"p={cb_type},,n={user},r=abcdef0123456789".encode()).decode()
            c.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>{first}</auth>")
            el = await c.recv()
            assert el.tag.endswith("}failure"), el.tag
        # a wrong tls-server-end-point value (a proxy in between): a negotiation failure too
        el = await _scram(c, "SCRAM-SHA-256-PLUS", user, pw, ("tls-server-end-point", b"\0" * 32))
        assert el.tag.endswith("}failure"), el.tag
        t0 = time.monotonic()
        el = await _scram(c, "SCRAM-SHA-256", user, pw, None)
        assert el.tag.endswith("}success"), el.tag
        assert time.monotonic() - t0 < 0.5  # not delayed
        await c.close()
    assert s.call_sync(s.server.auth_limiter.delay, "127.0.0.1", user) == 0


async def test_wrong_passwords_delay_that_account_from_that_address_first(rookery_server_factory, caplog):
    import logging

    from test_streams import _scram

    caplog.set_level(logging.INFO, logger="rookery.auth")

    s = rookery_server_factory(c2s={"max_auth_failures_per_ip": 50, "max_auth_failures_per_account": 2,
                                    "auth_failure_delay": 0.2})
    jid, pw = s.make_user()
    other, other_pw = s.make_user()
    user = jid.split("@")[0]
    for _ in range(2):
        c = await RawClient().connect(s.direct_tls_port, tls=True)
        await c.open_stream()
        assert (await _scram(c, "SCRAM-SHA-256", user, "wrong", None)).tag.endswith("}failure")
        await c.close()
    # the lock-out line names the address and the account, never a password
    throttled = [r.getMessage() for r in caplog.records if "login throttled" in r.getMessage()]
    assert throttled and user in throttled[0] and "127.0.0.1" in throttled[0] and "wrong" not in throttled[0]
    # that account from that address now waits (0.2 s * 2 for the first attempt over), then logs in
    c = await RawClient().connect(s.direct_tls_port, tls=True)
    await c.open_stream()
    t0 = time.monotonic()
    assert (await _scram(c, "SCRAM-SHA-256", user, pw, None)).tag.endswith("}success")
    assert time.monotonic() - t0 >= 0.4
    await c.close()
    # another account from the same address is not slowed down
    c = await RawClient().connect(s.direct_tls_port, tls=True)
    await c.open_stream()
    t0 = time.monotonic()
    assert (await _scram(c, "SCRAM-SHA-256", other.split("@")[0], other_pw, None)).tag.endswith("}success")
    assert time.monotonic() - t0 < 0.4
    await c.close()


# -- deluser removes every row ------------------------------------------------------------------------


async def test_deluser_of_a_connected_user_leaves_no_row_behind(served):
    import sqlite3

    jid, friend = user(), user()
    for j in (jid, friend):
        assert (await acli("adduser", j, "-p", "pw", "-c", served.config)).returncode == 0
    c = await RawClient().login(served.port, jid, "pw")
    f = await RawClient().login(served.port, friend, "pw")
    try:
        await c.iq(f"<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='{friend}'/></query></iq>")
        await f.iq(f"<iq type='set' id='r2'><query xmlns='jabber:iq:roster'><item jid='{jid}'/></query></iq>")
        await c.iq("<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>Gone Soon</FN></vCard></iq>")
        c.send("<presence/>")
        c.send("<presence type='unavailable'><status>bye</status></presence>")
        c.send("<presence/>")
        await c.iq("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        r = await acli("deluser", jid, "-c", served.config)
        assert r.returncode == 0, r.stderr
        await asyncio.sleep(0.5)  # whatever the sessions' ends would have written has landed by now
        db = sqlite3.connect(served.data_dir / "rookery.sqlite")
        try:
            local = jid.split("@")[0]
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                      if "username" in [c[1] for c in db.execute(f"PRAGMA table_info({t})")]]
            left = {t: n for t in tables
                    if (n := db.execute(f"SELECT count(*) FROM {t} WHERE username = ?", (local,)).fetchone()[0])}
            assert left == {}
            assert db.execute("SELECT count(*) FROM roster_items WHERE contact = ?", (jid,)).fetchone()[0] == 0
        finally:
            db.close()
    finally:
        await c.close()
        await f.close()


# -- files and privileges -----------------------------------------------------------------------------


def test_data_files_are_private(served):
    import stat

    assert stat.S_IMODE(served.data_dir.stat().st_mode) == 0o700
    for f in served.data_dir.rglob("*"):
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    assert stat.S_IMODE((served.data_dir / "tls").stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: the check cannot fail for root")
def test_serve_refuses_to_start_when_the_data_dir_is_not_writable(tmp_path):
    cfg = write_config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o500)
    try:
        r = cli("serve", "-c", cfg)
        assert_one_line_error(r.returncode, r.stdout, r.stderr, "data_dir", "is not writable by user")
    finally:
        data.chmod(0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the data dir to another user")
def test_a_command_run_as_root_on_another_users_data_dir_warns(tmp_path):
    cfg = write_config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)
    r = cli("adduser", "w@localhost", "-p", "pw", "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("warning: ") and "may not be writable by the server" in r.stderr


async def test_own_missing_vcard_is_an_empty_vcard_with_or_without_to(served):
    """XEP-0054 §3.1 (issue 7 item 8): clients ask for their own vCard without 'to' (Profanity, poezio)
    or to their bare JID (slixmpp); both get an empty <vCard/>, never an error."""
    jid = user()
    assert (await acli("adduser", jid, "-p", "pw", "-c", served.config)).returncode == 0
    c = await RawClient().login(served.port, jid, "pw")
    try:
        for to in ("", f" to='{jid}'"):
            r = await c.iq(f"<iq type='get' id='v{len(to)}'{to}><vCard xmlns='vcard-temp'/></iq>")
            assert r.get("type") == "result", r.attrib
            v = r.find("{vcard-temp}vCard")
            assert v is not None and len(v) == 0
    finally:
        await c.close()
