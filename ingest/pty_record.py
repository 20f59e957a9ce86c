"""``sessionvault record``: run a command in a pseudo-terminal and record it (like ``script``).

The user's bytes pass through untouched in both directions; recording is a side effect that
must never break the session: every recorder call is guarded, Kafka trouble is absorbed by the
transport's spool, and a failing recorder is switched off (logged) while the session goes on.

Input recording (default on) skips keystrokes typed while the child's terminal has ECHO off
*and* ICANON on: that is the state ``getpass`` and friends (sudo, ssh, passwd, mysql -p) put the
terminal in to read a password. Full-screen programs (vi, less) turn off ECHO too, but they
also leave canonical mode, so their keystrokes are still recorded. The heuristic cannot see a
program that reads a secret in raw mode and paints ``*`` itself; use ``--no-input`` where that
matters.

Usable as an SSH ``ForceCommand``: with ``SSH_ORIGINAL_COMMAND`` set and no command given, the
original command runs via ``<login shell> -c``; stdin may be a pipe (then there is no raw mode,
the child still gets a pty, and EOF on stdin is passed on as the terminal's EOF character).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import logging
import os
import pwd
import select
import signal
import socket
import struct
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ingest.sdk import AuditEmitter, SessionRecorder, Transport, new_session_id, utc_now_rfc3339
from schemas.models import SessionInfo
from sessionvault.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SIZE = (80, 24)
_WINSZ = struct.Struct("HHHH")


@dataclass(frozen=True)
class RecordOptions:
    """What to run and how to label the recording."""

    command: tuple[str, ...] = ()
    sid: str | None = None
    record_input: bool = True
    user: str | None = None
    cluster_name: str = ""
    flush_timeout_s: float = 3.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def login_shell() -> str:
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell or "/bin/sh"


def resolve_command(command: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The argv to run: ``command``; else ``SSH_ORIGINAL_COMMAND`` via the login shell; else
    ``$SHELL`` (interactive)."""
    if command:
        return list(command)
    original = env.get("SSH_ORIGINAL_COMMAND")
    if original:
        return [login_shell(), "-c", original]
    return [env.get("SHELL") or login_shell()]


def get_winsize(fd: int) -> tuple[int, int] | None:
    """(cols, rows) of a terminal fd, or None when it is not a terminal (or reports 0x0)."""
    try:
        rows, cols, _, _ = _WINSZ.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    if cols <= 0 or rows <= 0:
        return None
    return cols, rows


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSZ.pack(rows, cols, 0, 0))


def exit_status(wait_status: int) -> int:
    """Shell-style exit status: the exit code, or 128 + signal number when killed."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[bool]:
    """Put a terminal in raw mode for the block and always restore it; no-op if not a tty."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield True
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def is_password_prompt(master_fd: int) -> bool:
    """True when the child's terminal reads a line with echo off (a password prompt)."""
    try:
        lflag = termios.tcgetattr(master_fd)[3]
    except termios.error:
        return False
    return not (lflag & termios.ECHO) and bool(lflag & termios.ICANON)


class _Guard:
    """Runs recorder calls; after the first failure, recording stops and the session goes on."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.failed:
            return
        try:
            fn(*args)
        except Exception:
            self.failed = True
            log.exception("recording failed; the session continues unrecorded")


def _session_event(
    kind: str, code: str, sid: str, info: SessionInfo, ei: int, **extra: Any
) -> dict[str, Any]:
    return {
        "event": kind,
        "code": code,
        "sid": sid,
        "ei": ei,
        "user": info.user,
        "login": info.login,
        "server_id": info.server_id,
        "cluster_name": info.cluster_name,
        "size": f"{info.cols}:{info.rows}",
        "proto": "ssh",
        "time": utc_now_rfc3339(),
        **extra,
    }


def record(
    settings: Settings,
    options: RecordOptions,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    transport_factory: Callable[[Settings], Transport] = Transport,
    on_start: Callable[[str], None] | None = None,
) -> int:
    """Run the command in a pty, pass bytes through, record; return its exit status."""
    argv = resolve_command(options.command, options.env)
    sid = options.sid or new_session_id()
    cols, rows = get_winsize(stdin_fd) or get_winsize(stdout_fd) or DEFAULT_SIZE
    login = getpass.getuser()
    info = SessionInfo(
        started_at=utc_now_rfc3339(),
        cols=cols,
        rows=rows,
        kind="ssh",
        user=options.user or login,
        login=login,
        server_id=socket.gethostname(),
        cluster_name=options.cluster_name,
        command=" ".join(argv),
        term=options.env.get("TERM", ""),
    )
    guard = _Guard()
    transport: Transport | None = None
    recorder: SessionRecorder | None = None
    emitter: AuditEmitter | None = None
    try:
        transport = transport_factory(settings)
        recorder = SessionRecorder(
            settings, info, sid=sid, transport=transport, record_input=options.record_input
        )
        emitter = AuditEmitter(settings, transport=transport)
    except Exception:
        guard.failed = True
        log.exception("cannot start recording; running the command unrecorded")
    if emitter is not None:
        guard(emitter.emit, _session_event("session.start", "T2000I", sid, info, 0))
    if on_start is not None:
        on_start(sid)

    status = 1
    started = time.monotonic()
    try:
        status = _run_in_pty(argv, options, info, recorder, guard, stdin_fd, stdout_fd)
    finally:
        if recorder is not None:
            guard(recorder.close, status)
        if emitter is not None:
            guard(
                emitter.emit,
                _session_event(
                    "session.end",
                    "T2004I",
                    sid,
                    info,
                    1,
                    session_start=info.started_at,
                    session_stop=utc_now_rfc3339(),
                    exit_code=status,
                    duration_ms=int((time.monotonic() - started) * 1000),
                ),
            )
        if transport is not None:
            try:
                if not transport.close(options.flush_timeout_s):
                    log.warning("session %s: Kafka unreachable, records left in the spool", sid)
            except Exception:
                log.exception("session %s: closing the transport failed", sid)
    return status


def _run_in_pty(
    argv: list[str],
    options: RecordOptions,
    info: SessionInfo,
    recorder: SessionRecorder | None,
    guard: _Guard,
    stdin_fd: int,
    stdout_fd: int,
) -> int:
    env = dict(options.env)
    env.setdefault("TERM", "xterm")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)

    pid, master = os.forkpty()
    if pid == 0:  # child
        try:
            os.execvpe(argv[0], argv, env)  # noqa: S606 - argv is the user's command, by design
        except OSError as exc:
            os.write(2, f"sessionvault: cannot run {argv[0]}: {exc.strerror}\r\n".encode())
        os._exit(127)

    set_winsize(master, info.cols, info.rows)
    pending_signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        pending_signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(wake_w, b"\0")

    handled = (signal.SIGWINCH, signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    try:
        with raw_mode(stdin_fd) as is_raw:
            return _Pump(
                pid,
                master,
                recorder,
                guard,
                stdin_fd,
                stdout_fd,
                wake_r,
                pending_signals,
                is_raw,
                info,
            ).run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for fd in (wake_r, wake_w, master):
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


class _Pump:
    """The copy loop between the user's terminal and the child's pty, recording both ways: a
    select loop (:meth:`run`) plus one handler per ready descriptor."""

    def __init__(
        self,
        pid: int,
        master: int,
        recorder: SessionRecorder | None,
        guard: _Guard,
        stdin_fd: int,
        stdout_fd: int,
        wake_r: int,
        pending_signals: list[int],
        is_raw: bool,
        info: SessionInfo,
    ) -> None:
        self.pid, self.master, self.recorder, self.guard = pid, master, recorder, guard
        self.stdin_fd, self.stdout_fd, self.wake_r = stdin_fd, stdout_fd, wake_r
        self.pending_signals, self.is_raw = pending_signals, is_raw
        self.to_child = bytearray()
        self.stdin_open = True
        self.stdout_ok = True
        self.master_open = True
        self.wait_status: int | None = None
        self.size = (info.cols, info.rows)
        self.child_gone_at: float | None = None

    def run(self) -> int:
        """Copy until the pty closes (or the child is gone and its leftovers are read);
        returns the child's exit status."""
        while self.master_open:
            rlist = [self.master, self.wake_r]
            if self.stdin_open and len(self.to_child) < 1 << 20:
                rlist.append(self.stdin_fd)
            wlist = [self.master] if self.to_child else []
            timeout = None
            if self.wait_status is not None:
                # The child is gone but something (a background job) may hold the pty open:
                # take what output is left, then stop like `script` does.
                self.child_gone_at = self.child_gone_at or time.monotonic()
                timeout = max(0.0, 0.2 - (time.monotonic() - self.child_gone_at))
                if timeout == 0.0:
                    break
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except InterruptedError:
                continue
            if self.wake_r in readable:
                self._on_signals()
            if self.master in readable:
                self._on_output()
            if self.stdin_open and self.stdin_fd in readable:
                self._on_input()
            if self.to_child and self.master in writable:
                self._write_to_child()
        if self.wait_status is None:
            _, self.wait_status = os.waitpid(self.pid, 0)
        return exit_status(self.wait_status)

    def _on_signals(self) -> None:
        """Signals queued by the handlers: forward a resize to the pty (and record it), pass
        SIGHUP/SIGTERM to the child, notice the child's exit."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            if signum == signal.SIGWINCH:
                new = get_winsize(self.stdin_fd) or get_winsize(self.stdout_fd)
                if new and new != self.size:
                    self.size = new
                    with contextlib.suppress(OSError):
                        set_winsize(self.master, *new)
                    if self.recorder is not None:
                        self.guard(self.recorder.resize, *new)
            elif signum in (signal.SIGHUP, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signum)
        if self.wait_status is None:
            done, st = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.wait_status = st

    def _on_output(self) -> None:
        """The child wrote: pass it to the user's terminal and record it."""
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.master_open = False
            return
        if self.stdout_ok:
            try:
                _write_all(self.stdout_fd, data)
            except OSError:
                # The user's side is gone (ssh disconnect): hang up the child, keep recording
                # what it prints until it exits.
                self.stdout_ok = False
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGHUP)
        if self.recorder is not None:
            self.guard(self.recorder.output, data)

    def _on_input(self) -> None:
        """The user typed: queue it for the child and record it (not at a password prompt)."""
        try:
            data = os.read(self.stdin_fd, 65536)
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            if not self.is_raw:
                # Piped stdin ended: give the child the terminal's EOF (like a user's ^D).
                with contextlib.suppress(termios.error):
                    self.to_child += termios.tcgetattr(self.master)[6][termios.VEOF]
            return
        if self.recorder is not None and not is_password_prompt(self.master):
            self.guard(self.recorder.input, data)
        self.to_child += data

    def _write_to_child(self) -> None:
        try:
            n = os.write(self.master, self.to_child)
            del self.to_child[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.to_child.clear()
            self.stdin_open = False


def stderr_notice(sid: str) -> None:
    """The one line printed at start (unless quiet), on stderr so stdout stays the session's."""
    if os.isatty(2):
        sys.stderr.write(f"sessionvault: recording session {sid}\r\n")
        sys.stderr.flush()
