"""The ``rookery`` command line, run as real processes: user commands with and without a running
server, concurrent invocations, one-line errors for every class of bad input, graceful stop on signals."""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from xmpp_helpers import STREAM_NS, RawClient

ROOKERY = [sys.executable, "-m", "rookery"]
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
_names = itertools.count()


# -- helpers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(
    directory: Path,
    extra: str = "",
    *,
    port: int | None = None,
    name: str = "rookery.toml",
    data_dir: Path | None = None,
) -> Path:
    """A config on loopback with its data in ``directory/data``; ``extra`` is added TOML."""
    directory.mkdir(parents=True, exist_ok=True)
    listen = f'["127.0.0.1:{port}"]' if port is not None else '["127.0.0.1:0"]'
    path = directory / name
    path.write_text(
        f'domains = ["localhost", "example.org"]\n'
        f'data_dir = "{data_dir or directory / "data"}"\n'
        f'log_level = "warning"\n'
        f"{extra}\n"
        f"[c2s]\n"
        f"listen = {listen}\n"
        f"direct_tls_listen = []\n"
        f"auth_failure_delay = 0.05\n"
        f"[http]\n"
        f'listen = ["127.0.0.1:0"]\n'
        f'tls_listen = ["127.0.0.1:0"]\n'
        f"[proxy65]\n"
        f'listen = ["127.0.0.1:0"]\n'
    )
    return path


def cli(*args: str | Path, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROOKERY, *map(str, args)],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_many(
    commands: list[tuple[list[str | Path], str | None]], timeout: float = 60
) -> list[tuple[int, str, str]]:
    """Start every command at once; return (status, stdout, stderr) of each, in order."""
    procs = []
    try:
        for args, stdin in commands:
            procs.append(
                (
                    subprocess.Popen(
                        [*ROOKERY, *map(str, args)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                    stdin,
                )
            )
        deadline = time.monotonic() + timeout
        results = []
        for p, stdin in procs:
            out, err = p.communicate(stdin or "", timeout=max(0.1, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
        return results
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def assert_one_line_error(rc: int, out: str, err: str, *expected: str) -> None:
    assert rc != 0, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rookery: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert out == ""


def user() -> str:
    return f"user{next(_names)}x{os.getpid()}@localhost"


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    port: int
    config: Path
    data_dir: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_serve(directory: Path) -> ServeProcess:
    """``rookery serve`` as a subprocess; returns once the c2s port accepts and the control socket exists."""
    port = free_port()
    config = write_config(directory, port=port)
    log = directory / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [*ROOKERY, "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    sp = ServeProcess(proc, port, config, directory / "data", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"rookery serve exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"rookery serve not ready after 30 s: {log.read_text()}")
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


async def acli(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, stdin=stdin)


async def plain_auth(port: int, jid: str, password: str) -> str:
    """The SASL outcome (``success`` / ``failure``) of a PLAIN login over STARTTLS."""
    c = await RawClient().connect(port)
    try:
        await c.open_stream()
        await c.starttls()
        el = await c.auth_plain(jid.split("@")[0], password)
        return el.tag.removeprefix("{%s}" % SASL)
    finally:
        await c.close()


# -- user commands without a server ------------------------------------------------------------------


def test_adduser_users_passwd_deluser_happy_path(tmp_path):
    cfg = write_config(tmp_path)
    # independent commands run side by side (each process costs about a second)
    (rc1, out1, err1), (rc2, out2, err2) = cli_many(
        [
            (["adduser", "alice@localhost", "--password", "s3cret", "--config", cfg], None),
            # --config before the sub-command; the password from stdin
            (["--config", cfg, "adduser", "bob@example.org"], "hunter2\n"),
        ]
    )
    assert (rc1, out1.strip(), err1) == (0, "created alice@localhost", "")
    assert (rc2, out2.strip(), err2) == (0, "created bob@example.org", "")
    listed, listed_domain, changed = cli_many(
        [
            (["-c", cfg, "users"], None),
            (["users", "example.org", "-c", cfg], None),
            (["passwd", "alice@localhost", "-p", "n3w", "--config", cfg], None),
        ]
    )
    assert listed[:2] == (0, "bob@example.org\nalice@localhost\n"), listed
    assert listed_domain[:2] == (0, "bob@example.org\n"), listed_domain
    assert changed[:2] == (0, "password changed for alice@localhost\n"), changed
    r = cli("deluser", "bob@example.org", "--config", cfg)  # no server running: no control socket, still fine
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "deleted bob@example.org", "")
    listed, checked = cli_many([(["users", "--config", cfg], None), (["check", "--config", cfg], None)])
    assert listed[:2] == (0, "alice@localhost\n"), listed
    assert checked[0] == 0 and checked[1].startswith("configuration OK"), checked


def _tty_adduser(cfg: Path, jid: str, answers: list[str]) -> tuple[int, str, str]:
    """Run adduser with a pseudo-terminal as stdin (and no controlling terminal), answering each prompt."""
    master, slave = os.openpty()
    try:
        p = subprocess.Popen(
            [*ROOKERY, "adduser", jid, "--config", str(cfg)],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    try:
        err = b""
        deadline = time.monotonic() + 30
        for answer in answers:
            # getpass flushes pending input when it turns echo off, so answer only after the prompt
            while not err.rstrip().endswith(b":"):
                assert time.monotonic() < deadline, err
                ready, _, _ = select.select([p.stderr], [], [], 0.5)
                if ready:
                    chunk = os.read(p.stderr.fileno(), 4096)  # type: ignore[union-attr]
                    assert chunk, err
                    err += chunk
            os.write(master, answer.encode() + (b"" if answer == "\x04" else b"\n"))  # ^D: end of input
            err += b"|"  # consumed this prompt
        out, rest = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        return p.returncode, out.decode(), (err + rest).decode()
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_adduser_prompts_for_the_password_twice_on_a_terminal(tmp_path):
    cfg = write_config(tmp_path)
    with ThreadPoolExecutor(3) as pool:
        same = pool.submit(_tty_adduser, cfg, "carol@localhost", ["pw-typed", "pw-typed"])
        different = pool.submit(_tty_adduser, cfg, "dave@localhost", ["one", "two"])
        eof = pool.submit(_tty_adduser, cfg, "erin@localhost", ["\x04"])
        (rc, out, err), (rc2, _, err2), (rc3, _, err3) = same.result(), different.result(), eof.result()
    assert (rc, out.strip()) == (0, "created carol@localhost"), err
    assert "Password:" in err and "Again:" in err and "pw-typed" not in err  # not echoed
    assert rc2 == 1 and err2.strip().endswith("rookery: error: the passwords do not match"), err2
    assert rc3 == 1 and err3.strip().endswith("rookery: error: no password given"), err3


@pytest.fixture(scope="module")
def concurrent_results(tmp_path_factory) -> tuple[Path, list[tuple[int, str, str]]]:
    """Ten processes adding ten users and three adding one same user, all at once, on a fresh data dir
    (so they also race to create the schema)."""
    cfg = write_config(tmp_path_factory.mktemp("concurrent"))
    commands: list[tuple[list[str | Path], str | None]] = [
        (["adduser", f"c{i}@localhost", "-p", f"pw{i}", "-c", cfg], None) for i in range(10)
    ]
    commands += [(["adduser", "same@localhost", "-p", f"pw{i}", "-c", cfg], None) for i in range(3)]
    return cfg, cli_many(commands)


def test_concurrent_adduser_processes_all_succeed(concurrent_results):
    cfg, results = concurrent_results
    assert [rc for rc, _, _ in results[:10]] == [0] * 10, [err for _, _, err in results]
    r = cli("users", "localhost", "-c", cfg)
    assert sorted(r.stdout.split()) == sorted([f"c{i}@localhost" for i in range(10)] + ["same@localhost"])


def test_concurrent_adduser_of_one_user_exactly_one_wins(concurrent_results):
    _, results = concurrent_results
    same = results[10:]
    assert sorted(rc for rc, _, _ in same) == [0, 1, 1], same
    for rc, out, err in same:
        if rc:
            assert_one_line_error(rc, out, err, "user same@localhost already exists")
        else:
            assert out.strip() == "created same@localhost"


# -- bad input: one line on stderr naming the problem, non-zero exit --------------------------------

BAD_CONFIGS = {
    "invalid_toml": "domains = [",
    "invalid_utf8": b'domains = ["\xff"]',
    "unknown_top_level_key": "bogus = 1",
    "unknown_nested_key": "[c2s]\nbogus = 1",
    "bad_value": '[c2s]\nrequire_encryption = "maybe"',
    "bad_listen": '[c2s]\nlisten = ["localhost"]',
    "bad_domain": 'domains = ["a b"]',
    "unknown_module": 'modules = ["nope"]',
    "bad_storage": 'storage = "mysql://db"',
    "tls_cert_without_key": '[tls]\ncert = "/x.pem"',
    "missing_tls_files": '[tls]\ncert = "/nonexistent/x.pem"\nkey = "/nonexistent/x.key"',
}

# case: (args, stdin, expected text in the error line); CFG / BAD are replaced by config paths
BAD_INPUT = {
    "invalid_jid": (
        ["adduser", "a@b@localhost", "-p", "x", "-c", "CFG"],
        None,
        "invalid JID 'a@b@localhost'",
    ),
    "jid_without_localpart": (["adduser", "localhost", "-p", "x", "-c", "CFG"], None, "user@domain"),
    "jid_with_resource": (["passwd", "alice@localhost/res", "-p", "x", "-c", "CFG"], None, "user@domain"),
    "domain_not_served": (
        ["adduser", "a@elsewhere.example", "-p", "x", "-c", "CFG"],
        None,
        "domain 'elsewhere.example' is not served here",
    ),
    "users_domain_not_served": (["users", "elsewhere.example", "-c", "CFG"], None, "not served"),
    "user_exists": (
        ["adduser", "alice@localhost", "-p", "x", "-c", "CFG"],
        None,
        "user alice@localhost already exists",
    ),
    "passwd_missing_user": (
        ["passwd", "nobody@localhost", "-p", "x", "-c", "CFG"],
        None,
        "user nobody@localhost does not exist",
    ),
    "deluser_missing_user": (
        ["deluser", "nobody@localhost", "-c", "CFG"],
        None,
        "user nobody@localhost does not exist",
    ),
    "empty_password_on_stdin": (["adduser", "new@localhost", "-c", "CFG"], "\n", "must not be empty"),
    "missing_config_file": (["users", "-c", "MISSING"], None, "cannot read config file"),
    "config_is_a_directory": (["check", "-c", "DIR"], None, "cannot read config file"),
    "data_dir_is_a_file": (["users", "-c", "DATAFILE"], None, "data_dir"),
    "invalid_toml": (["users", "-c", "BAD"], None, "not valid TOML"),
    "invalid_utf8": (["check", "-c", "BAD"], None, "not valid TOML"),
    "unknown_top_level_key": (["adduser", "x@localhost", "-p", "x", "-c", "BAD"], None, "bogus: unknown key"),
    "unknown_nested_key": (["check", "-c", "BAD"], None, "c2s.bogus: unknown key"),
    "bad_value": (["serve", "-c", "BAD"], None, "c2s.require_encryption"),
    "bad_listen": (["serve", "-c", "BAD"], None, "c2s.listen"),
    "bad_domain": (["check", "-c", "BAD"], None, "domains"),
    "unknown_module": (["check", "-c", "BAD"], None, "modules: unknown module 'nope'"),
    "bad_storage": (["users", "-c", "BAD"], None, "storage"),
    "tls_cert_without_key": (["check", "-c", "BAD"], None, "tls"),
    "missing_tls_files": (["serve", "-c", "BAD"], None, "tls.cert"),
}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Every bad-input case run at once (each process costs about a second)."""
    base = tmp_path_factory.mktemp("bad")
    cfg = write_config(base / "good")
    r = cli("adduser", "alice@localhost", "-p", "pw", "-c", cfg)
    assert r.returncode == 0, r.stderr
    (base / "afile").write_text("")
    paths = {
        "CFG": cfg,
        "MISSING": base / "missing.toml",
        "DIR": base,
        "DATAFILE": write_config(base / "df", data_dir=base / "afile"),
    }
    commands = []
    for name, (args, stdin, _) in BAD_INPUT.items():
        if name in BAD_CONFIGS:
            bad = base / f"{name}.toml"
            text = BAD_CONFIGS[name]
            bad.write_bytes(text if isinstance(text, bytes) else text.encode())
            paths["BAD"] = bad
        commands.append(([paths.get(a, a) for a in args], stdin))
    return dict(zip(BAD_INPUT, cli_many(commands), strict=True))


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_a_one_line_error_and_nonzero_exit(bad_input_results, case):
    rc, out, err = bad_input_results[case]
    assert_one_line_error(rc, out, err, BAD_INPUT[case][2])


def test_serve_on_a_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("serve", "--config", write_config(tmp_path, port=port))
    assert_one_line_error(
        r.returncode, r.stdout, r.stderr, f"cannot listen on 127.0.0.1:{port}", "address already in use"
    )


# -- with `rookery serve` running --------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[ServeProcess]:
    sp = start_serve(tmp_path_factory.mktemp("served"))
    try:
        yield sp
    finally:
        sp.stop()


async def test_deluser_while_running_disconnects_the_user_at_once(served):
    jid = user()
    assert (await acli("adduser", jid, "-p", "pw", "-c", served.config)).returncode == 0
    c = await RawClient().login(served.port, jid, "pw")
    other = await RawClient().login(served.port, jid, "pw", resource="other")
    try:
        r = await acli("deluser", jid, "-c", served.config)
        assert (r.returncode, r.stdout.strip()) == (0, f"deleted {jid}"), r.stderr
        # the command returns once the server has closed the sessions: the error is already on its way
        assert await c.stream_error(timeout=2) == "not-authorized"
        assert await other.stream_error(timeout=2) == "not-authorized"
        assert (await c.recv(timeout=2)).tag == "{%s}closed" % STREAM_NS
        assert await plain_auth(served.port, jid, "pw") == "failure"
    finally:
        await c.close()
        await other.close()


async def test_adduser_and_passwd_while_running_take_effect_at_once(served):
    jid = user()
    r = await acli("adduser", jid, "-c", served.config, stdin="old-pw\n")
    assert r.returncode == 0, r.stderr
    assert await plain_auth(served.port, jid, "old-pw") == "success"
    r = await acli("passwd", jid, "-c", served.config, stdin="new-pw\n")
    assert r.returncode == 0, r.stderr
    assert await plain_auth(served.port, jid, "new-pw") == "success"
    assert await plain_auth(served.port, jid, "old-pw") == "failure"
    r = await acli("users", "localhost", "-c", served.config)
    assert jid in r.stdout.split()


async def test_second_serve_on_the_same_data_dir_does_not_take_the_control_socket(served):
    jid = user()
    assert (await acli("adduser", jid, "-p", "pw", "-c", served.config)).returncode == 0
    c = await RawClient().login(served.port, jid, "pw")
    port = free_port()
    second = write_config(served.config.parent, port=port, name="second.toml")
    with open(served.config.parent / "second.log", "wb") as log:
        proc = subprocess.Popen(
            [*ROOKERY, "serve", "-c", str(second)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:  # ready when its port accepts
            assert proc.poll() is None and time.monotonic() < deadline, "second server did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
        # the first server still owns the control socket: deluser still reaches it
        r = await acli("deluser", jid, "-c", served.config)
        assert r.returncode == 0, r.stderr
        assert await c.stream_error(timeout=2) == "not-authorized"
    finally:
        await c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_serve_gracefully_with_system_shutdown(tmp_path, sig):
    sp = await asyncio.to_thread(start_serve, tmp_path)
    try:
        r = await acli("adduser", "sig@localhost", "-p", "pw", "-c", sp.config)
        assert r.returncode == 0, r.stderr
        c = await RawClient().login(sp.port, "sig@localhost", "pw")
        sp.proc.send_signal(sig)
        assert await c.stream_error(timeout=5) == "system-shutdown"
        assert (await c.recv(timeout=5)).tag == "{%s}closed" % STREAM_NS  # </stream:stream>
        await c.close()
        assert await asyncio.to_thread(sp.proc.wait, 5) == 0
        log = sp.log.read_text()
        assert "Traceback" not in log, log
        assert not (sp.data_dir / "rookery.ctl").exists()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", sp.port), timeout=1).close()
    finally:
        sp.stop()
