"""Settings: the one place configuration is read.

Everything comes from ``SESSIONVAULT_*`` environment variables. When a server address is not
set, the addresses written by ``sessionvault up`` (``$SESSIONVAULT_HOME/stack.json``) are used,
so that after ``up`` every command finds the local stack without further setup.

Secrets (the PostgreSQL DSN's password, tokens) are held in :class:`Secret`, whose ``repr`` and
``str`` never show the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from sessionvault.errors import ConfigError
from sessionvault.names import TENANT_RULE, is_tenant_name

#: The chunk record versions a producer may write: schemas.models.CHUNK_VERSIONS (settings sit
#: below schemas in the import order, so it is restated here; a unit test holds them equal).
CHUNK_WIRE_VERSIONS = (1, 2)

ENV_PREFIX = "SESSIONVAULT_"
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
STACK_FILE = "stack.json"


class Secret:
    """A string that must never be printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***`` (for display)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


def default_home() -> Path:
    return Path(os.environ.get("SESSIONVAULT_HOME") or Path.home() / ".sessionvault")


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Build it with :func:`load_settings`, not by hand in apps."""

    home: Path = field(default_factory=default_home)
    tenant: str = "default"

    kafka_bootstrap: str = ""
    # Kafka transport security, passed to every client (docs/operations.md): PLAINTEXT, SSL,
    # SASL_PLAINTEXT or SASL_SSL; a SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with
    # its user and password; the CA (and a client certificate for mutual TLS) as PEM files.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret = field(default_factory=lambda: Secret(""))
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    postgres_dsn: Secret = field(default_factory=lambda: Secret(""))
    opensearch_url: str = ""
    # Index names are <prefix>-events-YYYY.MM / <prefix>-output-YYYY.MM (several installations
    # or test runs can share one cluster).
    opensearch_index_prefix: str = "sv"

    # The embedded local stack (`sessionvault up`). Its broker keeps topics and committed
    # offsets on disk ("s3": tansu's object-store engine on deploy/objectstore.py, survives
    # kill -9 and `down`) or in memory ("memory": faster; loses acknowledged records not yet
    # persisted).
    local_broker_storage: str = "s3"
    # Also start the in-memory OpenSearch emulator (opt-in: it grows without bound, 2.3 GB for
    # one 100 MB session); without it search answers from PostgreSQL.
    local_opensearch: bool = False

    topic_chunks: str = "sv.chunks.v1"
    topic_events: str = "sv.events.v1"
    topic_deadletter: str = "sv.deadletter.v1"
    topic_partitions: int = 4

    # Producer side: frames are batched into a chunk until one of these limits is reached.
    chunk_max_bytes: int = 64 * 1024
    chunk_linger_ms: int = 50
    # The chunk record version producers write (schemas.codec.encode_chunk). 2 carries the
    # frame index as binary rows; 1 lists the frames in the JSON header. Workers read both;
    # write 1 only while a consumer of an older release (which knows only 1) still runs.
    chunk_wire_version: int = 2
    # How long the Kafka producer waits to fill a request (small: terminal writes want low
    # latency, and chunks are batched already).
    producer_linger_ms: int = 5
    spool_dir: Path | None = None  # default: <home>/spool
    spool_max_bytes: int = 1024 * 1024 * 1024

    # Consumer side.
    max_record_bytes: int = 4 * 1024 * 1024
    persist_batch_max_records: int = 2000
    persist_batch_max_bytes: int = 32 * 1024 * 1024
    persist_linger_ms: int = 20
    # Poll the next batch while this one is decoded and written (fetching overlaps the CPU
    # stage and PostgreSQL; see ingest.runtime.KafkaRuntime.run). Off: strictly one at a time.
    persist_prefetch: bool = True
    # Freed memory a worker process keeps for reuse rather than handing back to the OS (glibc
    # malloc's trim threshold; buffers up to 32 MiB then come from the heap, not fresh mmaps).
    # A Kafka fetch allocates and frees buffers of megabytes; faulting their pages in again each
    # time was a third of kafka-python's cost (ingest.runtime.settle_heap). 0: C library defaults.
    worker_heap_keep_bytes: int = 256 * 1024 * 1024
    zstd_level: int = 3
    retry_backoff_max_ms: int = 30_000
    # A session with no chunk for this long and no final chunk (its recorder was killed) is
    # closed as "abandoned" by the persist worker; a later chunk revives it. 0: never.
    session_abandon_after_ms: int = 60 * 60 * 1000
    # A worker whose one operation (a write, a dead letter, a commit, a bulk) has kept failing
    # this long counts as stalled: `status` says so (ingest/health.py).
    worker_stall_after_ms: int = 30_000
    # Consumer-group timing. tansu answers a group's first JoinGroup after about half the
    # session timeout (with the client defaults over 20 s); these give about 7 s, and a
    # crashed worker's partitions move after 15 s (Kafka's own default is 45 s). Heartbeats
    # every 5 s: each one is a write to the durable broker's object store (at 2 s they were
    # most of an idle stack's CPU there). Raise max_poll_interval where a batch takes longer.
    consumer_session_timeout_ms: int = 15_000
    consumer_heartbeat_interval_ms: int = 5_000
    consumer_max_poll_interval_ms: int = 30_000
    # How long the broker may hold a fetch with no new data, while records flow. Under load the
    # local broker answers a held fetch only when the wait is up, so this is most of the
    # write -> durable latency (p99 137 ms at 50, 365 ms at 500, 2.7 s at 5,000:
    # docs/benchmarks.md).
    consumer_fetch_max_wait_ms: int = 100
    # The same once a worker has seen no record for `consumer_idle_after_ms`: a long poll, so an
    # idle worker waits on the broker instead of asking again (each fetch costs the client and
    # the broker CPU: an idle stack used 2.1% of a core at 500 ms, 1.0% at 5,000). The first
    # record after an idle spell is taken when the broker answers the held fetch: Apache Kafka
    # answers it when the record arrives; tansu when it next looks at the fetch (measured
    # 2026-12-03 with kafka-python 3.0: 0.04-1.6 s at 5,000, 5-10 s at 30,000, so keep this
    # low on tansu). That record then switches the worker back to the short wait.
    consumer_idle_fetch_max_wait_ms: int = 5_000
    consumer_idle_after_ms: int = 10_000
    # How long a worker's poll waits for a first record before its loop goes round (stop
    # checks, the detect worker's output feed, idle housekeeping). Shorter is snappier for
    # those, longer is cheaper when idle.
    worker_poll_wait_ms: int = 2_000

    # The segmenter keeps the screen as a keyframe every this many bytes of a session's output
    # (replay.keyframe): the web console's seeks draw one and read at most about this much
    # after it. 0: no keyframes (seeks replay from the session's start).
    keyframe_every_bytes: int = 256 * 1024
    # Share links (the web console): the longest a link may live, and the default.
    share_max_ttl_s: int = 7 * 24 * 3600
    share_default_ttl_s: int = 24 * 3600

    # Evidence (docs/evidence.md): the key file (default <home>/keys.json, created by `up`);
    # how often each tenant's stored records are covered by a signed checkpoint; how long a
    # closed session waits for its late audit events before its manifest is signed; a
    # directory that receives a copy of every checkpoint (empty: none).
    key_file: Path | None = None
    checkpoint_interval_ms: int = 60_000
    manifest_delay_ms: int = 10_000
    checkpoint_dir: str = ""
    # Off only to measure what the evidence ledger costs (bench.evidence): without it nothing
    # stored is covered by a checkpoint and `verify` reports it all as added.
    evidence_ledger: bool = True
    # Encryption at rest (storage/datakeys.py): seal every new chunk payload with its tenant's
    # data key. Text derived from an encrypted tenant's recordings (search segments,
    # keyframes, typed-command markers, output lines for detection) is then not stored,
    # except for the tenants listed here (comma-separated, "*" for all): docs/evidence.md.
    encrypt_at_rest: bool = False
    searchable_text_tenants: str = ""

    # Trusted clusters (docs/federation.md). This installation's name among them (a root's
    # name is what leaves' mapping rules match; a leaf's is given at join). A root listens for
    # its leaves' tunnels on federation_listen ("host:port"; empty: not a root) with a
    # certificate for federation_hosts (comma-separated names/addresses the leaves dial);
    # certificates it issues to leaves live federation_cert_ttl_s; a root waits
    # federation_timeout_ms for a leaf's answer before naming it slow. The CLI's --leaf
    # commands ask a root's API at api_url with api_token.
    federation_name: str = "local"
    federation_listen: str = ""
    federation_hosts: str = "127.0.0.1,localhost"
    federation_cert_ttl_s: int = 30 * 86400
    federation_timeout_ms: int = 10_000
    api_url: str = ""
    api_token: Secret = field(default_factory=lambda: Secret(""))

    # Each worker serves its Prometheus metrics and probes (/metrics, /livez, /readyz) on this
    # port (0: not served; one per host, so the local stack leaves it off).
    metrics_port: int = 0

    log_level: str = "INFO"

    # SIEM sinks: a TOML/YAML/JSON file listing them (see siem.config); empty: none configured.
    siem_config: str = ""
    # Detection (siem.detect): extra Sigma rule files/directories (colon-separated), loaded
    # after the starter set; and the working time the rules' business_hours field uses, as
    # "TIMEZONE HH-HH DAYS" (e.g. "Europe/Berlin 08-18 mon-fri"); empty: UTC 08-18 mon-fri.
    sigma_rules: str = ""
    business_hours: str = ""

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir or self.home / "spool"

    def public_dict(self) -> dict[str, Any]:
        """Settings as a dict safe to print: secrets redacted."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = redact_dsn(value.get()) if f.name == "postgres_dsn" else "***"
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``SESSIONVAULT_*`` variables that make a child process load exactly ``settings``
    (secrets included: for a child's environment only, never for printing)."""
    env: dict[str, str] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        raw = value.get() if isinstance(value, Secret) else str(value)
        env[ENV_PREFIX + f.name.upper()] = raw
    return env


def _coerce(name: str, raw: str, current: Any) -> Any:
    try:
        if isinstance(current, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, Secret):
            return Secret(raw)
        if isinstance(current, Path) or name in {"spool_dir", "home", "key_file"}:
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid value") from exc
    return raw


def read_stack_file(home: Path) -> dict[str, Any]:
    """Addresses written by ``sessionvault up``; empty when the local stack never ran."""
    path = home / STACK_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment, the local stack file, then ``overrides``."""
    env = os.environ if env is None else env
    base = Settings(home=Path(env.get("SESSIONVAULT_HOME") or default_home()))
    values: dict[str, Any] = {}
    stack = read_stack_file(base.home)
    for key in ("kafka_bootstrap", "opensearch_url"):
        if stack.get(key):
            values[key] = str(stack[key])
    if stack.get("postgres_dsn"):
        values["postgres_dsn"] = Secret(str(stack["postgres_dsn"]))
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw, getattr(base, f.name))
    values.update(overrides)
    settings = Settings(**{**{f.name: getattr(base, f.name) for f in fields(Settings)}, **values})
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if not is_tenant_name(s.tenant):
        raise ConfigError(f"SESSIONVAULT_TENANT={s.tenant!r}: use {TENANT_RULE}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,40}", s.opensearch_index_prefix):
        raise ConfigError(
            f"SESSIONVAULT_OPENSEARCH_INDEX_PREFIX={s.opensearch_index_prefix!r}: use 1-41 of"
            " [a-z0-9_.-] (OpenSearch index names are lower case)"
        )
    if s.chunk_wire_version not in CHUNK_WIRE_VERSIONS:
        raise ConfigError(
            f"{ENV_PREFIX}CHUNK_WIRE_VERSION={s.chunk_wire_version}: use one of"
            f" {', '.join(map(str, CHUNK_WIRE_VERSIONS))}"
        )
    if s.worker_heap_keep_bytes < 0:
        raise ConfigError(f"{ENV_PREFIX}WORKER_HEAP_KEEP_BYTES must be 0 or more")
    for name in ("chunk_max_bytes", "chunk_linger_ms", "max_record_bytes", "topic_partitions"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive")
    if s.local_broker_storage not in ("s3", "memory"):
        raise ConfigError(
            f"SESSIONVAULT_LOCAL_BROKER_STORAGE={s.local_broker_storage!r}: use s3 or memory"
        )
    if s.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise ConfigError(
            f"SESSIONVAULT_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol!r}: use one of"
            f" {', '.join(KAFKA_SECURITY_PROTOCOLS)}"
        )
    if s.kafka_security_protocol.startswith("SASL_") and not s.kafka_sasl_mechanism:
        raise ConfigError("SASL needs SESSIONVAULT_KAFKA_SASL_MECHANISM (e.g. SCRAM-SHA-512)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}", s.federation_name):
        raise ConfigError(
            f"SESSIONVAULT_FEDERATION_NAME={s.federation_name!r}: use [A-Za-z0-9_.:-], 1-253"
        )
    if s.chunk_max_bytes > s.max_record_bytes // 2:
        raise ConfigError("SESSIONVAULT_CHUNK_MAX_BYTES must be at most half of MAX_RECORD_BYTES")


def require(settings: Settings, *names: str) -> None:
    """Raise a one-line :class:`ConfigError` when a server address is not configured."""
    missing = []
    for name in names:
        value = getattr(settings, name)
        if not (value.get() if isinstance(value, Secret) else value):
            missing.append(ENV_PREFIX + name.upper())
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not set and no local stack found; run `sessionvault up` "
            "or point the settings at your servers"
        )
