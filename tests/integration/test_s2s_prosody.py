"""Federation with Prosody (Debian package ``prosody``), on loopback: a Rookery user and a Prosody user
subscribe to each other, see each other's presence and chat both ways — with certificates from a test
CA (SASL EXTERNAL, XEP-0178, both directions), then with self-signed certificates (dialback only,
XEP-0220).  Prosody runs as a child process with its own configuration, data and ports; it resolves
Rookery's domain through a private hosts file and SRV record given to libunbound."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from s2s_helpers import TestCA, free_port, subscribe_and_chat

pytestmark = pytest.mark.interop

R_DOMAIN = "r.example"
P_DOMAIN = "p.example"
_install_tried: list[bool] = []


def _prosody() -> str:
    path = shutil.which("prosody")
    if path is None and not _install_tried and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_tried.append(True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"], capture_output=True,
                       timeout=600, env=env)
        # installing starts no service here (no init system); the test never uses a system service
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "prosody"],
                       capture_output=True, timeout=900, env=env)
        path = shutil.which("prosody")
    if path is None:
        pytest.skip("prosody is not installed and could not be installed with apt-get")
    return path


class Prosody:
    """A Prosody serving ``p.example`` on its own loopback ports, started and stopped by the test."""

    def __init__(self, directory: Path, cert: tuple[str, str], ca_file: str, rookery_s2s_port: int,
                 s2s_port: int, secure_auth: bool) -> None:
        self.dir = directory
        self.domain = P_DOMAIN
        self.c2s_port = free_port()
        self.s2s_port = s2s_port
        data = directory / "data"
        (data / "p%2eexample" / "accounts").mkdir(parents=True)
        hosts = directory / "hosts"
        hosts.write_text(f"127.0.0.1 {R_DOMAIN}\n")
        srv = f"_xmpp-server._tcp.{R_DOMAIN}. 60 IN SRV 0 0 {rookery_s2s_port} {R_DOMAIN}."
        self.log = directory / "prosody.log"
        self.config = directory / "prosody.cfg.lua"
        self.config.write_text(f"""
run_as_root = true
pidfile = "{directory}/prosody.pid"
data_path = "{data}"
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{self.log}" }} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
s2s_ports = {{ {self.s2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping" }}
modules_disabled = {{ "admin_socket" }}
authentication = "internal_plain"
storage = "internal"
s2s_secure_auth = {"true" if secure_auth else "false"}
s2s_require_encryption = true
unbound = {{ hoststxt = "{hosts}"; resolvconf = false; options = {{ ["local-data:"] = "{srv}"; ["local-zone:"] = "{R_DOMAIN}. static" }} }}
ssl = {{ certificate = "{cert[0]}"; key = "{cert[1]}"; cafile = "{ca_file}" }}
VirtualHost "{P_DOMAIN}"
    ssl = {{ certificate = "{cert[0]}"; key = "{cert[1]}"; cafile = "{ca_file}" }}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def make_user(self, name: str, password: str) -> tuple[str, str]:
        (self.dir / "data" / "p%2eexample" / "accounts" / f"{name}.dat").write_text(
            f'return {{ ["password"] = "{password}" }};\n')
        return f"{name}@{P_DOMAIN}", password

    def start(self, binary: str) -> Prosody:
        self.proc = subprocess.Popen([binary, "-F", "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prosody exited ({self.proc.returncode}): {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.c2s_port), 0.2).close()
                socket.create_connection(("127.0.0.1", self.s2s_port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prosody did not start: {self.tail()}")

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # only our own child, by PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def prosody_binary() -> str:
    return _prosody()


async def _federate(rookery_server_factory, tmp_path: Path, binary: str, *, ca_certs: bool) -> None:
    ca = TestCA(tmp_path)
    r_cert = ca.issue("rookery", [R_DOMAIN], self_signed=not ca_certs)
    p_cert = ca.issue("prosody", [P_DOMAIN], self_signed=not ca_certs)
    r_port, p_port = free_port(), free_port()
    prosody = Prosody(tmp_path, p_cert, str(ca.path), r_port, p_port, secure_auth=ca_certs)
    s2s = {"listen": [f"127.0.0.1:{r_port}"], "hosts": {P_DOMAIN: f"127.0.0.1:{p_port}"}}
    if ca_certs:
        s2s.update(require_valid_certs=True, dialback=False)
    rookery = rookery_server_factory(domains=[R_DOMAIN], s2s=s2s,
                                     tls={"cert": r_cert[0], "key": r_cert[1], "ca_file": str(ca.path)})
    prosody.start(binary)
    try:
        r_jid, r_pw = rookery.make_user()
        p_jid, p_pw = prosody.make_user("juliet", "capulet-pw")
        try:
            await subscribe_and_chat(rookery, r_jid, r_pw, prosody, p_jid, p_pw, b_mech="PLAIN")
        except AssertionError:
            print(prosody.tail())
            raise
        links = rookery.call_sync(rookery.server.s2s.describe)
        methods = {(d["direction"], d["auth"]) for d in links if d["state"] == "ready"}
        if ca_certs:
            assert methods == {("out", "EXTERNAL"), ("in", "EXTERNAL")}, links
        else:
            assert methods == {("out", "dialback"), ("in", "dialback")}, links
    finally:
        prosody.stop()


async def test_rookery_and_prosody_federate_with_ca_certificates_over_sasl_external(
        rookery_server_factory, tmp_path, prosody_binary):
    await _federate(rookery_server_factory, tmp_path, prosody_binary, ca_certs=True)


async def test_rookery_and_prosody_federate_with_self_signed_certificates_over_dialback(
        rookery_server_factory, tmp_path, prosody_binary):
    await _federate(rookery_server_factory, tmp_path, prosody_binary, ca_certs=False)
