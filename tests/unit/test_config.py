"""Configuration: every key has a default; an unknown key or a bad value is a one-line ConfigError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from rookery.config import DEFAULT_MODULES, Config, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_text(tmp_path: Path, text: str | bytes) -> Config:
    path = tmp_path / "rookery.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_config(str(path))


def config_error(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.startswith(str(tmp_path / "rookery.toml")), msg  # names the file
    return msg


def _required_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if field.is_required():
            out.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _required_fields(ann, f"{prefix}{name}.")
    return out


def test_every_key_has_a_default():
    assert _required_fields(Config) == []


def test_defaults_load_with_no_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.domains == ["localhost"]
    assert cfg.storage == "sqlite" and cfg.data_dir == "rookery-data"
    assert cfg.modules == DEFAULT_MODULES
    assert cfg.c2s.listen == ["*:5222"] and cfg.c2s.direct_tls_listen == ["*:5223"]
    assert cfg.c2s.require_encryption is True and cfg.c2s.allow_plaintext_auth is False
    assert cfg.tls.cert is None and cfg.tls.key is None and cfg.tls.min_version == "1.2"
    assert cfg.log_level == "info"


def test_an_empty_file_gives_the_defaults(tmp_path):
    assert load_text(tmp_path, "") == Config()


def test_example_config_at_the_repo_root_loads():
    example = REPO_ROOT / "rookery.toml"
    if not example.exists():
        pytest.skip("no example rookery.toml at the repository root yet")
    load_config(str(example))


def test_a_full_config_loads_and_normalizes_domains(tmp_path):
    cfg = load_text(
        tmp_path,
        """
domains = ["Example.ORG", "localhost"]
data_dir = "/var/lib/rookery"
storage = "postgresql://rookery:secret@db.example.org/rookery"
modules = ["disco", "ping"]
log_level = "debug"

[c2s]
listen = ["*:5222", "[::1]:5222", "127.0.0.1:0"]
direct_tls_listen = []
require_encryption = false
max_stanza_size = 65536
auth_failure_delay = 0

[tls]
cert = "/etc/rookery/cert.pem"
key = "/etc/rookery/key.pem"
min_version = "1.3"

[offline]
max_messages = 0
""",
    )
    assert cfg.domains == ["example.org", "localhost"]
    assert cfg.storage.startswith("postgresql://")
    assert cfg.modules == ["disco", "ping"]
    assert cfg.c2s.listen == ["*:5222", "[::1]:5222", "127.0.0.1:0"] and cfg.c2s.direct_tls_listen == []
    assert cfg.c2s.require_encryption is False and cfg.c2s.max_stanza_size == 65536
    assert cfg.tls.min_version == "1.3" and cfg.offline.max_messages == 0
    assert cfg.c2s.max_depth == 32  # unset keys keep their defaults


def test_mam_section_sets_the_mam_module_options(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[mam]\nretention = 30\nfull_text = true\n")
    cfg = load_config(str(p))
    assert cfg.options_of("mam") == {"retention": 30, "full_text": True}


def test_unknown_top_level_key(tmp_path):
    assert config_error(tmp_path, "bogus = 1").endswith(": bogus: unknown key")


@pytest.mark.parametrize("section", ["c2s", "s2s", "http", "tls", "offline", "version", "mam"])
def test_unknown_nested_key(tmp_path, section):
    assert config_error(tmp_path, f"[{section}]\nbogus = 1").endswith(f": {section}.bogus: unknown key")


@pytest.mark.parametrize(
    "text,key",
    [
        ('[c2s]\nrequire_encryption = "maybe"', "c2s.require_encryption"),
        ('[c2s]\nmax_stanza_size = "big"', "c2s.max_stanza_size"),
        ("[c2s]\nmax_stanza_size = 10", "c2s.max_stanza_size"),  # below the minimum
        ("[c2s]\nauth_failure_delay = -1", "c2s.auth_failure_delay"),
        ("[c2s]\nhandshake_timeout = 0", "c2s.handshake_timeout"),
        ("[c2s]\nresume_timeout = -1", "c2s.resume_timeout"),
        ('[c2s]\nresume_timeout = "long"', "c2s.resume_timeout"),
        ("[modules.smacks]\nrequest_ack_after = 0", "modules.smacks.request_ack_after"),
        ("[modules.smacks]\nnope = 1", "modules.smacks.nope"),
        ('[modules.push]\ninclude_body = "maybe"', "modules.push.include_body"),
        ('[c2s]\nlisten = "*:5222"', "c2s.listen"),  # a string, not a list
        ("[offline]\nmax_messages = -1", "offline.max_messages"),
        ('[version]\nshow_os = "yes please"', "version.show_os"),
        ("[mam]\nretention = -1", "mam.retention"),
        ('[mam]\nretention = "forever"', "mam.retention"),
        ('[mam]\nfull_text = "sometimes"', "mam.full_text"),
        ("[mam]\nmax_page = 0", "mam.max_page"),
        ("[mam]\ncleanup_interval = 0", "mam.cleanup_interval"),
        ("[mam]\nmax_messages_per_user = -1", "mam.max_messages_per_user"),
        ('[mam]\nmax_messages_per_user = "lots"', "mam.max_messages_per_user"),
        ("[modules.mam]\nretention = -2", "modules.mam.retention"),
        ('[tls]\nmin_version = "1.0"', "tls.min_version"),
        ("[tls]\ncert = 5", "tls.cert"),
        ('[tls]\nciphers = "NO-SUCH-CIPHER"', "tls.ciphers"),
        ('log_level = "verbose"', "log_level"),
        ('domains = "localhost"', "domains"),
        ("domains = [1]", "domains.0"),
        ("data_dir = 3", "data_dir"),
        ("c2s = 5", "c2s"),
        ("modules = 5", "modules"),
        ("modules = { enabled = 5 }", "modules"),
        ("[modules.ping]\nnope = 1", "modules.ping.nope"),
        ("[modules.offline]\nmax_messages = -1", "modules.offline.max_messages"),
        ("[modules.nope]\nx = 1", "modules.nope"),
        ("[modules.csi]\nmax_queue = 0", "modules.csi.max_queue"),
        ('[modules.csi]\nmax_queue = "lots"', "modules.csi.max_queue"),
        ("[modules.csi]\nqueue = 5", "modules.csi.queue"),
        ("[modules.carbons]\nx = 1", "modules.carbons.x"),
    ],
)
def test_bad_types_and_values_name_the_key(tmp_path, text, key):
    assert f": {key}: " in config_error(tmp_path, text)


@pytest.mark.parametrize(
    "spec", ["localhost", "5222", ":5222", "localhost:", "localhost:99999", "host:port", "host:-1"]
)
@pytest.mark.parametrize("key", ["c2s.listen", "c2s.direct_tls_listen", "s2s.listen", "http.listen"])
def test_bad_listen_spec(tmp_path, key, spec):
    section, name = key.split(".")
    msg = config_error(tmp_path, f'[{section}]\n{name} = ["127.0.0.1:5222", "{spec}"]')
    assert f": {key}: " in msg and repr(spec) in msg


@pytest.mark.parametrize("domains", ['["a b"]', '[""]', '["localhost", "exa mple.org"]', "[]"])
def test_bad_domain(tmp_path, domains):
    assert ": domains: " in config_error(tmp_path, f"domains = {domains}")


def test_unknown_module_is_named_with_the_available_ones(tmp_path):
    msg = config_error(tmp_path, 'modules = ["ping", "nope"]')
    assert ": modules: unknown module 'nope'" in msg and "ping" in msg


@pytest.mark.parametrize("url", ["mysql://db/rookery", "", "sqlite3", "postgresql:/x"])
def test_bad_storage_url(tmp_path, url):
    assert ": storage: " in config_error(tmp_path, f'storage = "{url}"')


@pytest.mark.parametrize("text", ['[tls]\ncert = "/c.pem"', '[tls]\nkey = "/k.pem"'])
def test_tls_cert_and_key_go_together(tmp_path, text):
    assert ": tls: cert and key must be set together" in config_error(tmp_path, text)


def test_several_problems_report_the_first_and_count_the_rest(tmp_path):
    msg = config_error(tmp_path, 'bogus = 1\nlog_level = "loud"')
    assert "(and 1 more)" in msg


def test_invalid_toml_is_a_config_error(tmp_path):
    assert "not valid TOML" in config_error(tmp_path, "domains = [")


def test_invalid_utf8_is_a_config_error(tmp_path):
    assert "not valid TOML" in config_error(tmp_path, b'domains = ["\xff"]')


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file_is_a_config_error(tmp_path, kind):
    path = tmp_path / "nope.toml"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigError, match=r"^cannot read config file .*nope\.toml: "):
        load_config(str(path))


def test_register_section_defaults_keys_and_bad_values(tmp_path):
    cfg = load_text(tmp_path, "")
    assert "register" in DEFAULT_MODULES and "contact_info" in DEFAULT_MODULES
    assert cfg.options_of("register") == {}
    assert cfg.register_.allow is False and cfg.register_.invite_only is False
    cfg = load_text(tmp_path, "[register]\nallow = true\nmax_per_ip = 2\n[vhosts.localhost.options.register]\nallow = false\n")
    assert cfg.options_of("register") == {"allow": True, "max_per_ip": 2}
    assert cfg.options_of("register", "localhost") == {"allow": False, "max_per_ip": 2}
    assert "register.allw: unknown key" in config_error(tmp_path, "[register]\nallw = true\n")
    assert "register.allow" in config_error(tmp_path, "[register]\nallow = 'maybe'\n")
    assert "register.max_per_ip" in config_error(tmp_path, "[register]\nmax_per_ip = -1\n")
    assert "register.window" in config_error(tmp_path, "[register]\nwindow = 0\n")
    assert "modules.register.invite_only" in config_error(tmp_path, "[modules.register]\ninvite_only = 3\n")


def test_contact_info_options_are_lists_of_uris(tmp_path):
    cfg = load_text(tmp_path, '[modules.contact_info]\nadmin = ["mailto:a@example.org", "xmpp:a@example.org"]\n')
    assert cfg.options_of("contact_info") == {"admin": ["mailto:a@example.org", "xmpp:a@example.org"]}
    assert "modules.contact_info.admin" in config_error(tmp_path, '[modules.contact_info]\nadmin = ["a@example.org"]\n')
    assert "modules.contact_info.admin" in config_error(tmp_path, '[modules.contact_info]\nadmin = "mailto:a@b"\n')
    assert "modules.contact_info.postal" in config_error(tmp_path, '[modules.contact_info]\npostal = []\n')


def test_log_section_and_the_top_level_log_level(tmp_path):
    assert load_text(tmp_path, 'log_level = "debug"').effective_log_level == "debug"
    cfg = load_text(tmp_path, 'log_level = "debug"\n[log]\nlevel = "warning"\nfile = "/tmp/x.log"\nformat = "json"')
    assert (cfg.effective_log_level, cfg.log.file, cfg.log.format) == ("warning", "/tmp/x.log", "json")
    assert "log.format" in config_error(tmp_path, '[log]\nformat = "xml"')
    assert "log.bogus: unknown key" in config_error(tmp_path, "[log]\nbogus = 1")


def test_tls_domains_and_auth_limit_keys(tmp_path):
    cfg = load_text(tmp_path, 'domains = ["example.org"]\n[tls.domains."example.org"]\ncert = "/c"\nkey = "/k"\n'
                              '[tls.domains."muc.example.org"]\ncert = "/c2"\nkey = "/k2"\n'
                              "[c2s]\nmax_auth_failures_per_account = 3\nauth_max_delay = 10")
    assert cfg.tls.domains["example.org"].cert == "/c" and cfg.tls.domains["muc.example.org"].key == "/k2"
    assert cfg.c2s.max_auth_failures_per_account == 3 and cfg.c2s.auth_max_delay == 10
    assert "not a served domain" in config_error(tmp_path, '[tls.domains."other.example"]\ncert = "/c"\nkey = "/k"')
    assert "tls.domains.localhost.key" in config_error(tmp_path, '[tls.domains."localhost"]\ncert = "/c"')
    assert "c2s.auth_max_delay" in config_error(tmp_path, "[c2s]\nauth_max_delay = 0")


def test_metrics_section(tmp_path):
    cfg = load_text(tmp_path, '[metrics]\nlisten = ["127.0.0.1:9222"]\nallow = ["10.0.0.0/8"]')
    assert cfg.metrics.active and cfg.metrics.path == "/metrics" and not load_config(None).metrics.active
    msg = config_error(tmp_path, "[metrics]\nenabled = true\n[http]\nlisten = []\ntls_listen = []")
    assert "metrics.enabled: needs [metrics] listen or an [http] listener" in msg


def test_event_loop_takes_auto_uvloop_or_asyncio_and_names_a_bad_value(tmp_path):
    assert load_config(None).event_loop == "auto"
    for v in ("auto", "uvloop", "asyncio"):
        assert load_text(tmp_path, f'event_loop = "{v}"\n').event_loop == v
    assert "event_loop" in config_error(tmp_path, 'event_loop = "trio"\n')


def test_event_loop_runner_follows_the_setting(monkeypatch):
    import asyncio
    import sys

    from rookery.cli import CLIError, event_loop_runner

    assert event_loop_runner("asyncio") is asyncio.run
    uvloop = pytest.importorskip("uvloop")
    assert event_loop_runner("auto") is uvloop.run and event_loop_runner("uvloop") is uvloop.run
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed
    assert event_loop_runner("auto") is asyncio.run
    with pytest.raises(CLIError, match="event_loop"):
        event_loop_runner("uvloop")
