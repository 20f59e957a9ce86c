"""Fuzzing: every importer, and the chunk and event decoders, given mutations of real inputs
(the shared fixtures made by other systems, and the suite's own valid files) either give a
result or raise one :class:`SessionVaultError` (one clear line), never another exception.

Hypothesis runs derandomized (the same examples every run, whatever the date or the machine's
load) with no example database and no deadline.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.import_cmd import load_input, recording_chunks
from schemas import Frame, Stream, chain_hash, encode_chunk, encode_event
from schemas.codec import decode_chunk, decode_event
from schemas.models import Chunk, SessionInfo
from sessionvault.errors import SessionVaultError
from tests.examples import examples
from tests.unit.test_import_sudo import make_iolog

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=examples(150),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few mutations: bit flips, cuts, inserted bytes, repeated slices, big
    numbers where digits were."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "digits"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[i : i + draw(st.integers(1, max(1, len(data) // 2)))]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "repeat":
            j = draw(st.integers(i, min(len(data), i + 64)))
            data[i:i] = data[i:j] * draw(st.integers(1, 8))
        else:  # a number of the input replaced by a hostile one
            runs = [m.span() for m in re.finditer(rb"-?\d+(?:\.\d+)?(?:e\d+)?", bytes(data))]
            if runs:
                a, b = draw(st.sampled_from(runs))
                data[a:b] = draw(st.sampled_from(HOSTILE_NUMBERS))
    return bytes(data)


HOSTILE_NUMBERS = [
    b"9" * 40, b"-1", b"1e999", b"-1e999", b"1e20", b"5000000", b"0.000001", b"NaN", b"1.5"
]  # fmt: skip


def _import_survives(
    fmt: str, path: Path, *, kubernetes_cluster: str = "", started_at: str | None = None
) -> None:
    """Load ``path`` as ``fmt`` and, for a recording, chunk every frame (streamed frames are
    read here): only SessionVaultError may come out."""
    message = ""
    try:
        loaded = load_input(
            fmt, path, tenant="fuzz", kubernetes_cluster=kubernetes_cluster, started_at=started_at
        )
        if loaded.recording is not None:
            for _ in recording_chunks(loaded.recording, tenant="fuzz", max_bytes=64 * 1024):
                pass
    except SessionVaultError as exc:
        message = str(exc)
    assert "\n" not in message, message


def _file_fuzzer(
    fmt: str,
    seed: bytes,
    suffix: str,
    *,
    kubernetes_cluster: str = "",
    started_at: str | None = None,
) -> Callable[[], None]:
    @FUZZ
    @given(mutated(seed))
    def run(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"input{suffix}"
            path.write_bytes(data)
            _import_survives(
                fmt, path, kubernetes_cluster=kubernetes_cluster, started_at=started_at
            )

    return run


V2_CAST = (
    b'{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}\n'
    b'[0.5, "o", "hello \\u00e9\\r\\n"]\n[1.0, "i", "ls\\r"]\n[1.5, "r", "100x30"]\n'
)
V3_CAST = (
    b'{"version": 3, "term": {"cols": 80, "rows": 24}, "timestamp": 1700000000}\n'
    b'[0.5, "o", "a"]\n[0.25, "o", "b"]\n[0.1, "x", "3"]\n'
)
V1_CAST = orjson.dumps(
    {"version": 1, "width": 80, "height": 24, "stdout": [[0.1, "$ "], [0.5, "ls\r\n"]]}
)
TLOG = orjson.dumps(
    {
        "ver": "2.1", "host": "h", "rec": "r1", "user": "u", "term": "xterm", "session": 1,
        "id": 1, "pos": 10, "timing": "=80x24<2+5>3]1/1", "in_txt": "ls", "in_bin": [],
        "out_txt": "ok\ufffd", "out_bin": [255],
    }
)  # fmt: skip


def test_fuzz_teleport_recording_from_the_shared_fixture() -> None:
    _file_fuzzer("teleport", (FIXTURES / "teleport" / "session.tar").read_bytes(), ".tar")()


def test_fuzz_teleport_json_events_from_the_shared_fixture() -> None:
    seed = (FIXTURES / "teleport" / "events.jsonl").read_bytes()
    _file_fuzzer("teleport-json", seed, ".jsonl")()


def test_fuzz_kube_audit_from_the_shared_fixtures() -> None:
    seed = b"\n".join(
        orjson.dumps(orjson.loads(p.read_bytes()))
        for p in sorted((FIXTURES / "k8s-audit").glob("*.json"))
    )
    _file_fuzzer("kube-audit", seed, ".log", kubernetes_cluster="prod")()


def test_fuzz_asciicast_v1_v2_v3() -> None:
    for seed in (V2_CAST, V3_CAST, V1_CAST):
        _file_fuzzer("asciicast", seed, ".cast")()


def test_fuzz_tlog_messages_plain_and_journal() -> None:
    journal = orjson.dumps(
        {"__REALTIME_TIMESTAMP": "1448884019000000", "TLOG_REC": "r1", "MESSAGE": TLOG.decode()}
    )
    _file_fuzzer("tlog", TLOG + b"\n", ".json", started_at="2026-01-01T00:00:00Z")()
    _file_fuzzer("tlog", journal + b"\n", ".json")()


def test_fuzz_sudo_io_logs_one_file_at_a_time() -> None:
    with tempfile.TemporaryDirectory() as d:
        template = make_iolog(Path(d) / "seed")
        names = sorted(p.name for p in template.iterdir())
        seeds = {name: (template / name).read_bytes() for name in names}

        @FUZZ
        @given(st.sampled_from(names).flatmap(lambda n: st.tuples(st.just(n), mutated(seeds[n]))))
        def run(case: tuple[str, bytes]) -> None:
            name, data = case
            with tempfile.TemporaryDirectory() as work:
                target = Path(work) / "log"
                shutil.copytree(template, target)
                (target / name).write_bytes(data)
                _import_survives("sudo", target)

        run()


def _valid_chunk() -> bytes:
    frames = (
        Frame(0, Stream.OUTPUT, b"\x1b[1mhi\xff\r\n"),
        Frame(5, Stream.RESIZE, b"100x30"),
        Frame(9, Stream.INPUT, b"exit\r"),
    )
    h = chain_hash("0" * 64, "sid-1", 0, frames)
    info = SessionInfo("2026-11-21T10:00:00Z", 80, 24, user="alice")
    return encode_chunk(Chunk("t", "sid-1", 0, frames, "0" * 64, h, False, None, info))


def test_fuzz_chunk_and_event_decoders_refuse_by_validation_only() -> None:
    event = encode_event(
        {
            "sv_version": 1, "tenant": "t", "event": "exec", "uid": "u1",
            "time": "2026-11-21T10:00:00Z", "command": "kubectl delete ns x", "argv": ["a"],
        }
    )  # fmt: skip

    @FUZZ
    @given(st.one_of(mutated(_valid_chunk()), st.binary(max_size=512)))
    def chunks(data: bytes) -> None:
        with contextlib.suppress(SessionVaultError):
            decode_chunk(data, max_bytes=1024 * 1024)

    @FUZZ
    @given(st.one_of(mutated(event), st.binary(max_size=512)))
    def events(data: bytes) -> None:
        with contextlib.suppress(SessionVaultError):
            decode_event(data, max_bytes=1024 * 1024)

    chunks()
    events()
