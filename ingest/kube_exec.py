"""Kubernetes exec/attach stream frames (``v4.channel.k8s.io`` / ``v5.channel.k8s.io``) as frames.

A kubectl exec or attach session multiplexes its streams over one WebSocket (or SPDY)
connection. Each WebSocket message starts with one channel byte:

    0 stdin   1 stdout   2 stderr   3 error (a ``Status`` JSON with the exit code)
    4 resize (JSON ``{"Width": W, "Height": H}``)   255 close (v5: payload is the channel closed)

This module maps those messages to :class:`schemas.Frame` streams (stdin ``i``, stdout ``o``,
stderr ``e``, error ``x`` keeping the Status JSON bytes exactly, resize ``r`` as ``COLSxROWS``)
and reads the exit code out of the error channel's Status.

Pure: no I/O, no Kafka. Payload bytes are never decoded on the way to a frame (only the resize
JSON, which the protocol defines as JSON, is parsed).
"""

from __future__ import annotations

from enum import IntEnum

import orjson

from replay.kube import exit_code_from_status
from schemas.models import Frame, Stream
from sessionvault.errors import ValidationError

__all__ = [
    "Channel",
    "exit_code_from_status",
    "frame_from_channel",
    "frame_from_message",
    "resize_payload",
    "split_message",
]


class Channel(IntEnum):
    """Channel numbers of the ``v4``/``v5.channel.k8s.io`` stream protocols."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2
    ERROR = 3
    RESIZE = 4
    CLOSE = 255


_STREAM_OF: dict[int, Stream] = {
    Channel.STDIN: Stream.INPUT,
    Channel.STDOUT: Stream.OUTPUT,
    Channel.STDERR: Stream.STDERR,
    Channel.ERROR: Stream.ERROR,
}


def split_message(message: bytes) -> tuple[int, bytes]:
    """Split one stream-protocol message into ``(channel, payload)``.

    Raises :class:`ValidationError` (reason ``bad_framing``) for an empty message, which
    carries no channel byte.
    """
    if not message:
        raise ValidationError("bad_framing", "kube exec message is empty (no channel byte)")
    return message[0], bytes(message[1:])


def resize_payload(payload: bytes) -> bytes:
    """Turn a resize channel payload ``{"Width": W, "Height": H}`` into ``b"WxH"``.

    Raises :class:`ValidationError` (``bad_json`` / ``wrong_type``) when the payload is not
    such an object with positive integer sizes.
    """
    try:
        size = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("bad_json", f"kube exec resize payload is not JSON: {exc}") from exc
    if not isinstance(size, dict):
        raise ValidationError("wrong_type", "kube exec resize payload must be a JSON object")
    width, height = size.get("Width"), size.get("Height")
    for name, value in (("Width", width), ("Height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise ValidationError(
                "wrong_type", f"kube exec resize payload: {name} must be an integer 1..65535"
            )
    return f"{width}x{height}".encode("ascii")


def frame_from_channel(channel: int, payload: bytes, offset_ms: int) -> Frame | None:
    """Map one channel payload to a :class:`Frame` at ``offset_ms``.

    Returns ``None`` for the close channel (255): closing a stream carries no session data.
    Raises :class:`ValidationError` (``wrong_type``) for a channel the protocol does not define,
    and for a malformed resize payload.
    """
    if offset_ms < 0:
        raise ValidationError("wrong_type", f"offset_ms must be >= 0, got {offset_ms}")
    if channel == Channel.CLOSE:
        return None
    if channel == Channel.RESIZE:
        return Frame(offset_ms, Stream.RESIZE, resize_payload(payload))
    stream = _STREAM_OF.get(channel)
    if stream is None:
        raise ValidationError("wrong_type", f"kube exec channel {channel} is not defined")
    return Frame(offset_ms, stream, bytes(payload))


def frame_from_message(message: bytes, offset_ms: int) -> Frame | None:
    """:func:`frame_from_channel` for a whole message that still starts with its channel byte."""
    channel, payload = split_message(message)
    return frame_from_channel(channel, payload, offset_ms)
