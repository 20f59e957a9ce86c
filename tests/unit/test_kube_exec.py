"""Kubernetes exec stream frames -> sessionvault frames, and exit codes from Status JSON."""

from __future__ import annotations

import orjson
import pytest

from ingest.kube_exec import (
    Channel,
    exit_code_from_status,
    frame_from_channel,
    frame_from_message,
    split_message,
)
from schemas.models import Frame, Stream
from sessionvault.errors import ValidationError

RAW = b"\x00\xff\x1b[0m\xc3\x28"


@pytest.mark.parametrize(
    ("channel", "stream"),
    [
        (Channel.STDIN, Stream.INPUT),
        (Channel.STDOUT, Stream.OUTPUT),
        (Channel.STDERR, Stream.STDERR),
        (Channel.ERROR, Stream.ERROR),
    ],
)
def test_data_channels_map_to_their_stream_with_bytes_unchanged(
    channel: Channel, stream: Stream
) -> None:
    assert frame_from_message(bytes([channel]) + RAW, 42) == Frame(42, stream, RAW)


def test_resize_channel_becomes_cols_x_rows() -> None:
    payload = orjson.dumps({"Width": 132, "Height": 43})
    assert frame_from_channel(Channel.RESIZE, payload, 7) == Frame(7, Stream.RESIZE, b"132x43")


def test_close_channel_yields_no_frame() -> None:
    assert frame_from_message(b"\xff\x01", 3) is None


def test_error_channel_keeps_status_json_bytes_exactly() -> None:
    status = b'{"metadata":{},"status":"Success"}\n'
    frame = frame_from_message(b"\x03" + status, 9)
    assert frame is not None
    assert frame.data == status


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1,2]", b'{"Width":0,"Height":24}', b'{"Width":"80","Height":24}']
)
def test_malformed_resize_is_rejected(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        frame_from_channel(Channel.RESIZE, payload, 0)


def test_undefined_channel_and_empty_message_are_rejected() -> None:
    with pytest.raises(ValidationError):
        frame_from_channel(7, b"x", 0)
    with pytest.raises(ValidationError) as err:
        split_message(b"")
    assert err.value.reason == "bad_framing"


def test_success_status_means_exit_code_zero() -> None:
    assert exit_code_from_status(b'{"metadata":{},"status":"Success"}') == 0


@pytest.mark.parametrize("code", [1, 2, 127, 137])
def test_nonzero_exit_code_is_read_from_status_causes(code: int) -> None:
    status = {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }
    assert exit_code_from_status(orjson.dumps(status)) == code
    assert exit_code_from_status(status) == code


def test_failures_without_an_exit_code_report_none() -> None:
    internal = {"status": "Failure", "reason": "InternalError", "message": "container not found"}
    assert exit_code_from_status(orjson.dumps(internal)) is None
    assert exit_code_from_status(b"plain text error from the v1 protocol") is None
    no_causes = {"status": "Failure", "reason": "NonZeroExitCode", "details": {}}
    assert exit_code_from_status(no_causes) is None
