"""tlog recordings (JSON messages, tlog log format 2.x) -> :class:`Recording`.

Each message: ``ver``, ``host``, ``rec`` (recording id on that host), ``user``, ``term``,
``session``, ``id`` (1, 2, ... within the recording), ``pos`` (ms since the recording
started), ``timing``, ``in_txt``/``in_bin``, ``out_txt``/``out_bin``. The ``timing`` string
(tlog ``doc/log_format.md``) is a run of records, each optionally preceded by a delay:

    +N    delay of N ms since ``pos`` or the previous record
    <N    N input characters from in_txt          >N    N output characters from out_txt
    [N/M  skip N replacement characters in in_txt, take M bytes from in_bin (input)
    ]N/M  the same for output                     =WxH  window size W columns, H rows

Text characters are re-encoded as UTF-8; bytes that were not valid UTF-8 come from the
``*_bin`` arrays, so the original byte stream is rebuilt exactly. Input may be tlog's own
JSON lines (file writer) or ``journalctl -o json`` lines whose ``MESSAGE`` holds the tlog
message (the journal also gives the wall-clock start, ``__REALTIME_TIMESTAMP``).

The session id is a UUIDv5 of the tenant, ``host`` and ``rec``: the recording's own identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ingest.importers.base import (
    Recording,
    event_uid,
    import_session_id,
    rfc3339_from_ns,
    stamp_event,
)
from schemas.models import Frame, SessionInfo, Stream
from sessionvault.errors import UnknownVersionError, ValidationError

__all__ = ["decode_messages", "iter_frames", "load", "parse_lines", "parse_timing"]

_TOKEN = re.compile(r"([+<>\[\]=])(\d+)(?:([/x])(\d+))?")
_TWO_NUMBERS = {"[": "/", "]": "/", "=": "x"}


def _bad(message: str) -> ValidationError:
    return ValidationError("bad_tlog", message)


def parse_timing(timing: str) -> list[tuple[str, int, int]]:
    """The records of a timing string as ``(kind, first number, second number or 0)``.

    Raises :class:`ValidationError` for anything the grammar does not allow.
    """
    out: list[tuple[str, int, int]] = []
    pos = 0
    while pos < len(timing):
        m = _TOKEN.match(timing, pos)
        if m is None:
            raise _bad(f"timing {timing!r}: unexpected text at character {pos}")
        kind, first, sep, second = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        wanted = _TWO_NUMBERS.get(kind)
        if (wanted is None and sep is not None) or (wanted is not None and sep != wanted):
            raise _bad(f"timing {timing!r}: malformed record {m.group(0)!r}")
        out.append((kind, first, int(second) if second is not None else 0))
        pos = m.end()
    return out


def parse_lines(lines: Iterable[bytes | str]) -> Iterator[tuple[dict[str, Any], int | None]]:
    """``(tlog message, journal realtime in µs or None)`` of each non-blank line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"line {n} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise _bad(f"line {n}: a message must be a JSON object")
        realtime: int | None = None
        if "timing" not in doc and "MESSAGE" in doc:
            message = _journal_message(doc, n)
            if message is None:
                continue  # another program's journal entry
            try:
                realtime = int(doc.get("__REALTIME_TIMESTAMP", ""))
            except ValueError:
                realtime = None
            doc = message
        ver = str(doc.get("ver", "1"))
        if ver.split(".")[0] not in ("1", "2"):
            raise UnknownVersionError(f"line {n}: tlog message version {ver!r} is not known")
        for key in ("id", "pos", "timing"):
            if key not in doc:
                raise _bad(f"line {n}: tlog message lacks {key!r}")
        yield doc, realtime


def _journal_message(entry: dict[str, Any], n: int) -> dict[str, Any] | None:
    """The tlog message of one ``journalctl -o json`` entry; None for an entry that is not
    tlog's (a whole journal exported without a filter holds other programs' entries).

    journald writes a field that is not printable UTF-8 as an array of byte values, and
    ``journalctl -o json`` shows a field over 4 KiB as null unless run with ``--all``."""
    raw = entry.get("MESSAGE")
    is_tlog = "TLOG_REC" in entry or str(entry.get("SYSLOG_IDENTIFIER", "")).startswith("tlog")
    if raw is None:
        if is_tlog:
            raise _bad(
                f"line {n}: journal MESSAGE is null: journalctl leaves out fields over 4 KiB;"
                " export with `journalctl -o json --all`"
            )
        return None
    if isinstance(raw, list):
        if not all(isinstance(b, int) and 0 <= b < 256 for b in raw):
            raise _bad(f"line {n}: journal MESSAGE array is not bytes")
        raw = bytes(raw)
    if not isinstance(raw, str | bytes):
        raise _bad(f"line {n}: journal MESSAGE is neither text nor bytes")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not is_tlog:
            return None
        raise _bad(f"line {n}: journal MESSAGE is not a tlog message: {exc}") from exc
    if not isinstance(message, dict) or "timing" not in message:
        if not is_tlog:
            return None
        raise _bad(f"line {n}: journal MESSAGE must be a tlog message object")
    return message


def _take_bytes(arr: object, start: int, count: int, where: str) -> bytes:
    if not isinstance(arr, list) or start + count > len(arr):
        raise _bad(f"{where}: timing asks for more bytes than the message carries")
    try:
        return bytes(arr[start : start + count])
    except (TypeError, ValueError) as exc:
        raise _bad(f"{where}: byte array holds a value that is not 0..255") from exc


def iter_frames(messages: Iterable[dict[str, Any]]) -> Iterator[Frame]:
    """Frames of a recording's messages (already in ``id`` order)."""
    cursor = 0
    for msg in messages:
        where = f"message id {msg.get('id')}"
        pos = msg.get("pos")
        if not isinstance(pos, int) or pos < 0:
            raise _bad(f"{where}: pos must be an integer >= 0")
        # Keep time monotonic if a message's pos lags the previous message's last record.
        cursor = max(cursor, pos)
        texts = {"<": str(msg.get("in_txt", "")), ">": str(msg.get("out_txt", ""))}
        bins = {"[": msg.get("in_bin", []), "]": msg.get("out_bin", [])}
        txt_at = {"<": 0, ">": 0}
        bin_at = {"[": 0, "]": 0}
        for kind, first, second in parse_timing(str(msg["timing"])):
            if kind == "+":
                cursor += first
            elif kind == "=":
                if not (1 <= first <= 65535 and 1 <= second <= 65535):
                    raise _bad(f"{where}: window size {first}x{second} out of range")
                yield Frame(cursor, Stream.RESIZE, f"{first}x{second}".encode())
            elif kind in texts:
                start = txt_at[kind]
                chunk = texts[kind][start : start + first]
                if len(chunk) != first:
                    raise _bad(f"{where}: timing asks for more text than the message carries")
                txt_at[kind] = start + first
                stream = Stream.INPUT if kind == "<" else Stream.OUTPUT
                yield Frame(cursor, stream, chunk.encode("utf-8", "surrogatepass"))
            else:
                text_kind = "<" if kind == "[" else ">"
                txt_at[text_kind] += first  # the replacement characters standing for the bytes
                data = _take_bytes(bins[kind], bin_at[kind], second, where)
                bin_at[kind] += second
                yield Frame(cursor, Stream.INPUT if kind == "[" else Stream.OUTPUT, data)


def _first_size(messages: list[dict[str, Any]]) -> tuple[int, int]:
    for msg in messages:
        for kind, first, second in parse_timing(str(msg["timing"])):
            if kind == "=":
                return first, second
    return 80, 24


def _parse_time_ns(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _bad(f"started_at {text!r} is not an RFC 3339 time") from exc
    if dt.tzinfo is None:
        raise _bad(f"started_at {text!r} has no time zone")
    return (int(dt.timestamp()) * 1_000_000 + dt.microsecond) * 1000


def decode_messages(
    lines: Iterable[bytes | str],
    *,
    tenant: str,
    rec: str | None = None,
    started_at: str | None = None,
) -> Recording:
    """Decode one recording from tlog message lines.

    ``rec`` picks the recording when the lines hold several (else it is an error to guess).
    ``started_at`` (RFC 3339) gives the wall-clock start when the lines do not (plain tlog
    messages carry only offsets; journal exports carry the time). Duplicate messages (same
    id, same content) are dropped; a missing id is an error, since bytes would be lost.
    """
    by_rec: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    realtimes: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for msg, realtime in parse_lines(lines):
        key = (str(msg.get("host", "")), str(msg.get("rec", msg.get("session", ""))))
        if rec is not None and key[1] != rec:
            continue
        mid = msg["id"]
        if not isinstance(mid, int) or mid < 1:
            raise _bad(f"recording {key[1]}: message id {mid!r} must be an integer >= 1")
        seen = by_rec.setdefault(key, {})
        if mid in seen and seen[mid] != msg:
            raise _bad(f"recording {key[1]}: two different messages with id {mid}")
        seen[mid] = msg
        if realtime is not None and isinstance(msg.get("pos"), int):
            realtimes.setdefault(key, []).append((realtime, msg["pos"]))
    if not by_rec:
        raise _bad("no tlog messages" + (f" for recording {rec!r}" if rec else ""))
    if len(by_rec) > 1:
        names = ", ".join(sorted(r for _, r in by_rec))
        raise _bad(f"the input holds several recordings ({names}); choose one with rec=")
    ((key, found),) = by_rec.items()
    ids = sorted(found)
    if ids != list(range(1, len(ids) + 1)):
        missing = sorted(set(range(1, ids[-1] + 1)) - set(ids))[:5]
        raise _bad(f"recording {key[1]}: messages {missing} are missing")
    messages = [found[i] for i in ids]
    if started_at is not None:
        start_ns = _parse_time_ns(started_at)
    elif key in realtimes:
        start_ns = min((us - pos * 1000) * 1000 for us, pos in realtimes[key])
    else:
        raise _bad("tlog messages carry no wall-clock time: pass started_at")
    frames = tuple(iter_frames(messages))
    cols, rows = _first_size(messages)
    first = messages[0]
    host, rec_id = key
    sid = import_session_id(tenant, "tlog", f"{host}\x00{rec_id}")
    started = rfc3339_from_ns(start_ns)
    end_ms = frames[-1].offset_ms if frames else 0
    common: dict[str, Any] = {
        "sid": sid,
        "user": str(first.get("user", "")),
        "server_hostname": host,
        "proto": "tlog",
        "tlog": {
            k: first[k] for k in ("ver", "host", "rec", "user", "term", "session") if k in first
        },
    }
    events = (
        {
            **common,
            "event": "session.start",
            "code": "T2000I",
            "ei": 0,
            "time": started,
            "uid": event_uid(sid, "tlog", "session.start"),
            "size": f"{cols}:{rows}",
        },
        {
            **common,
            "event": "session.end",
            "code": "T2004I",
            "ei": 1,
            "time": rfc3339_from_ns(start_ns + end_ms * 1_000_000),
            "uid": event_uid(sid, "tlog", "session.end"),
            "session_start": started,
            "session_stop": rfc3339_from_ns(start_ns + end_ms * 1_000_000),
        },
    )
    return Recording(
        sid=sid,
        info=SessionInfo(
            started_at=started,
            cols=cols,
            rows=rows,
            kind="import",
            user=str(first.get("user", "")),
            server_id=host,
            term=str(first.get("term", "")),
        ),
        frames=frames,
        events=tuple(stamp_event(e, tenant=tenant) for e in events),
        source="tlog",
    )


def load(
    path: str | Path, *, tenant: str, rec: str | None = None, started_at: str | None = None
) -> Recording:
    """Read a file of tlog messages (the I/O edge of this module)."""
    try:
        with Path(path).open("rb") as fh:
            return decode_messages(fh, tenant=tenant, rec=rec, started_at=started_at)
    except OSError as exc:
        raise ValidationError("unreadable", f"cannot read {path}: {exc}") from exc
