"""Helpers of the SIEM sink tests: awkward events, producing, running a sink worker in a
thread, a self-signed certificate (openssl CLI) and a real rsyslogd on loopback."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.kafka import make_producer
from ingest.runtime import run_blocking
from schemas import encode_event
from sessionvault.settings import Settings
from siem.config import SinkConfig
from siem.sinks.base import Sink
from siem.worker import BatchOutcome, SinkWorker

# Values that would forge, split or merge records if any layer escaped them wrongly.
NASTY_USERS = (
    "alice\nOct 11 22:14:15 host forged: <34>1 - - - - - fake",
    "bob|CEF:0|Evil|Corp|1|2|3|5|src=6.6.6.6",
    'carol" suser=root act=forged x="y',
    'dave] [sessionvault@32473 user="root"]',
    'eve\\\\|=\\n\r\n=]"',
    "mallory\x00\x1b[31m\x07\tred\x85<13>1 - - - - - nel-forged\x7f",
)
NASTY_COMMANDS = (
    'echo "hi"\nrm -rf / # forged line',
    "cat a|b=c | sh",
    "printf '\\n' ]] x=\"y\" \\",
    "42 <13>1 2026-01-01T00:00:00Z h a p m - octet-forged",
    "ünïcødé ✓ \u2028 sep",
)


def make_events(
    tenant: str, sessions: int, per_session: int, *, t0: str = "2026-11-21T10:00:00"
) -> list[dict[str, Any]]:
    """``sessions`` sessions of ``per_session`` events each (session.start, session.command
    ..., session.end), users and commands from the nasty lists; one Teleport ``print``
    (terminal output) per session that sinks must skip by default."""
    out: list[dict[str, Any]] = []
    for s in range(sessions):
        sid = f"00000000-0000-4000-8000-{s:012d}"
        user = NASTY_USERS[s % len(NASTY_USERS)]
        for i in range(per_session):
            if i == 0:
                kind, code = "session.start", "T2000I"
            elif i == per_session - 1:
                kind, code = "session.end", "T2004I"
            else:
                kind, code = "session.command", "T4000I"
            ev: dict[str, Any] = {
                "sv_version": 1,
                "tenant": tenant,
                "event": kind,
                "code": code,
                "uid": f"{sid}-{i:05d}",
                "sid": sid,
                "ei": i,
                "time": f"{t0}.{i % 1000:03d}Z",
                "user": user,
                "login": "root",
                "server_id": f"node-{s}",
                "cluster_name": "prod",
                "addr.remote": f"10.0.{s % 250}.{i % 250}:5{i % 1000:04d}",
            }
            if kind == "session.command":
                ev["program"] = "sh"
                ev["path"] = "/bin/sh"
                ev["argv"] = ["-c", NASTY_COMMANDS[i % len(NASTY_COMMANDS)]]
                ev["command"] = NASTY_COMMANDS[i % len(NASTY_COMMANDS)]
            out.append(ev)
            if i == 1:
                out.append(
                    {
                        "sv_version": 1,
                        "tenant": tenant,
                        "event": "print",
                        "code": "",
                        "uid": f"{sid}-print",
                        "sid": sid,
                        "ei": 10_000,
                        "time": f"{t0}.500Z",
                        "bytes": 12,
                        "ms": 5,
                        "offset": 0,
                    }
                )
    return out


def curl_pipe_shell(tenant: str, sid: str) -> dict[str, Any]:
    """A ``session.command`` event piping a download into a shell at 10:00:42.500 of
    2026-11-21: what the starter rule ``curl | sh`` alerts on."""
    return {
        "sv_version": 1,
        "tenant": tenant,
        "event": "session.command",
        "code": "T4000I",
        "uid": f"{sid}-cmd",
        "sid": sid,
        "time": "2026-11-21T10:00:42.500Z",
        "user": "alice",
        "program": "sh",
        "path": "/bin/sh",
        "argv": ["-c", "curl -fsSL https://get.example.com/install | sudo bash"],
    }


def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    """Produce events keyed by session id (one partition per session); wait for every ack."""
    producer = make_producer(settings)
    try:
        futures = [
            producer.send(
                settings.topic_events,
                key=str(ev.get("sid") or ev["uid"]).encode(),
                value=encode_event(ev),
            )
            for ev in events
        ]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=10)
    finally:
        producer.close(timeout=5)


def produce_raw(settings: Settings, items: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings)
    try:
        futures = [producer.send(settings.topic_events, key=k, value=v) for k, v in items]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=10)
    finally:
        producer.close(timeout=5)


@dataclass
class RunningSink:
    worker: SinkWorker
    thread: threading.Thread
    stop: threading.Event
    outcomes: list[BatchOutcome]
    errors: list[BaseException]

    def wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.errors:
                raise AssertionError(f"sink worker crashed: {self.errors[0]!r}")
            if not self.thread.is_alive():
                raise AssertionError("sink worker returned before it was stopped")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "sink worker did not stop"


@contextlib.contextmanager
def running_sink(
    settings: Settings, config: SinkConfig, *, sink: Sink | None = None, **kwargs: Any
) -> Iterator[RunningSink]:
    """A :class:`SinkWorker` in a thread, stopped (and joined) on exit."""
    worker = SinkWorker(settings, config, sink=sink, **kwargs)
    stop = threading.Event()
    outcomes: list[BatchOutcome] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_blocking(lambda ev: worker.run(stop=ev, on_batch=outcomes.append), stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"sink-{config.name}", daemon=True)
    thread.start()
    running = RunningSink(worker, thread, stop, outcomes, errors)
    try:
        yield running
    finally:
        running.close()
    if errors:
        raise AssertionError(f"sink worker crashed: {errors[0]!r}")


def make_certificate(folder: Path, cn: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for ``cn`` and 127.0.0.1, made by the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    assert openssl, "the openssl CLI is needed to make the test certificate"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={cn}",
            "-addext",
            f"subjectAltName=DNS:{cn},IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


# The template writes what rsyslog received as one JSON object per line; property
# format "json" escapes newlines and quotes, so the file is parseable whatever the message.
RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{cert}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}"
       parser.escapeControlCharactersOnReceive="off")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="anon")
module(load="imptcp")
module(load="imudp")
template(name="exact" type="list") {{
  constant(value="{{\\"raw\\":\\"") property(name="rawmsg" format="json")
  constant(value="\\",\\"msgid\\":\\"") property(name="msgid" format="json")
  constant(value="\\",\\"sd\\":\\"") property(name="structured-data" format="json")
  constant(value="\\",\\"msg\\":\\"") property(name="msg" format="json")
  constant(value="\\"}}\\n")
}}
ruleset(name="tls") {{ action(type="omfile" file="{out}/tls.jsonl" template="exact") stop }}
ruleset(name="tcp") {{ action(type="omfile" file="{out}/tcp.jsonl" template="exact") stop }}
ruleset(name="udp") {{ action(type="omfile" file="{out}/udp.jsonl" template="exact") stop }}
input(type="imtcp" address="127.0.0.1" port="{tls_port}" ruleset="tls")
input(type="imptcp" address="127.0.0.1" port="{tcp_port}" ruleset="tcp")
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="udp")
"""


@dataclass
class Rsyslog:
    proc: subprocess.Popen[bytes]
    out: Path
    tls_port: int
    tcp_port: int
    udp_port: int
    cert: Path
    log: Path

    def records(self, name: str) -> list[dict[str, Any]]:
        import orjson

        path = self.out / f"{name}.jsonl"
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def _port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.contextmanager
def rsyslogd(folder: Path) -> Iterator[Rsyslog]:
    """A real rsyslogd in the foreground (-n) with its own config, pid file and work
    directory, listening on 127.0.0.1 only: TLS (imtcp + gtls, anon), plain TCP (imptcp) and
    UDP (imudp). Stopped (SIGTERM, then SIGKILL) on exit."""
    from deploy.stack import free_port

    binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    assert Path(binary).exists(), "rsyslogd not installed (Debian packages rsyslog, rsyslog-gnutls)"
    cert, key = make_certificate(folder / "tls")
    work, out = folder / "work", folder / "out"
    work.mkdir(parents=True)
    out.mkdir(parents=True)
    tls_port, tcp_port, udp_port = free_port(), free_port(), free_port()
    conf = folder / "rsyslog.conf"
    conf.write_text(
        RSYSLOG_CONF.format(
            work=work,
            cert=cert,
            key=key,
            out=out,
            tls_port=tls_port,
            tcp_port=tcp_port,
            udp_port=udp_port,
        )
    )
    log = folder / "rsyslogd.log"
    check = subprocess.run([binary, "-N1", "-f", str(conf)], capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr.decode(errors="replace")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [binary, "-n", "-f", str(conf), "-i", str(folder / "rsyslogd.pid")],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 20
        while not (_port_open(tls_port) and _port_open(tcp_port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"rsyslogd did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield Rsyslog(proc, out, tls_port, tcp_port, udp_port, cert, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- HTTP receivers (real servers on 127.0.0.1) -----------------------------------------------

HEC_ENVELOPE_KEYS = {"time", "host", "source", "sourcetype", "index", "event", "fields"}


def split_concatenated_json(body: bytes) -> list[Any]:
    """Concatenated JSON objects (HEC's batch body), with optional whitespace between."""
    import json

    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i >= len(text):
            return out
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)


def hec_violations(envelope: Any) -> list[str]:
    """What in one envelope breaks Splunk's documented HEC event format."""
    bad: list[str] = []
    if not isinstance(envelope, dict):
        return [f"envelope is {type(envelope).__name__}, not an object"]
    if "event" not in envelope or envelope["event"] in (None, ""):
        bad.append("'event' missing or empty")
    extra = set(envelope) - HEC_ENVELOPE_KEYS
    if extra:
        bad.append(f"unknown envelope keys {sorted(extra)}")
    if "time" in envelope:
        t = envelope["time"]
        if isinstance(t, bool) or not isinstance(t, int | float):
            bad.append(f"'time' is {type(t).__name__}, not epoch seconds")
        elif round(float(t), 3) != float(t):
            bad.append(f"'time' {t} has more than millisecond precision")
    for k in ("host", "source", "sourcetype", "index"):
        if k in envelope and not isinstance(envelope[k], str):
            bad.append(f"'{k}' is not a string")
    if "fields" in envelope:
        f = envelope["fields"]
        if not isinstance(f, dict) or not all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            for v in f.values()
        ):
            bad.append("'fields' must be a flat object of strings")
    return bad


class HecReceiver:
    """A strict Splunk HEC endpoint on 127.0.0.1 (http.server in a thread).

    ``mode``: ``ok``; ``error`` (503 server busy); ``slow`` (answers after ``slow_s``, with
    503, so a client that timed out loses nothing it believes delivered). ``reject_user``:
    an envelope whose event user equals it is refused with 400 invalid-event-number, as
    HEC does for malformed events. With ``ack`` the answer carries an ackId that turns true
    after ``ack_after_polls`` polls of /services/collector/ack.

    ``events`` holds (envelope, request number) of every accepted envelope in arrival order;
    ``violations`` every breach of the HEC format (the tests require none).
    """

    def __init__(self, token: str, *, ack: bool = False, port: int = 0) -> None:
        from deploy.stack import free_port

        self.token = token
        self.ack = ack
        self.port = port or free_port()
        self.mode = "ok"
        self.slow_s = 1.5
        self.reject_user: str | None = None
        self.ack_after_polls = 2
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.failed_requests = 0
        self.ack_polls = 0
        self.violations: list[str] = []
        self._acks: dict[int, int] = {}
        self._next_ack = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = receiver.handle(self.path, dict(self.headers.items()), body)
                payload = orjson_dumps(answer)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout): nothing was recorded for it

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        h = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.requests += 1
        if h.get("authorization") != f"Splunk {self.token}":
            self.violations.append(f"bad Authorization header on {path}")
            return 401, {"text": "Invalid authorization", "code": 3}
        channel = h.get("x-splunk-request-channel")
        if path.split("?")[0] == "/services/collector/ack":
            return self._ack_poll(channel, body)
        if path.split("?")[0] != "/services/collector/event":
            self.violations.append(f"POST to {path}")
            return 404, {"text": "Not found", "code": 404}
        if self.ack and not channel:
            self.violations.append("no X-Splunk-Request-Channel with ack enabled")
            return 400, {"text": "Data channel is missing", "code": 10}
        mode = self.mode
        if mode == "slow":
            time.sleep(self.slow_s)
        if mode in ("error", "slow"):
            with self._lock:
                self.failed_requests += 1
            return 503, {"text": "Server is busy", "code": 9}
        try:
            envelopes = split_concatenated_json(body)
        except ValueError as exc:
            self.violations.append(f"body is not concatenated JSON objects: {exc}")
            return 400, {"text": "Invalid data format", "code": 6}
        for i, env in enumerate(envelopes):
            bad = hec_violations(env)
            if bad:
                self.violations += bad
                return 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": i}
            event = env["event"]
            if (
                self.reject_user is not None
                and isinstance(event, dict)
                and event.get("user") == self.reject_user
            ):
                return 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": i}
        with self._lock:
            self.events.extend(envelopes)
            answer: dict[str, Any] = {"text": "Success", "code": 0}
            if self.ack:
                self._next_ack += 1
                self._acks[self._next_ack] = 0
                answer["ackId"] = self._next_ack
        return 200, answer

    def _ack_poll(self, channel: str | None, body: bytes) -> tuple[int, Any]:
        import json

        if not channel:
            self.violations.append("ack poll without a channel")
            return 400, {"text": "Data channel is missing", "code": 10}
        try:
            ids = json.loads(body)["acks"]
            assert isinstance(ids, list)
        except (ValueError, KeyError, AssertionError):
            self.violations.append('ack poll body is not {"acks": [ids]}')
            return 400, {"text": "Invalid data format", "code": 6}
        out = {}
        with self._lock:
            self.ack_polls += 1
            for i in ids:
                polls = self._acks.get(i)
                if polls is None:
                    out[str(i)] = False
                    continue
                self._acks[i] = polls + 1
                out[str(i)] = polls + 1 >= self.ack_after_polls
        return 200, {"acks": out}


def orjson_dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)
