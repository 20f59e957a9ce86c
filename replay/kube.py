"""kubectl exec's error channel: the exit code carried by its ``Status`` JSON. Pure.

The error channel (stream ``x``) carries one ``metav1.Status`` when the command ends:
``{"status":"Success"}`` for exit code 0, or ``{"status":"Failure","reason":"NonZeroExitCode",
"details":{"causes":[{"reason":"ExitCode","message":"3"}]}}`` for a non-zero exit code.
A failure with no ExitCode cause (the exec itself failed) has no exit code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from schemas.models import Frame, Stream


def exit_code_from_status(status: bytes | dict[str, Any]) -> int | None:
    """The exit code a Status object from the error channel reports.

    ``status: Success`` means 0. ``status: Failure`` with ``reason: NonZeroExitCode`` carries
    the code in ``details.causes[{reason: ExitCode, message: "N"}]``. Any other failure (the
    command could not be started, the container is gone) has no process exit code: ``None``.
    Payloads that are not a JSON object (the pre-v4 protocols send plain text) give ``None``.
    """
    if isinstance(status, bytes | bytearray | memoryview):
        try:
            parsed: object = orjson.loads(bytes(status))
        except orjson.JSONDecodeError:
            return None
    else:
        parsed = status
    if not isinstance(parsed, dict):
        return None
    state = parsed.get("status")
    if state == "Success":
        return 0
    if state != "Failure" or parsed.get("reason") != "NonZeroExitCode":
        return None
    details = parsed.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if not isinstance(causes, list):
        return None
    for cause in causes:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            message = cause.get("message")
            try:
                return int(str(message).strip())
            except ValueError:
                return None
    return None


def status_for_exit_code(code: int) -> bytes:
    """The Status JSON kubectl's server side sends for ``code`` (inverse of the above)."""
    if code == 0:
        return orjson.dumps({"metadata": {}, "status": "Success"})
    return orjson.dumps(
        {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    )


def exit_code_of(frames: Iterable[Frame]) -> int | None:
    """The exit code of the last error-channel frame that reports one."""
    code: int | None = None
    for f in frames:
        if f.stream is Stream.ERROR:
            found = exit_code_from_status(f.data)
            if found is not None:
                code = found
    return code
