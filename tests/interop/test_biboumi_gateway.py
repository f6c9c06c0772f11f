"""A real gateway (XEP-0100 "transport" story) on loopback: biboumi, the XMPP-to-IRC gateway, connects to
Rookery as an external component (XEP-0114), and ngircd is the IRC server.  A Rookery user (slixmpp)
joins an IRC channel through biboumi and talks with a plain IRC client (a raw socket below), both
ways, in the channel and in private.

Both programs are Debian packages (``biboumi``, ``ngircd``), installed here when missing (as root,
``apt-get update`` once) and run as children of the test with their own configuration in a temporary
directory, never as system services; they are stopped by PID at teardown.  The IRC server listens
on a free loopback port, which the user sets through biboumi's XEP-0050 ``configure`` command on the
IRC server's JID (the gateway's own ad-hoc commands, through Rookery's component route).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import slixmpp

from rookery.testing import RunningServer

pytestmark = pytest.mark.interop

GATEWAY = "irc.localhost"
SECRET = "biboumi-test-secret"
PACKAGES = {"biboumi": "biboumi", "ngircd": "ngircd"}  # executable -> Debian package
_apt_updated = False


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_packages(executables: dict[str, str]) -> dict[str, str]:
    """The paths of ``executables``, installing their Debian packages when missing; skips the test with
    the reason when they cannot be installed."""
    global _apt_updated
    missing = [pkg for exe, pkg in executables.items() if _which(exe) is None]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"needs the Debian packages {', '.join(missing)} (not installed; installing needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        lock = ["-o", "DPkg::Lock::Timeout=300"]
        try:
            if not _apt_updated:
                subprocess.run(["apt-get", *lock, "update"], env=env, capture_output=True, timeout=600, check=True)
                _apt_updated = True
            subprocess.run(["apt-get", *lock, "install", "-y", "--no-install-recommends", *missing], env=env,
                           capture_output=True, timeout=900, check=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            out = getattr(e, "stderr", b"") or b""
            pytest.skip(f"cannot install {', '.join(missing)}: {e} {out.decode(errors='replace')[-300:]}")
    paths = {exe: _which(exe) for exe in executables}
    absent = [exe for exe, p in paths.items() if p is None]
    if absent:
        pytest.skip(f"{', '.join(absent)} not found after installing {', '.join(missing)}")
    return {exe: p for exe, p in paths.items() if p is not None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A child process with its output in a file; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        p = self.proc
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        self._out.close()


def wait_for(pred, timeout: float, what: str, children: list[Child] = ()) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        for c in children:
            if c.proc.poll() is not None:
                raise AssertionError(f"{c.name} exited ({c.proc.returncode}) while waiting for {what}:\n"
                                     f"{c.output()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}:\n{c.output()[-3000:]}" for c in children)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.05)


class Gateway:
    """Rookery with biboumi connected as a component, and ngircd on a free loopback port."""

    def __init__(self, server: RunningServer, irc_port: int, children: list[Child]) -> None:
        self.server = server
        self.irc_host = "127.0.0.1"
        self.irc_port = irc_port
        self.children = children

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}:\n{c.output()[-4000:]}" for c in self.children)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    exe = ensure_packages(PACKAGES)
    tmp = Path(tempfile.mkdtemp(prefix="rookery-gw-"))
    children: list[Child] = []
    server = RunningServer({"components": {"secrets": {GATEWAY: SECRET}}}, tmp / "rookery").start()
    try:
        # ngircd, in the foreground with its own configuration (it drops root for "nobody": its
        # PID file goes into a directory that user may write)
        run = tmp / "ngircd-run"
        run.mkdir()
        run.chmod(0o777)
        irc_port = free_port()
        conf = tmp / "ngircd.conf"
        conf.write_text(f"""[Global]
Name = irc.rookery.test
Info = Rookery gateway test
AdminInfo1 = Rookery tests
AdminInfo2 = loopback only
AdminEMail = nobody@localhost
Listen = 127.0.0.1
Ports = {irc_port}
MotdPhrase = "Rookery gateway test"
PidFile = {run}/ngircd.pid

[Limits]
MaxConnectionsIP = 0
PingTimeout = 600

[Options]
PAM = no
Ident = no
DNS = no
""")
        children.append(Child("ngircd", [exe["ngircd"], "-n", "-f", str(conf)], tmp / "ngircd.log"))

        def irc_up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", irc_port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(irc_up, 15, "ngircd to listen", children)

        # biboumi: the component, with its database and TLS policy directory in the temporary directory
        cfg = tmp / "biboumi.cfg"
        cfg.write_text(f"""hostname={GATEWAY}
password={SECRET}
xmpp_server_ip=127.0.0.1
port={server.component_port}
db_name={tmp}/biboumi.sqlite
log_level=0
identd_port=0
policy_directory={tmp}
realname_customization=true
""")
        children.append(Child("biboumi", [exe["biboumi"], str(cfg)], tmp / "biboumi.log"))
        wait_for(lambda: GATEWAY in server.call_sync(lambda: dict(server.server.components.connected)), 15,
                 "biboumi to connect to Rookery", children)
        yield Gateway(server, irc_port, children)
    finally:
        for c in reversed(children):  # biboumi first: it says QUIT to the IRC server and closes its stream
            c.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# -- a plain IRC client ----------------------------------------------------------------------------
class IRCClient:
    """RFC 2812 over a raw socket: enough to register, join, talk and read."""

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self._reader: asyncio.StreamReader
        self._writer: asyncio.StreamWriter
        self._task: asyncio.Task | None = None

    async def connect(self, host: str, port: int) -> IRCClient:
        self._reader, self._writer = await asyncio.open_connection(host, port)
        self._task = asyncio.get_running_loop().create_task(self._read())
        self.send(f"NICK {self.nick}")
        self.send(f"USER {self.nick} 0 * :Plain IRC client")
        await self.expect(lambda p: p[1] == "001")  # RPL_WELCOME
        return self

    def send(self, line: str) -> None:
        self._writer.write(line.encode() + b"\r\n")

    async def _read(self) -> None:
        while True:
            raw = await self._reader.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("PING"):
                self.send("PONG" + line[4:])
                continue
            self.lines.put_nowait(line)

    @staticmethod
    def parse(line: str) -> list[str]:
        """[prefix, command, params..., trailing]"""
        prefix = ""
        if line.startswith(":"):
            prefix, _, line = line[1:].partition(" ")
        head, _, trailing = line.partition(" :")
        return [prefix, *head.split(), *([trailing] if trailing or " :" in line else [])]

    async def expect(self, pred, timeout: float = 15.0) -> list[str]:  # noqa: ANN001
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            line = await asyncio.wait_for(self.lines.get(), max(0.01, end - loop.time()))
            p = self.parse(line)
            if len(p) >= 2 and pred(p):
                return p

    async def quit(self) -> None:
        try:
            self.send("QUIT :bye")
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except Exception:
            pass
        if self._task is not None:
            self._task.cancel()


async def xmpp_user(server: RunningServer) -> slixmpp.ClientXMPP:
    jid, pw = server.make_user()
    c = slixmpp.ClientXMPP(jid, pw)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.ssl_context = ctx
    for p in ("xep_0030", "xep_0004", "xep_0050", "xep_0045"):
        c.register_plugin(p)
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    c.add_event_handler("session_start", lambda _e: started.done() or started.set_result(True))
    c.add_event_handler("failed_auth", lambda _e: started.done() or started.set_exception(PermissionError("auth")))
    c.connect("127.0.0.1", server.c2s_port)
    await asyncio.wait_for(started, 10)
    await c.get_roster()
    c.send_presence()
    return c


async def configure_irc_port(c: slixmpp.ClientXMPP, server_jid: str, port: int) -> None:
    """biboumi's XEP-0050 ``configure`` command on an IRC server JID: plain ``port``, no TLS ports."""
    adhoc = c.plugin["xep_0050"]
    r = await adhoc.send_command(server_jid, "configure", timeout=15)
    cmd = r["command"]
    assert cmd["status"] == "executing", r
    form = c.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="ports", ftype="text-multi", value=[str(port)])
    form.add_field(var="tls_ports", ftype="text-multi", value=[])
    done = await adhoc.send_command(server_jid, "configure", action="complete", payload=form,
                                    sessionid=cmd["sessionid"], timeout=15)
    assert done["command"]["status"] == "completed", done


async def disconnect(*clients: slixmpp.ClientXMPP) -> None:
    for c in clients:
        try:
            await asyncio.wait_for(c.disconnect(), 5)
        except Exception:
            pass


# -- the tests -------------------------------------------------------------------------------------
async def test_user_subscribes_to_the_transport(gateway):
    """XEP-0100 §4.1 / biboumi's roster support: the transport JID in the roster, approved, online."""
    c = await xmpp_user(gateway.server)
    try:
        await _subscribe_to_transport(c, gateway)
    except (TimeoutError, AssertionError) as e:
        raise AssertionError(f"{e!r}\n{gateway.logs()}") from e
    finally:
        await disconnect(c)


async def _subscribe_to_transport(c: slixmpp.ClientXMPP, gateway: Gateway) -> None:
    online: asyncio.Future = asyncio.get_running_loop().create_future()
    c.add_event_handler("presence_available",
                        lambda p: str(p["from"]) == GATEWAY and not online.done() and online.set_result(p))
    subscribed: asyncio.Future = asyncio.get_running_loop().create_future()
    c.add_event_handler("presence_subscribed",
                        lambda p: str(p["from"].bare) == GATEWAY and not subscribed.done() and subscribed.set_result(p))
    c.send_presence(pto=GATEWAY, ptype="subscribe")
    await asyncio.wait_for(subscribed, 15)
    await asyncio.wait_for(online, 15)
    # the roster item, as the subscription left it (slixmpp keeps it from the roster pushes)
    item = c.client_roster[GATEWAY]
    assert item["subscription"] in ("to", "both"), (dict(item), gateway.logs())
    # disco#items of the server lists the gateway
    items_iq = await c.plugin["xep_0030"].get_items(jid=gateway.server.domain)
    assert GATEWAY in {i[0] for i in items_iq["disco_items"]["items"]}


async def test_xmpp_user_and_irc_user_talk_in_a_channel_and_in_private(gateway):
    irc = await IRCClient("ircfriend").connect("127.0.0.1", gateway.irc_port)
    c = await xmpp_user(gateway.server)
    try:
        await _talk(c, irc, gateway)
    except (TimeoutError, AssertionError) as e:
        raise AssertionError(f"{e!r}\n{gateway.logs()}") from e
    finally:
        await disconnect(c)
        await irc.quit()


async def _talk(c: slixmpp.ClientXMPP, irc: IRCClient, gateway: Gateway) -> None:
    irc.send("JOIN #rookery")
    await irc.expect(lambda p: p[1] == "366")  # RPL_ENDOFNAMES: joined
    server_jid = f"{gateway.irc_host}@{GATEWAY}"
    await configure_irc_port(c, server_jid, gateway.irc_port)

    room = f"#rookery%{gateway.irc_host}@{GATEWAY}"
    groupchat: asyncio.Queue = asyncio.Queue()
    private: asyncio.Queue = asyncio.Queue()
    c.add_event_handler("groupchat_message", lambda m: groupchat.put_nowait(m))
    c.add_event_handler("message", lambda m: m["type"] in ("chat", "normal") and private.put_nowait(m))
    try:
        await c.plugin["xep_0045"].join_muc_wait(room, "julnick", maxstanzas=0, timeout=30)
    except Exception as e:
        raise AssertionError(f"joining {room} failed: {e!r}\n{gateway.logs()}") from None

    # the IRC side sees the XMPP user join
    await irc.expect(lambda p: p[1] == "JOIN" and p[0].startswith("julnick!"))

    # XMPP -> IRC, in the channel
    c.send_message(mto=room, mbody="hello from xmpp", mtype="groupchat")
    p = await irc.expect(lambda p: p[1] == "PRIVMSG" and p[2] == "#rookery")
    assert p[0].startswith("julnick!") and p[3] == "hello from xmpp"

    # IRC -> XMPP, in the channel
    irc.send("PRIVMSG #rookery :hello from irc")
    while True:
        m = await asyncio.wait_for(groupchat.get(), 15)
        if m["body"] == "hello from irc":
            break
    assert str(m["from"]) == f"{room}/ircfriend"

    # IRC -> XMPP, in private: from the IRC user's JID at the gateway
    irc.send("PRIVMSG julnick :psst, private")
    while True:  # biboumi also sends the IRC server's notices ("Connecting to …") as messages
        m = await asyncio.wait_for(private.get(), 15)
        if m["body"] == "psst, private":
            break
    sender = m["from"]
    assert sender.domain == GATEWAY and "ircfriend" in str(sender).lower(), str(sender)

    # XMPP -> IRC, in private: a reply to that JID
    c.send_message(mto=sender, mbody="psst back", mtype="chat")
    p = await irc.expect(lambda p: p[1] == "PRIVMSG" and p[2] == "ircfriend")
    assert p[0].startswith("julnick!") and p[3] == "psst back"

    # leaving the room: the IRC side sees the PART
    c.plugin["xep_0045"].leave_muc(room, "julnick")
    await irc.expect(lambda p: p[1] in ("PART", "QUIT") and p[0].startswith("julnick!"))
