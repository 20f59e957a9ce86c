"""Durable local spool: where a producer puts records while Kafka cannot take them.

Layout: ``<spool root>/<owner>/<first lsn, 20 digits>.seg``. Each producer process owns one
directory (``<owner>`` = ``<pid>-<random>``) and holds an exclusive ``flock`` on its ``LOCK``
file while alive, so many recorders can share a root (one per SSH session under a
ForceCommand) and ``sessionvault spool drain`` can tell an abandoned directory (lock free: its
process died) from a live one.

Record framing inside a segment (all big-endian)::

    u32 body length | u32 crc32(body) | body
    body = u64 lsn | u16 topic length | topic | u32 key length | key | value

``lsn`` is the producer's local sequence number: records are read back in lsn order, which is
the order they were handed to the producer. Segments are ordered by their first lsn; the writer
never lets two segments' lsn ranges interleave (see :meth:`Spool.append`).

A crash can leave a torn record at the end of a segment (partial length, partial body, or a
body whose crc does not match). Reading stops at the first such record and truncates the file
there: a torn record is never mis-read as data. Only the tail can be torn because segments are
append-only.

fsync policy: every append is written to the file with ``os.write`` (so a crash of the
*process* loses nothing that was appended); ``fsync`` runs when a segment is sealed, on
:meth:`Spool.sync`, and at most ``fsync_interval_s`` after an append (checked on the next
append). A crash of the *machine* can therefore lose at most the last ``fsync_interval_s`` of
spooled records (default 1 s), in exchange for not paying one fsync per terminal write.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sessionvault.errors import SpoolError

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">II")
_LSN_TOPIC = struct.Struct(">QH")
_KEYLEN = struct.Struct(">I")
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "LOCK"
MAX_BODY = 1 << 30


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One Kafka record waiting to be sent. ``key`` may be empty (b"") but never None."""

    lsn: int
    topic: str
    key: bytes
    value: bytes

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.key) + len(self.value) + 22


def encode_record(rec: SpoolRecord) -> bytes:
    topic = rec.topic.encode()
    head = _LSN_TOPIC.pack(rec.lsn, len(topic))
    body = b"".join([head, topic, _KEYLEN.pack(len(rec.key)), rec.key, rec.value])
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def decode_records(data: bytes) -> tuple[list[SpoolRecord], int]:
    """Decode framed records; return them and the length of the valid prefix of ``data``."""
    out: list[SpoolRecord] = []
    pos = 0
    end = len(data)
    while pos + _HEAD.size <= end:
        length, crc = _HEAD.unpack_from(data, pos)
        start = pos + _HEAD.size
        if length > MAX_BODY or start + length > end:
            break
        body = data[start : start + length]
        if zlib.crc32(body) != crc or length < _LSN_TOPIC.size:
            break
        try:
            lsn, tlen = _LSN_TOPIC.unpack_from(body, 0)
            p = _LSN_TOPIC.size
            topic = body[p : p + tlen].decode()
            p += tlen
            (klen,) = _KEYLEN.unpack_from(body, p)
            p += _KEYLEN.size
            key = body[p : p + klen]
            if len(key) != klen:
                break
            value = body[p + klen :]
        except (struct.error, UnicodeDecodeError):
            break
        out.append(SpoolRecord(lsn, topic, key, value))
        pos = start + length
    return out, pos


def read_segment(path: Path, *, repair: bool = True) -> list[SpoolRecord]:
    """All intact records of a segment; with ``repair`` a torn tail is truncated away."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpoolError(f"cannot read spool segment {path}: {exc}") from exc
    records, valid = decode_records(data)
    if valid != len(data):
        log.warning(
            "spool segment %s: %d torn/corrupt bytes after %d records%s",
            path,
            len(data) - valid,
            len(records),
            ", truncated" if repair else "",
        )
        if repair:
            try:
                with open(path, "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            except OSError as exc:
                raise SpoolError(f"cannot truncate torn spool segment {path}: {exc}") from exc
    return records


def _segment_name(lsn: int) -> str:
    return f"{lsn:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[Path]:
    """Segments of one owner directory, oldest (lowest first lsn) first."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SpoolError(f"cannot list spool directory {directory}: {exc}") from exc


def spool_bytes(root: Path) -> int:
    """Bytes held in every owner's segments under spool ``root`` (what waits for Kafka)."""
    total = 0
    try:
        owners = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return 0
    for owner in owners:
        for segment in list_segments(owner):
            with contextlib.suppress(OSError):  # drained and deleted meanwhile
                total += segment.stat().st_size
    return total


class Spool:
    """One process's spool directory: append, seal, read back, delete. Not thread-safe.

    Invariant: segments sorted by name hold records in lsn order. ``append`` keeps it: records
    whose lsn is lower than one already written (a failed in-flight batch being put back) go
    to a segment of their own, named by their first lsn, which sorts before the later ones.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = 1024 * 1024 * 1024,
        segment_max_bytes: int = 16 * 1024 * 1024,
        fsync_interval_s: float = 1.0,
        owner: str | None = None,
    ) -> None:
        self.root = root
        self.owner = owner or f"{os.getpid()}-{secrets.token_hex(4)}"
        self.dir = root / self.owner
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        self.fsync_interval_s = fsync_interval_s
        self._fd: int | None = None
        self._seg_size = 0
        self._last_lsn = -1
        self._dirty_since: float | None = None
        self._lock_fd: int | None = None
        self._bytes = 0

    # -- ownership ----------------------------------------------------------------------
    def _ensure_dir(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.dir}: {exc}") from exc
        self._lock_fd = fd
        self._bytes = sum(p.stat().st_size for p in list_segments(self.dir))

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def is_empty(self) -> bool:
        return self._fd is None and not list_segments(self.dir)

    # -- writing ------------------------------------------------------------------------
    def append(self, records: list[SpoolRecord]) -> None:
        """Append records (in lsn order). Raises :class:`SpoolError` when full or on I/O error."""
        if not records:
            return
        self._ensure_dir()
        blob = b"".join(encode_record(r) for r in records)
        if self._bytes + len(blob) > self.max_bytes:
            raise SpoolError(
                f"spool {self.dir} is full ({self._bytes} bytes, limit {self.max_bytes})"
            )
        if records[0].lsn <= self._last_lsn:
            # Put-back of older records: their own segment keeps segment order == lsn order.
            self.seal()
            self._write_segment(records[0].lsn, blob, keep_open=False)
            return
        if self._fd is None or self._seg_size + len(blob) > self.segment_max_bytes:
            self.seal()
            self._write_segment(records[0].lsn, blob, keep_open=True)
        else:
            self._write(blob)
        self._last_lsn = records[-1].lsn
        now = time.monotonic()
        if self._dirty_since is None:
            self._dirty_since = now
        elif now - self._dirty_since >= self.fsync_interval_s:
            self.sync()

    def _write_segment(self, first_lsn: int, blob: bytes, *, keep_open: bool) -> None:
        path = self.dir / _segment_name(first_lsn)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot create spool segment {path}: {exc}") from exc
        self._fd = fd
        self._seg_size = os.fstat(fd).st_size
        self._write(blob)
        if not keep_open:
            self.seal()

    def _write(self, blob: bytes) -> None:
        assert self._fd is not None
        try:
            view = memoryview(blob)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise SpoolError(f"cannot write spool segment in {self.dir}: {exc}") from exc
        self._seg_size += len(blob)
        self._bytes += len(blob)

    def sync(self) -> None:
        """fsync the open segment (and the directory, so new segment names survive)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
                dfd = os.open(self.dir, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError as exc:
                raise SpoolError(f"cannot fsync spool in {self.dir}: {exc}") from exc
        self._dirty_since = None

    def seal(self) -> None:
        """Close the open segment (fsynced); the next append starts a new one."""
        if self._fd is None:
            return
        self.sync()
        os.close(self._fd)
        self._fd = None
        self._seg_size = 0

    # -- reading back ---------------------------------------------------------------------
    def sealed_segments(self) -> list[Path]:
        """Seal the open segment and list every segment, oldest first."""
        self.seal()
        return list_segments(self.dir)

    def delete_segment(self, path: Path) -> None:
        """Remove a segment whose records are confirmed delivered."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SpoolError(f"cannot delete spool segment {path}: {exc}") from exc
        self._bytes = max(0, self._bytes - size)

    def close(self, *, remove_if_empty: bool = True) -> None:
        """Seal, and remove the directory when nothing is left in it; release the lock."""
        self.seal()
        if remove_if_empty and self._lock_fd is not None and not list_segments(self.dir):
            with contextlib.suppress(OSError):
                (self.dir / LOCK_NAME).unlink()
                self.dir.rmdir()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def iter_records(directory: Path, *, repair: bool = True) -> Iterator[SpoolRecord]:
    """Every record of an owner directory in lsn order (segment by segment)."""
    for seg in list_segments(directory):
        yield from read_segment(seg, repair=repair)


@contextlib.contextmanager
def claim_abandoned(directory: Path) -> Iterator[bool]:
    """Try to take the lock of an owner directory; yields False when its owner is alive."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SpoolError(f"cannot open {directory / LOCK_NAME}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def owner_dirs(root: Path) -> list[Path]:
    """Owner directories under a spool root (live or abandoned)."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SpoolError(f"cannot list spool root {root}: {exc}") from exc
