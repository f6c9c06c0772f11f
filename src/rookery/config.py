"""Typed settings loaded from ``rookery.toml`` (every setting has a default; see docs/configuration.md).

An unknown key or a bad value stops start-up with ``ConfigError`` naming the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .jid import InvalidJID, nameprep

DEFAULT_MODULES = [
    "roster", "presence", "disco", "caps", "ping", "version", "time", "last", "vcard", "private",
    "offline", "session", "register", "contact_info", "carbons", "csi", "blocking", "smacks", "push",
    "mam", "upload", "proxy65", "external_services", "websocket", "bosh", "http_discovery", "web_client", "muc",
    "pubsub", "pep", "avatar_conversion",
]


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_listen(values: list[str]) -> list[str]:
    for v in values:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not \"host:port\" (use \"*:5222\" for all interfaces, \"[::1]:5222\" for IPv6)")
    return values


class C2SConfig(_Section):
    listen: list[str] = ["*:5222"]
    direct_tls_listen: list[str] = ["*:5223"]
    require_encryption: bool = True
    legacy_auth: bool = False
    allow_plaintext_auth: bool = False
    max_stanza_size: int = Field(262144, ge=1024)
    max_depth: int = Field(32, ge=4)
    max_bytes_per_second: int = Field(65536, ge=0)
    burst_bytes: int = Field(524288, ge=0)
    auth_failure_delay: float = Field(1.0, ge=0)
    #: wrong passwords per (address, account) before attempts are delayed exponentially (0: no limit)
    max_auth_failures_per_account: int = Field(5, ge=0)
    #: wrong passwords per address (IPv6: per /64), any account, before attempts are delayed (0: no limit)
    max_auth_failures_per_ip: int = Field(100, ge=0)
    auth_failure_window: float = Field(300.0, gt=0)
    #: the longest delay an attempt waits, in seconds
    auth_max_delay: float = Field(60.0, gt=0)
    keepalive_interval: float = Field(300.0, ge=0)
    handshake_timeout: float = Field(60.0, gt=0)
    #: XEP-0198 §5: seconds a session whose connection was lost waits for <resume/> (0: no resumption)
    resume_timeout: float = Field(300.0, ge=0)

    _v_listen = field_validator("listen", "direct_tls_listen")(_check_listen)


class S2SConfig(_Section):
    """``[s2s]``: server-to-server federation (RFC 6120, XEP-0220, XEP-0178); see docs/federation.md.
    Federation is on when a listener or a static host is configured."""

    #: STARTTLS listeners for incoming peers ("*:5269" on a public server)
    listen: list[str] = []
    #: XEP-0368 direct TLS listeners for incoming peers (the _xmpps-server SRV target, e.g. "*:5270")
    direct_tls_listen: list[str] = []
    #: static peer addresses that win over DNS: {"example.org" = "127.0.0.1:25269"}
    hosts: dict[str, str] = {}
    #: refuse peers whose certificate is not valid for their domain (no dialback fallback)
    require_valid_certs: bool = False
    #: XEP-0220 server dialback when the certificate does not authenticate the peer
    dialback: bool = True
    #: seconds an s2s connection may stay unused before it is closed
    idle_timeout: float = Field(300.0, gt=0)
    #: seconds to resolve, connect, secure and authenticate an outgoing connection (and to verify dialback)
    connect_timeout: float = Field(30.0, gt=0)
    #: stanzas held per outgoing connection while it is being set up; more bounce (resource-constraint)
    max_queue: int = Field(1000, ge=1)

    _v_listen = field_validator("listen", "direct_tls_listen")(_check_listen)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for domain, addr in v.items():
            _check_listen([addr])
            try:
                out[nameprep(domain)] = addr
            except InvalidJID as e:
                raise ValueError(f"{domain!r} is not a valid domain ({e})") from None
        return out

    @property
    def enabled(self) -> bool:
        return bool(self.listen or self.direct_tls_listen or self.hosts)


class ComponentsConfig(_Section):
    """``[components]``: external components (XEP-0114), e.g. gateways such as biboumi."""

    #: where components connect; only listened on when ``secrets`` names at least one component
    listen: list[str] = ["127.0.0.1:5347"]
    #: component domain -> its shared secret (the ``<handshake/>`` password)
    secrets: dict[str, str] = {}

    _v_listen = field_validator("listen")(_check_listen)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for domain, secret in v.items():
            try:
                d = nameprep(domain)
            except InvalidJID as e:
                raise ValueError(f"{domain!r} is not a valid domain ({e})") from None
            if "@" in d or "/" in d:
                raise ValueError(f"{domain!r} is not a domain (a component serves a whole domain)")
            if d in out:
                raise ValueError(f"{domain!r} is given twice")
            if not secret:
                raise ValueError(f"{domain!r}: the secret must not be empty")
            out[d] = secret
        return out


class HTTPConfig(_Section):
    """``[http]``: the HTTP listeners (BOSH, WebSocket, discovery, upload, web client)."""

    listen: list[str] = ["127.0.0.1:5280"]
    #: HTTPS listeners, with the server's certificate
    tls_listen: list[str] = ["127.0.0.1:5281"]
    #: the URL clients reach the HTTP side at, when it is behind a reverse proxy ("https://chat.example.org")
    public_url: str | None = None
    #: largest request body read whole, in bytes (uploads are streamed and limited by [upload])
    max_request_size: int = Field(1048576, ge=1024)
    #: origins allowed by CORS for web clients ("*": any)
    cors_origins: list[str] = ["*"]
    #: serve the built-in web client at / (the ``web_client`` module; false: as if it were not in ``modules``)
    web_client: bool = True
    #: plain-HTTP requests from a loopback address count as encrypted for WebSocket and BOSH (RFC 6120
    #: require_encryption): the traffic never leaves the host (a local client, or a TLS-terminating proxy)
    secure_loopback: bool = True

    _v_listen = field_validator("listen", "tls_listen")(_check_listen)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v


class MetricsConfig(_Section):
    """``[metrics]``: the Prometheus endpoint (off by default)."""

    #: serve metrics: on its own ``listen`` addresses when set, else on the ``[http]`` listeners
    enabled: bool = False
    #: plain-HTTP listeners of their own ("127.0.0.1:9222"); setting it enables metrics
    listen: list[str] = []
    #: the path of the endpoint
    path: str = "/metrics"
    #: client addresses (CIDR) allowed to scrape; others get 403
    allow: list[str] = ["127.0.0.0/8", "::1/128"]

    _v_listen = field_validator("listen")(_check_listen)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/"):
            raise ValueError(f"{v!r} is not a path like \"/metrics\"")
        return v

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        import ipaddress

        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not an address or network (CIDR)") from None
        return v

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.listen)


#: Mozilla's "intermediate" TLS 1.2 cipher suites (ssl-config.mozilla.org, v5.7): forward secrecy, AEAD
MOZILLA_INTERMEDIATE = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)


class TLSDomainConfig(_Section):
    """``[tls.domains."example.org"]``: the certificate served to clients asking for that domain (SNI)."""

    cert: str
    key: str


class TLSConfig(_Section):
    #: per-domain certificates chosen by SNI (a subdomain without its own uses its parent's)
    domains: dict[str, TLSDomainConfig] = {}
    cert: str | None = None
    key: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    #: TLS 1.2 cipher suites, an OpenSSL cipher list (TLS 1.3 suites are all strong and not affected)
    ciphers: str = MOZILLA_INTERMEDIATE
    #: extra trust anchors (PEM) for s2s peer certificates, besides the system store
    ca_file: str | None = None

    @field_validator("ciphers")
    @classmethod
    def _ciphers(cls, v: str) -> str:
        import ssl

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
        except ssl.SSLError:
            raise ValueError(f"{v!r} selects no cipher OpenSSL knows") from None
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"{v!r} is not a readable file")
        return v

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be set together (or neither, for a self-signed certificate)")
        return self


class LogConfig(_Section):
    """``[log]``: where and how the server logs (stderr by default)."""

    #: debug, info, warning or error (default: the top-level ``log_level``, itself "info")
    level: Literal["debug", "info", "warning", "error"] | None = None
    #: a file to append to (reopened on SIGUSR1 and ``rookery reload``, for logrotate); stderr when unset
    file: str | None = None
    #: "plain" (``time LEVEL logger: message``) or "json" (one JSON object per line)
    format: Literal["plain", "json"] = "plain"


class LimitsConfig(_Section):
    """Connection limits (XEP-0205 §3).  0 means no limit (``max_connections``: derived from the
    file descriptor limit)."""

    max_connections: int = Field(0, ge=0)
    max_connections_per_ip: int = Field(64, ge=0)
    max_unauthenticated_per_ip: int = Field(16, ge=0)
    #: bytes that may wait to be sent to one client; over it nothing more is read from it
    max_send_buffer: int = Field(1048576, ge=4096)
    #: seconds a client over max_send_buffer has to read before it is disconnected
    send_timeout: float = Field(60.0, gt=0)
    #: per-account quotas (0: no limit)
    max_roster_items: int = Field(2000, ge=0)
    max_private_bytes: int = Field(1048576, ge=0)
    max_resources_per_account: int = Field(10, ge=0)
    max_pending_subscriptions: int = Field(1000, ge=0)


class OfflineConfig(_Section):
    max_messages: int = Field(1000, ge=0)


class VersionConfig(_Section):
    show_os: bool = False


class RegisterConfig(_Section):
    """``[register]``: XEP-0077 in-band registration (the ``register`` module's options)."""

    #: accounts may be created in-band (password change and removal work regardless)
    allow: bool = False
    #: creating an account needs an invite token from ``rookery invite`` (XEP-0401/XEP-0445)
    invite_only: bool = False
    #: most accounts created in-band from one IP address per ``window`` seconds (0: no limit)
    max_per_ip: int = Field(5, ge=0)
    #: the period of ``max_per_ip``, in seconds
    window: float = Field(3600.0, gt=0)


class MAMConfig(_Section):
    """``[mam]``: XEP-0313 archive settings (the ``mam`` module's options; ``[modules.mam]`` works too)."""

    retention: float = Field(0, ge=0)
    full_text: bool = False
    max_page: int = Field(100, ge=1, le=10_000)
    cleanup_interval: float = Field(3600.0, gt=0)
    max_messages_per_user: int = Field(0, ge=0)


#: top-level sections that hold a module's options (module name -> Config field): the first release's
#: ``[offline]`` and ``[version]``, ``[register]`` and ``[mam]``; [modules.<name>] works as well and wins
LEGACY_MODULE_SECTIONS = {"offline": "offline", "version": "version", "register": "register_", "mam": "mam"}


def _module_sections(data: dict[str, Any]) -> dict[str, Any]:
    """A top-level table named for a module that has no section of its own in ``Config``
    (``[muc]``, ``[pubsub]``, ``[upload]`` …) holds that module's options, like ``[modules.<name>]``
    (which wins where both set a key)."""
    from .modules import available_modules

    fields = set(Config.model_fields) | {"register"}
    extra = [k for k, v in data.items() if k not in fields and isinstance(v, dict)]
    if not extra:
        return data
    known = available_modules()
    data = dict(data)
    opts: dict[str, dict[str, Any]] = {}
    for k in extra:
        if k in known:
            opts[k] = data.pop(k)
    if not opts:
        return data
    mods = data.get("modules")
    if isinstance(mods, dict):
        mods = dict(mods)
        for k, v in opts.items():
            mods[k] = {**v, **mods.get(k, {})} if isinstance(mods.get(k), dict) else mods.get(k, v)
        data["modules"] = mods
    else:
        current = data.get("module_options", {})
        data["module_options"] = {**current, **{k: {**v, **current.get(k, {})} for k, v in opts.items()}}
    return data


class VHostConfig(_Section):
    """Per-domain settings: ``[vhosts."example.org"]``."""

    #: modules enabled on this domain (default: the global list)
    modules: list[str] | None = None
    #: module options for this domain, over the global ones: ``[vhosts."D".options.<module>]``
    options: dict[str, dict[str, Any]] = {}


class Config(_Section):
    domains: list[str] = ["localhost"]
    data_dir: str = "rookery-data"
    storage: str = "sqlite"
    modules: list[str] = list(DEFAULT_MODULES)
    #: ``[modules.<name>]`` tables (the TOML ``[modules]`` table form: ``enabled`` + one table per module)
    module_options: dict[str, dict[str, Any]] = {}
    vhosts: dict[str, VHostConfig] = {}
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: the event loop ``rookery serve`` runs on: uvloop (its TLS is compiled) when importable, or asyncio's
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    #: serving processes (docs/performance.md "Workers"): "auto" (the number of CPUs) or 1..256;
    #: 1 serves in one process, more start a supervising parent and that many workers
    workers: int | Literal["auto"] = "auto"
    log: LogConfig = LogConfig()
    #: server administrators (bare JIDs): the one source of admin rights for every service
    admins: list[str] = []
    c2s: C2SConfig = C2SConfig()
    s2s: S2SConfig = S2SConfig()
    http: HTTPConfig = HTTPConfig()
    metrics: MetricsConfig = MetricsConfig()
    components: ComponentsConfig = ComponentsConfig()
    tls: TLSConfig = TLSConfig()
    limits: LimitsConfig = LimitsConfig()
    offline: OfflineConfig = OfflineConfig()
    version: VersionConfig = VersionConfig()
    #: ``[register]`` (the attribute has a trailing underscore: ``register`` is a ``BaseModel`` method)
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    mam: MAMConfig = MAMConfig()

    @model_validator(mode="before")
    @classmethod
    def _modules_table(cls, data: Any) -> Any:
        """``modules`` is a list (the enabled modules) or a table: ``enabled = [...]`` and
        ``[modules.<name>]`` option tables."""
        if isinstance(data, dict):
            data = _module_sections(data)
        if isinstance(data, dict) and isinstance(data.get("modules"), dict):
            data = dict(data)
            table = dict(data.pop("modules"))
            if "enabled" in table:
                data["modules"] = table.pop("enabled")
            for name, opts in table.items():
                if not isinstance(opts, dict):
                    raise ValueError(f"modules.{name}: expected a table of options for module {name!r}")
            data["module_options"] = {**data.get("module_options", {}), **table}
        return data

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one domain must be served")
        out = []
        for d in v:
            try:
                out.append(nameprep(d))
            except InvalidJID as e:
                raise ValueError(f"{d!r} is not a valid domain ({e})") from None
        return out

    @field_validator("admins")
    @classmethod
    def _admins(cls, v: list[str]) -> list[str]:
        from .jid import JID

        out = []
        for a in v:
            try:
                j = JID.parse(a)
            except InvalidJID as e:
                raise ValueError(f"{a!r} is not a valid JID ({e})") from None
            if j.resource is not None:
                raise ValueError(f"{a!r}: admins are bare JIDs (no /resource)")
            out.append(str(j))
        return out

    @model_validator(mode="after")
    def _components_apart(self) -> Config:
        """A component domain is not one of the served domains (those are routed to local accounts)."""
        for d in self.components.secrets:
            if d in self.domains:
                raise ValueError(f"components.secrets: {d} is one of the served domains")
        return self

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if v != "auto" and not (isinstance(v, int) and 1 <= v <= 256):
            raise ValueError('must be "auto" (the number of CPUs) or a number of processes from 1 to 256')
        return v

    def worker_count(self) -> int:
        """``workers`` as a number: "auto" is the number of CPUs this process may run on."""
        if self.workers != "auto":
            return int(self.workers)
        import os

        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if v != "sqlite" and not v.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError('must be "sqlite" or a postgresql:// URL')
        return v

    @field_validator("modules")
    @classmethod
    def _modules(cls, v: list[str]) -> list[str]:
        from .modules import available_modules

        known = available_modules()
        for m in v:
            if m not in known and ":" not in m:
                raise ValueError(f"unknown module {m!r} (available: {', '.join(sorted(known))})")
        return v

    @model_validator(mode="after")
    def _module_settings(self) -> Config:
        """Module options and virtual hosts name known modules and served domains; option values are
        checked against each module's typed ``Options``."""
        from .modules import ModuleLoadError, load_module_class

        # modules named "package.module:Class" take their options under their class's name
        by_name: dict[str, Any] = {}
        for entry in {*self.modules, *(m for vh in self.vhosts.values() for m in vh.modules or [])}:
            if ":" in entry:
                try:
                    c = load_module_class(entry)
                except ModuleLoadError as e:
                    raise ValueError(f"modules: {e}") from None
                by_name[c.name] = c

        def check_options(where: str, name: str, opts: dict[str, Any]) -> None:
            try:
                cls = by_name[name] if name in by_name else load_module_class(name)
            except ModuleLoadError as e:
                raise ValueError(f"{where}: {e}") from None
            try:
                cls.Options.model_validate(opts)
            except ValidationError as e:
                err = e.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
                raise ValueError(f"{where}{'.' + key if key else ''}: {msg}") from None

        for name in self.module_options:
            check_options(f"modules.{name}", name, self.options_of(name))
        if self.metrics.enabled and not self.metrics.listen and not (self.http.listen or self.http.tls_listen):
            raise ValueError("metrics.enabled: needs [metrics] listen or an [http] listener to serve on")
        for domain in self.tls.domains:
            if not any(domain == d or domain.endswith("." + d) for d in self.domains):
                raise ValueError(f"tls.domains.{domain}: not a served domain (or a subdomain of one)")
        for domain, vh in self.vhosts.items():
            if domain not in self.domains:
                raise ValueError(f"vhosts.{domain}: not one of the served domains")
            for m in vh.modules or []:
                try:
                    load_module_class(m)
                except ModuleLoadError as e:
                    raise ValueError(f"vhosts.{domain}.modules: {e}") from None
            for name, opts in vh.options.items():
                check_options(f"vhosts.{domain}.options.{name}", name, {**self.options_of(name), **opts})
        return self

    def options_of(self, module: str, host: str | None = None) -> dict[str, Any]:
        """The raw options of ``module`` (legacy section, then ``[modules.<name>]``, then the vhost's)."""
        out: dict[str, Any] = {}
        if module in LEGACY_MODULE_SECTIONS:
            section: BaseModel = getattr(self, LEGACY_MODULE_SECTIONS[module])
            out.update(section.model_dump(exclude_unset=True))
        out.update(self.module_options.get(module, {}))
        if host is not None and host in self.vhosts:
            out.update(self.vhosts[host].options.get(module, {}))
        return out

    @property
    def offline_limit(self) -> int:
        """Most offline messages kept per user (``[modules.offline]`` or ``[offline]`` max_messages)."""
        return int(self.options_of("offline").get("max_messages", self.offline.max_messages))

    def modules_for(self, host: str) -> list[str]:
        vh = self.vhosts.get(host)
        mods = list(vh.modules) if vh is not None and vh.modules is not None else list(self.modules)
        if not self.http.web_client:
            mods = [m for m in mods if m != "web_client"]
        return mods

    @property
    def effective_log_level(self) -> str:
        """``[log] level``, else the top-level ``log_level``."""
        return self.log.level or self.log_level

    def data_path(self, *parts: str) -> Path:
        return Path(self.data_dir).joinpath(*parts)


def load_config(path: str | None) -> Config:
    """Load ``path`` (or the defaults when None).  Raises ``ConfigError`` with a one-line message."""
    data: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        where = path or "defaults"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        # whole-config checks name their key at the start of the message
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{msg}{more}") from None
