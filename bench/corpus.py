"""Realistic terminal output for the benchmarks, deterministic and cached.

Where a real program can produce the bytes it does: ``ls -laR --color=always /usr``, ``gcc
-Wall -Wextra`` with coloured diagnostics on generated C, and a generated Python program that
prints real tracebacks. The rest are seeded generators of what such programs print: syslog-like
and access log lines with timestamps and IPs, top/htop-like full-screen repaints with cursor
addressing and SGR colours, and an interactive shell (coloured prompt, echoed keystrokes,
short command output). The same seed gives the same bytes on the same machine; real programs'
output depends on the machine (the contents of /usr, the gcc version), which the cache key
does not hide: delete the cache directory to rebuild.

Output is split the way a recorder sees it: bulk output in PTY reads of 4-16 KiB, interactive
work in small frames (one keystroke, one prompt, one short line).

Run ``python -m bench.corpus`` to build the cache and print its composition.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench._common import MIB, cache_dir
from schemas.models import Frame, Stream

CORPUS_VERSION = 1
# Share of each kind in the mixed corpus; "ls" is capped by what /usr holds (about 12 MB here).
MIX: dict[str, float] = {
    "ls": 0.25,
    "logs": 0.25,
    "compiler": 0.15,
    "top": 0.25,
    "interactive": 0.10,
}
KINDS = tuple(MIX)

ESC = "\x1b"


# ---------------------------------------------------------------- generators (one per kind)


def gen_ls(max_bytes: int, root: str = "/usr") -> bytes:
    """Real ``ls -laR --color=always`` output (C locale, UTC), repeated if /usr is smaller."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "TZ": "UTC",
        "TERM": "xterm-256color",
    }
    # The distribution's default colour table, as an interactive login shell would set it.
    dircolors = subprocess.run(["dircolors", "-b"], capture_output=True, env=env, check=False)
    m = re.search(rb"LS_COLORS='([^']*)'", dircolors.stdout)
    if m:
        env["LS_COLORS"] = m.group(1).decode()
    proc = subprocess.run(
        ["ls", "-laR", "--color=always", root],
        capture_output=True,
        env=env,
        check=False,
    )
    out = proc.stdout
    if not out:
        raise RuntimeError(f"ls -laR {root} produced no output: {proc.stderr[:200]!r}")
    reps = max_bytes // len(out) + 1
    return (out * reps)[:max_bytes]


_HOSTS = ["web-01", "web-02", "db-03", "bastion", "k8s-node-7", "cache-2"]
_USERS = ["alice", "bob", "carol", "deploy", "root", "ci-runner"]
_PATHS = ["/", "/api/v1/sessions", "/login", "/static/app.js", "/healthz", "/api/v1/events"]
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_UAS = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64)", "kube-probe/1.29", "python-requests/2.31"]


def _ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def gen_logs(max_bytes: int, seed: int) -> bytes:
    """Syslog, sshd, kernel, nginx access and JSON application log lines, as ``tail -f`` or
    ``journalctl`` print them (journalctl colours warnings and errors)."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    t = 1_700_000_000.0
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    while size < max_bytes:
        t += rng.expovariate(20.0)
        sec = int(t)
        day = (sec // 86400) % 28 + 1
        hms = f"{(sec // 3600) % 24:02d}:{(sec // 60) % 60:02d}:{sec % 60:02d}"
        stamp = f"{months[(sec // 2_419_200) % 12]} {day:2d} {hms}"
        host = rng.choice(_HOSTS)
        r = rng.random()
        if r < 0.25:
            pid = rng.randrange(1000, 65000)
            who = rng.choice(_USERS)
            fp = "".join(rng.choice(_B64) for _ in range(43))
            line = (
                f"{stamp} {host} sshd[{pid}]: Accepted publickey for {who} from {_ip(rng)} "
                f"port {rng.randrange(1024, 65535)} ssh2: ED25519 SHA256:{fp}"
            )
        elif r < 0.5:
            month = (sec // 2_592_000) % 12 + 1
            iso = f"2024-{month:02d}-{day:02d}T{hms}.{rng.randrange(1000):03d}Z"
            status_code = rng.choice([200, 200, 200, 204, 301, 404, 500])
            line = (
                f'{_ip(rng)} - - [{day:02d}/Nov/2024:{hms} +0000] "'
                f"{rng.choice(['GET', 'GET', 'POST', 'PUT'])} {rng.choice(_PATHS)}"
                f'?id={rng.randrange(10**6)} HTTP/1.1" {status_code} {rng.randrange(50, 9000)} '
                f'"-" "{rng.choice(_UAS)}" rt={rng.random():.3f} ts={iso}'
            )
        elif r < 0.7:
            lvl = rng.choice(["info", "info", "info", "warn", "error", "debug"])
            line = json.dumps(
                {
                    "level": lvl,
                    "ts": round(t, 6),
                    "caller": f"server/handler.go:{rng.randrange(40, 900)}",
                    "msg": rng.choice(
                        ["request served", "cache miss", "upstream timeout", "token refreshed"]
                    ),
                    "request_id": f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}",
                    "user": rng.choice(_USERS),
                    "latency_ms": rng.randrange(1, 900),
                },
                separators=(",", ":"),
            )
            if lvl == "error":
                line = f"{ESC}[1;31m{line}{ESC}[0m"
            elif lvl == "warn":
                line = f"{ESC}[1;33m{line}{ESC}[0m"
        elif r < 0.85:
            line = (
                f"{stamp} {host} kernel: [{t % 100000:12.6f}] "
                f"{rng.choice(['eth0', 'ens5', 'veth3a9'])}: "
                f"{rng.choice(['link up', 'entered promiscuous mode', 'renamed from tmp'])} "
                f"SRC={_ip(rng)} DST={_ip(rng)} LEN={rng.randrange(40, 1500)} TTL=64"
            )
        else:
            unit = rng.choice(["nginx.service", "docker.service", "cron", "systemd-logind"])
            line = (
                f"{stamp} {host} {unit}[{rng.randrange(1, 9999)}]: "
                f"{rng.choice(['Started', 'Stopped', 'Reloading', 'New session'])} "
                f"{rng.randrange(1, 5000)} of user {rng.choice(_USERS)}."
            )
        out.append(line + "\r\n")
        size += len(out[-1])
    return "".join(out).encode()[:max_bytes]


def _c_source(rng: random.Random, functions: int) -> str:
    """C code that compiles with many -Wall -Wextra warnings (unused variables, signed/unsigned
    comparisons, format mismatches, missing returns, implicit fallthrough)."""
    parts = ["#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\n"]
    for i in range(functions):
        name = f"handle_{rng.choice(['req', 'conn', 'buf', 'evt', 'rec'])}_{i}"
        n = rng.randrange(3, 9)
        body = [f"int {name}(int argc, char **argv, unsigned int limit_{i}) {{"]
        body.append(f"    int unused_{i} = {rng.randrange(100)};")
        body.append(f"    for (int k = 0; k < limit_{i}; k++) {{ argc += k; }}")
        body.append('    printf("%s %d\\n", argc, argv[0]);')
        body.append(f"    switch (argc) {{ case {n}: argc++; case {n + 1}: argc--; break; }}")
        body.append("    char small[4]; long big = 1L << 40; small[0] = big;")
        body.append(f"    if (argc == {n}) return argc;")
        body.append("}")
        parts.append("\n".join(body) + "\n")
    return "\n".join(parts)


_PY_TB = """
import json, sys, traceback

class ConfigError(Exception):
    pass

def load(path, depth):
    if depth == 0:
        cfg = json.loads(path)
        return cfg["missing"]
    return parse(path, depth - 1)

def parse(path, depth):
    return load(path, depth)

def run(i, depth):
    try:
        load('{"k": %d}' % i if i %% 3 else "not json %d" % i, depth)
    except Exception as exc:
        try:
            raise ConfigError("cannot load settings for worker %d" % i) from exc
        except ConfigError:
            traceback.print_exc(file=sys.stdout)

for i in range(int(sys.argv[1])):
    run(i, int(sys.argv[2]) + i %% 7)
"""


def gen_compiler(max_bytes: int, seed: int, workdir: Path) -> bytes:
    """Real gcc diagnostics (coloured) and real Python tracebacks, alternating by file."""
    rng = random.Random(seed)
    out: list[bytes] = []
    size = 0
    n = 0
    env = {**os.environ, "LC_ALL": "C", "GCC_COLORS": ""}
    env.pop("GCC_COLORS")
    while size < max_bytes:
        if n % 2 == 0:
            src = workdir / f"gen_{n}.c"
            src.write_text(_c_source(rng, rng.randrange(80, 160)))
            cmd = [
                "gcc",
                "-Wall",
                "-Wextra",
                "-fdiagnostics-color=always",
                "-c",
                "-o",
                os.devnull,
                src.name,
            ]
            proc = subprocess.run(cmd, capture_output=True, env=env, check=False, cwd=workdir)
            chunk = f"$ gcc -Wall -Wextra -c {src.name}\r\n".encode() + proc.stderr
        else:
            src = workdir / f"gen_{n}.py"
            src.write_text(_PY_TB)
            cmd = [sys.executable, src.name, str(rng.randrange(50, 150)), str(rng.randrange(2, 12))]
            proc = subprocess.run(cmd, capture_output=True, env=env, check=False, cwd=workdir)
            chunk = f"$ python {src.name}\r\n".encode() + proc.stdout + proc.stderr
        if not chunk.strip():
            raise RuntimeError(f"{cmd[0]} printed nothing: is it installed?")
        # A PTY translates \n to \r\n (onlcr); keep that so bytes look like a real recording.
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out.append(chunk)
        size += len(chunk)
        n += 1
    return b"".join(out)[:max_bytes]


_CMDS = [
    "nginx: worker process",
    "postgres: checkpointer",
    "/usr/bin/python3 app.py",
    "kubelet --config=/var/lib/kubelet",
    "sshd: alice@pts/0",
    "containerd",
    "java -Xmx2g",
    "node server.js",
    "redis-server *:6379",
    "[kworker/0:1-events]",
    "systemd-journald",
]


@dataclass
class _Proc:
    pid: int
    user: str
    cpu: float
    mem: float
    command: str
    centis: int


TOP_ENTER = b"\x1b[?1049h\x1b[H\x1b[2J"
TOP_LEAVE = b"\x1b[?1049l"


def gen_top(max_bytes: int, seed: int, cols: int = 160, rows: int = 48) -> bytes:
    """htop-like full-screen screens: a full paint then partial repaints of changed rows with
    cursor addressing, reverse-video header and coloured meters, one update per second."""
    rng = random.Random(seed)
    procs = [
        _Proc(
            rng.randrange(1, 60000),
            rng.choice(_USERS),
            rng.random() * 30,
            rng.random() * 8,
            rng.choice(_CMDS),
            rng.randrange(0, 36000),
        )
        for _ in range(rows - 8)
    ]
    out: list[str] = []
    size = 0
    tick = 0
    while size < max_bytes:
        s: list[str] = []
        full = tick % 30 == 0
        if full:
            s.append(f"{ESC}[?1049h{ESC}[H{ESC}[2J")
        for cpu in range(2):
            pct = rng.random() * 100
            bar = "|" * int(pct / 100 * 40)
            s.append(f"{ESC}[{cpu + 1};1H  {cpu}[{ESC}[32m{bar:<40}{ESC}[0m{pct:5.1f}%]{ESC}[K")
        mem = rng.random() * 8
        s.append(
            f"{ESC}[3;1H  Mem[{ESC}[32m{'|' * int(mem * 5):<40}{ESC}[0m{mem:4.2f}G/8.00G]{ESC}[K"
        )
        s.append(
            f"{ESC}[4;1H  Tasks: {ESC}[1m{len(procs) + 80}{ESC}[0m, load average: "
            f"{rng.random() * 4:.2f} {rng.random() * 4:.2f} {rng.random() * 4:.2f}{ESC}[K"
        )
        if full:
            s.append(
                f"{ESC}[6;1H{ESC}[30;42m{'  PID USER      %CPU %MEM   TIME+  Command':<{cols}}"
                f"{ESC}[0m"
            )
        for p in procs:
            p.cpu = max(0.0, p.cpu + rng.gauss(0, 3))
            p.centis += int(p.cpu)
        procs.sort(key=lambda p: -p.cpu)
        for i, p in enumerate(procs):
            if not full and rng.random() < 0.5:
                continue  # unchanged rows are not repainted
            t = p.centis
            colour = "1;31" if p.cpu > 50 else "0"
            s.append(
                f"{ESC}[{i + 7};1H{ESC}[{colour}m{p.pid:5d} {p.user:<9} {p.cpu:5.1f} "
                f"{p.mem:4.1f} {t // 6000:3d}:{t // 100 % 60:02d}.{t % 100:02d}  "
                f"{p.command}{ESC}[0m{ESC}[K"
            )
        s.append(f"{ESC}[{rows};1H{ESC}[30;46mF1{ESC}[0mHelp  {ESC}[30;46mF10{ESC}[0mQuit")
        screen = "".join(s)
        out.append(screen)
        size += len(screen)
        tick += 1
    return "".join(out).encode()[:max_bytes]


def gen_interactive(max_bytes: int, seed: int) -> bytes:
    """A shell session: coloured prompt, echoed keystrokes (with a typo and backspace now and
    then), and short command output."""
    rng = random.Random(seed)
    commands = [
        "git status",
        "kubectl get pods -n prod",
        "ls",
        "cd src",
        "vim main.go",
        "sudo systemctl restart nginx",
        "tail -n 5 /var/log/syslog",
        "df -h",
        "whoami",
        "kubectl logs deploy/api --tail=3",
        "make test",
        "history | tail -3",
    ]
    out: list[str] = []
    size = 0
    while size < max_bytes:
        user = rng.choice(_USERS)
        host = rng.choice(_HOSTS)
        prompt = f"{ESC}[01;32m{user}@{host}{ESC}[00m:{ESC}[01;34m~/src{ESC}[00m$ "
        cmd = rng.choice(commands)
        typed = []
        for ch in cmd:
            if rng.random() < 0.03:
                typed.append(rng.choice("asdfjkl") + "\b\x1b[K")
            typed.append(ch)
        lines = [
            f"{rng.choice(['M', '??', 'A', 'D'])} {rng.choice(_PATHS)[1:] or 'README'}.go"
            if cmd.startswith("git")
            else f"{rng.choice(_CMDS)[:20]:<24}{rng.randrange(0, 3)}/1   Running   "
            f"{rng.randrange(0, 5)}   {rng.randrange(1, 59)}m"
            for _ in range(rng.randrange(0, 6))
        ]
        text = prompt + "".join(typed) + "\r\n" + "".join(line + "\r\n" for line in lines)
        out.append(text)
        size += len(text)
    return "".join(out).encode()[:max_bytes]


# ---------------------------------------------------------------- the cached corpus


@dataclass(frozen=True)
class Corpus:
    """Bytes per kind (see :data:`MIX`), all produced for one seed."""

    parts: dict[str, bytes]
    seed: int

    @property
    def total_bytes(self) -> int:
        return sum(len(v) for v in self.parts.values())

    def mixed(self, segment_bytes: int = 256 * 1024) -> bytes:
        """All kinds interleaved in segments, the order seeded (a terminal runs one program,
        then another; a chunk rarely mixes kinds)."""
        return b"".join(data for _, data in self.segments(segment_bytes))

    def segments(self, segment_bytes: int = 256 * 1024) -> list[tuple[str, bytes]]:
        rng = random.Random(self.seed + 7)
        segs: list[tuple[str, bytes]] = []
        for kind, data in self.parts.items():
            pos = 0
            while pos < len(data):
                n = rng.randrange(segment_bytes // 4, segment_bytes + 1)
                seg = data[pos : pos + n]
                if kind == "top":
                    # One run of top: it takes the alternate screen and gives it back when it
                    # quits, before the next program runs (without this, everything after the
                    # first top segment was drawn on the alternate screen).
                    seg = TOP_ENTER + seg + TOP_LEAVE
                segs.append((kind, seg))
                pos += n
        rng.shuffle(segs)
        return segs


def build_corpus(
    total_bytes: int = 48 * MIB, seed: int = 1, directory: Path | None = None
) -> Corpus:
    """Generate (or load from the cache) about ``total_bytes`` of terminal output."""
    directory = directory or cache_dir()
    parts: dict[str, bytes] = {}
    for kind, share in MIX.items():
        want = int(total_bytes * share)
        path = directory / f"corpus-v{CORPUS_VERSION}-s{seed}-{kind}-{want}.bin"
        if path.exists() and path.stat().st_size == want:
            parts[kind] = path.read_bytes()
            continue
        kind_seed = seed * 1000 + KINDS.index(kind)
        if kind == "ls":
            data = gen_ls(want)
        elif kind == "logs":
            data = gen_logs(want, kind_seed)
        elif kind == "compiler":
            # A fixed directory: tracebacks print absolute paths, which must not vary by run.
            work = directory / "cc-work"
            work.mkdir(exist_ok=True)
            data = gen_compiler(want, kind_seed, work)
        elif kind == "top":
            data = gen_top(want, kind_seed)
        else:
            data = gen_interactive(want, kind_seed)
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_bytes(data)
        tmp_path.replace(path)
        parts[kind] = data
    return Corpus(parts, seed)


# ---------------------------------------------------------------- framing like a recorder


def pty_reads(
    data: bytes, rng: random.Random, min_bytes: int = 4096, max_bytes: int = 16384
) -> list[bytes]:
    """Split bulk output as a PTY read loop with a 16 KiB buffer sees it under load."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        n = rng.randrange(min_bytes, max_bytes + 1)
        out.append(data[pos : pos + n])
        pos += n
    return out


def small_frames(data: bytes, rng: random.Random) -> list[bytes]:
    """Split interactive output: mostly single echoed keystrokes, some prompts and lines."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        n = 1 if rng.random() < 0.6 else rng.randrange(2, 200)
        out.append(data[pos : pos + n])
        pos += n
    return out


def session_frames(corpus: Corpus, seed: int, total_bytes: int) -> Iterator[Frame]:
    """Frames of one synthetic session of ``total_bytes`` output bytes, drawn from the corpus
    segments starting at a seeded position. Bulk kinds arrive as PTY reads a few ms apart;
    interactive output as small frames, keystrokes echoed after an input frame."""
    rng = random.Random(seed)
    segs = corpus.segments()
    i = rng.randrange(len(segs))
    offset_ms = 0
    emitted = 0
    while emitted < total_bytes:
        kind, data = segs[i % len(segs)]
        i += 1
        data = data[: total_bytes - emitted]
        if kind == "interactive":
            for piece in small_frames(data, rng):
                offset_ms += rng.randrange(40, 300)
                if len(piece) == 1:
                    yield Frame(offset_ms, Stream.INPUT, piece)
                    offset_ms += 1
                yield Frame(offset_ms, Stream.OUTPUT, piece)
        else:
            for piece in pty_reads(data, rng):
                offset_ms += rng.randrange(0, 5)
                yield Frame(offset_ms, Stream.OUTPUT, piece)
        emitted += len(data)
        offset_ms += rng.randrange(500, 5000)  # think time between programs


def output_bytes(frames: list[Frame]) -> int:
    return sum(len(f.data) for f in frames if f.stream is Stream.OUTPUT)


def main() -> int:
    quick = "--quick" in sys.argv
    corpus = build_corpus(8 * MIB if quick else 48 * MIB)
    print(f"corpus seed {corpus.seed}, {corpus.total_bytes / MIB:.1f} MiB in {cache_dir()}")
    for kind, data in corpus.parts.items():
        esc = data.count(b"\x1b")
        per_kb = esc / max(1, len(data)) * 1000
        print(f"  {kind:<12} {len(data) / MIB:7.2f} MiB  {per_kb:6.1f} ESC/KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
