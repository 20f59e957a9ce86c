"""SIEM sink configuration: a TOML, YAML or JSON file parsed into frozen dataclasses.

The file is named by ``SESSIONVAULT_SIEM_CONFIG`` (``Settings.siem_config``) or passed
explicitly. It lists sinks; each sink becomes its own consumer group ``siem-<name>`` on the
events topic, so a slow or broken sink never slows persistence or another sink.

Example (TOML)::

    [[sink]]
    name = "splunk"
    type = "splunk_hec"            # splunk_hec | syslog | webhook | jsonl
    format = "native"              # a name from siem.formats.FORMATS (native, ocsf, ecs, cef ...)
    url = "https://splunk.example:8088"
    token = { env = "SPLUNK_HEC_TOKEN" }   # or "literal", or { file = "/run/secrets/hec" }
    index = "audit"
    ack = true                     # indexer acknowledgement (channel id generated if not set)

    [sink.filter]
    tenants = ["acme"]             # empty: every tenant
    event_types = ["session.*", "kube.*", "alert.*"]   # fnmatch globs; empty: every type
    exclude_types = ["session.data"]
    include_output = false         # terminal output events (Teleport ``print``) skipped by default

Alerts of the detection rules are events too (type ``alert.sigma``, on the events topic): a
sink for alerts only says ``event_types = ["alert.*"]``.

    [sink.batch]
    max_events = 500
    max_bytes = 1048576
    linger_ms = 200

    [sink.retry]
    max_attempts = 8               # 0: retry an unavailable sink for ever (never dead-letter)
    backoff_base_ms = 100
    backoff_max_ms = 30000

Secrets (HEC tokens, webhook HMAC keys) are held in :class:`~sessionvault.settings.Secret`
and never printed: ``repr`` of every dataclass here is safe to log.

Pure: parsing only, no network.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sessionvault.errors import ConfigError
from sessionvault.settings import Secret, Settings

SINK_TYPES = ("splunk_hec", "syslog", "webhook", "jsonl")
SYSLOG_TRANSPORTS = ("tls", "tcp", "udp")
SYSLOG_FRAMINGS = ("octet", "newline")
GROUP_PREFIX = "siem-"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def group_id(sink_name: str) -> str:
    """The consumer group of a sink: ``siem-<name>``."""
    return GROUP_PREFIX + sink_name


@dataclass(frozen=True, slots=True)
class SinkFilter:
    """Which events a sink receives. Globs use :mod:`fnmatch` (``kube.*``)."""

    tenants: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    include_output: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryLimits:
    """A delivery holds at most ``max_events`` events and ``max_bytes`` encoded bytes; the
    worker waits up to ``linger_ms`` after the first event for more."""

    max_events: int = 500
    max_bytes: int = 1024 * 1024
    linger_ms: int = 200


#: The defaults of a sink's ``[sink.batch]`` (written once, in the class).
_DELIVERY = DeliveryLimits()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retry of a failed delivery: ``max_attempts`` tries in all (0: unbounded), the
    delay before try n being ``backoff_base_ms * 2**(n-2)`` capped at ``backoff_max_ms``."""

    max_attempts: int = 8
    backoff_base_ms: int = 100
    backoff_max_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """Client TLS: ``verify`` off only for tests against self-signed peers (prefer ca_file)."""

    verify: bool = True
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class HecOptions:
    url: str
    token: Secret
    index: str = ""
    source: str = "sessionvault"
    sourcetype: str = "sessionvault:audit"
    host: str = ""
    ack: bool = False
    channel: str = ""
    ack_timeout_ms: int = 60_000
    ack_poll_ms: int = 250
    timeout_ms: int = 10_000
    tls: TlsOptions = field(default_factory=TlsOptions)


@dataclass(frozen=True, slots=True)
class SyslogOptions:
    host: str
    port: int
    transport: str = "tls"
    framing: str = "octet"
    app_name: str = "sessionvault"
    hostname: str = ""
    facility: int = 13  # log audit
    max_datagram_bytes: int = 2048
    timeout_ms: int = 10_000
    tls: TlsOptions = field(default_factory=TlsOptions)


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    url: str
    hmac_key: Secret
    timeout_ms: int = 10_000
    tls: TlsOptions = field(default_factory=TlsOptions)


@dataclass(frozen=True, slots=True)
class JsonlOptions:
    """``path`` ``-`` writes to stdout; otherwise the file is appended to and fsynced before
    each offset commit."""

    path: str = "-"
    fsync: bool = True


SinkOptions = HecOptions | SyslogOptions | WebhookOptions | JsonlOptions


@dataclass(frozen=True, slots=True)
class SinkConfig:
    name: str
    type: str
    format: str
    options: SinkOptions
    filter: SinkFilter = field(default_factory=SinkFilter)
    batch: DeliveryLimits = field(default_factory=DeliveryLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def group_id(self) -> str:
        return group_id(self.name)


@dataclass(frozen=True, slots=True)
class SiemConfig:
    sinks: tuple[SinkConfig, ...] = ()

    def sink(self, name: str) -> SinkConfig:
        for s in self.sinks:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sinks) or "none"
        raise ConfigError(f"no SIEM sink named {name!r} (configured: {known})")


# --- parsing -------------------------------------------------------------------------------


def load_siem_config(
    settings: Settings | None = None,
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> SiemConfig:
    """Read the sink file ``path`` (default: ``settings.siem_config``)."""
    where = str(path or (settings.siem_config if settings is not None else "") or "")
    if not where:
        raise ConfigError(
            "no SIEM configuration: set SESSIONVAULT_SIEM_CONFIG to a TOML, YAML or JSON file"
        )
    p = Path(where)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read SIEM configuration {p}: {exc}") from exc
    return parse_siem_config(text, suffix=p.suffix.lower(), source=str(p), env=env)


def parse_siem_config(
    data: bytes,
    *,
    suffix: str = ".toml",
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    known_formats: tuple[str, ...] | None = None,
) -> SiemConfig:
    """Parse a configuration document (``suffix`` picks the syntax: .toml, .yaml/.yml, .json)."""
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(data.decode("utf-8"))
        elif suffix == ".json":
            doc = orjson.loads(data)
        else:
            doc = tomllib.loads(data.decode("utf-8"))
    except Exception as exc:  # syntax errors of three parsers: one message
        raise ConfigError(f"{source}: not valid {suffix.lstrip('.') or 'toml'}: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the document must be a table/object")
    raw = doc.get("sink", doc.get("sinks", []))
    if isinstance(raw, dict):
        # YAML/JSON may give sinks as a mapping name -> table.
        raw = [{"name": k, **v} if isinstance(v, dict) else v for k, v in raw.items()]
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: 'sink' must be a list of tables")
    _reject_unknown(doc, {"sink", "sinks"}, source)
    env = os.environ if env is None else env
    formats = known_formats if known_formats is not None else _known_formats()
    sinks = tuple(
        _parse_sink(s, f"{source}: sink #{i + 1}", env, formats) for i, s in enumerate(raw)
    )
    names = [s.name for s in sinks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{source}: sink names must be unique: {sorted(dup)}")
    return SiemConfig(sinks)


def _known_formats() -> tuple[str, ...] | None:
    try:
        from siem.formats import FORMATS
    except ImportError:
        return None
    return tuple(FORMATS)


def _reject_unknown(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")


class _Table:
    """Typed access to one table, with messages that name the key."""

    def __init__(self, d: object, where: str) -> None:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: must be a table/object")
        self.d: dict[str, Any] = d
        self.where = where

    def str_(self, key: str, default: str | None = None) -> str:
        v = self.d.get(key, default)
        if v is None:
            raise ConfigError(f"{self.where}: '{key}' is required")
        if not isinstance(v, str):
            raise ConfigError(f"{self.where}: '{key}' must be a string")
        return v

    def int_(self, key: str, default: int, *, minimum: int = 0) -> int:
        v = self.d.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ConfigError(f"{self.where}: '{key}' must be an integer >= {minimum}")
        return v

    def bool_(self, key: str, default: bool) -> bool:
        v = self.d.get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.where}: '{key}' must be true or false")
        return v

    def strs(self, key: str) -> tuple[str, ...]:
        v = self.d.get(key, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self.where}: '{key}' must be a list of strings")
        return tuple(v)

    def sub(self, key: str) -> _Table:
        return _Table(self.d.get(key, {}), f"{self.where}.{key}")


def _secret(t: _Table, key: str, env: Mapping[str, str]) -> Secret:
    """A secret given literally, as {env = NAME} or as {file = PATH} (trailing newline cut)."""
    v = t.d.get(key)
    if v is None:
        raise ConfigError(f"{t.where}: '{key}' is required")
    if isinstance(v, str):
        value = v
    elif isinstance(v, dict) and set(v) == {"env"} and isinstance(v["env"], str):
        if v["env"] not in env:
            raise ConfigError(f"{t.where}: '{key}': environment variable {v['env']} is not set")
        value = env[v["env"]]
    elif isinstance(v, dict) and set(v) == {"file"} and isinstance(v["file"], str):
        try:
            value = Path(v["file"]).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{t.where}: '{key}': cannot read {v['file']}: {exc}") from exc
    else:
        raise ConfigError(f"{t.where}: '{key}' must be a string, {{env = NAME}} or {{file = PATH}}")
    if not value:
        raise ConfigError(f"{t.where}: '{key}' is empty")
    return Secret(value)


def _tls(t: _Table) -> TlsOptions:
    s = t.sub("tls")
    _reject_unknown(s.d, {"verify", "ca_file", "cert_file", "key_file", "server_name"}, s.where)
    return TlsOptions(
        verify=s.bool_("verify", True),
        ca_file=s.str_("ca_file", ""),
        cert_file=s.str_("cert_file", ""),
        key_file=s.str_("key_file", ""),
        server_name=s.str_("server_name", ""),
    )


_COMMON = {"name", "type", "format", "filter", "batch", "retry"}
_KEYS: dict[str, set[str]] = {
    "splunk_hec": {
        "url",
        "token",
        "index",
        "source",
        "sourcetype",
        "host",
        "ack",
        "channel",
        "ack_timeout_ms",
        "ack_poll_ms",
        "timeout_ms",
        "tls",
    },
    "syslog": {
        "host",
        "port",
        "transport",
        "framing",
        "app_name",
        "hostname",
        "facility",
        "max_datagram_bytes",
        "timeout_ms",
        "tls",
    },
    "webhook": {"url", "hmac_key", "timeout_ms", "tls"},
    "jsonl": {"path", "fsync"},
}
_DEFAULT_FORMAT = dict.fromkeys(SINK_TYPES, "native")


def _url(t: _Table) -> str:
    url = t.str_("url")
    if not re.match(r"https?://[^/\s]+", url):
        raise ConfigError(f"{t.where}: 'url' must be an http(s) URL")
    return url.rstrip("/")


def _parse_sink(
    d: object, where: str, env: Mapping[str, str], formats: tuple[str, ...] | None
) -> SinkConfig:
    t = _Table(d, where)
    name = t.str_("name")
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: name {name!r}: use 1-63 of [a-z0-9_-]")
    t.where = where = f"{where.rsplit(': ', 1)[0]}: sink {name!r}"
    kind = t.str_("type")
    if kind not in SINK_TYPES:
        raise ConfigError(f"{where}: type {kind!r} is not one of {list(SINK_TYPES)}")
    _reject_unknown(t.d, _COMMON | _KEYS[kind], where)
    fmt = t.str_("format", _DEFAULT_FORMAT[kind])
    if formats is not None and fmt not in formats:
        raise ConfigError(f"{where}: format {fmt!r} is not one of {sorted(formats)}")

    options: SinkOptions
    if kind == "splunk_hec":
        options = HecOptions(
            url=_url(t),
            token=_secret(t, "token", env),
            index=t.str_("index", ""),
            source=t.str_("source", "sessionvault"),
            sourcetype=t.str_("sourcetype", "sessionvault:audit"),
            host=t.str_("host", ""),
            ack=t.bool_("ack", False),
            channel=t.str_("channel", ""),
            ack_timeout_ms=t.int_("ack_timeout_ms", 60_000, minimum=1),
            ack_poll_ms=t.int_("ack_poll_ms", 250, minimum=1),
            timeout_ms=t.int_("timeout_ms", 10_000, minimum=1),
            tls=_tls(t),
        )
    elif kind == "syslog":
        transport = t.str_("transport", "tls")
        if transport not in SYSLOG_TRANSPORTS:
            raise ConfigError(f"{where}: transport must be one of {list(SYSLOG_TRANSPORTS)}")
        framing = t.str_("framing", "octet")
        if framing not in SYSLOG_FRAMINGS:
            raise ConfigError(f"{where}: framing must be one of {list(SYSLOG_FRAMINGS)}")
        if transport == "tls" and framing != "octet":
            raise ConfigError(f"{where}: syslog over TLS uses octet counting (RFC 5425)")
        facility = t.int_("facility", 13)
        if facility > 23:
            raise ConfigError(f"{where}: 'facility' must be 0..23")
        options = SyslogOptions(
            host=t.str_("host"),
            port=t.int_("port", 6514 if transport == "tls" else 514, minimum=1),
            transport=transport,
            framing=framing,
            app_name=t.str_("app_name", "sessionvault"),
            hostname=t.str_("hostname", ""),
            facility=facility,
            max_datagram_bytes=t.int_("max_datagram_bytes", 2048, minimum=480),
            timeout_ms=t.int_("timeout_ms", 10_000, minimum=1),
            tls=_tls(t),
        )
    elif kind == "webhook":
        options = WebhookOptions(
            url=_url(t),
            hmac_key=_secret(t, "hmac_key", env),
            timeout_ms=t.int_("timeout_ms", 10_000, minimum=1),
            tls=_tls(t),
        )
    else:
        options = JsonlOptions(path=t.str_("path", "-"), fsync=t.bool_("fsync", True))

    f = t.sub("filter")
    _reject_unknown(f.d, {"tenants", "event_types", "exclude_types", "include_output"}, f.where)
    b = t.sub("batch")
    _reject_unknown(b.d, {"max_events", "max_bytes", "linger_ms"}, b.where)
    r = t.sub("retry")
    _reject_unknown(r.d, {"max_attempts", "backoff_base_ms", "backoff_max_ms"}, r.where)
    retry = RetryPolicy(
        max_attempts=r.int_("max_attempts", 8),
        backoff_base_ms=r.int_("backoff_base_ms", 100, minimum=1),
        backoff_max_ms=r.int_("backoff_max_ms", 30_000, minimum=1),
    )
    return SinkConfig(
        name=name,
        type=kind,
        format=fmt,
        options=options,
        filter=SinkFilter(
            tenants=f.strs("tenants"),
            event_types=f.strs("event_types"),
            exclude_types=f.strs("exclude_types"),
            include_output=f.bool_("include_output", False),
        ),
        batch=DeliveryLimits(
            max_events=b.int_("max_events", _DELIVERY.max_events, minimum=1),
            max_bytes=b.int_("max_bytes", _DELIVERY.max_bytes, minimum=1024),
            linger_ms=b.int_("linger_ms", _DELIVERY.linger_ms),
        ),
        retry=retry,
    )


__all__ = [
    "GROUP_PREFIX",
    "DeliveryLimits",
    "HecOptions",
    "JsonlOptions",
    "RetryPolicy",
    "SiemConfig",
    "SinkConfig",
    "SinkFilter",
    "SinkOptions",
    "SyslogOptions",
    "TlsOptions",
    "WebhookOptions",
    "group_id",
    "load_siem_config",
    "parse_siem_config",
]
