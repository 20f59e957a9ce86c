"""kubectl exec's error channel: the exit code carried by its ``Status`` JSON. Pure.

The error channel (stream ``x``) carries one ``metav1.Status`` when the command ends:
``{"status":"Success"}`` for exit code 0, or ``{"status":"Failure","reason":"NonZeroExitCode",
"details":{"causes":[{"reason":"ExitCode","message":"3"}]}}`` for a non-zero exit code.
A failure with no ExitCode cause (the exec itself failed) has no exit code.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from schemas.models import Frame, Stream


def exit_code_from_status(data: bytes) -> int | None:
    """The exit code a Status JSON reports, or None when it reports none (or is not JSON)."""
    try:
        status = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(status, dict):
        return None
    if status.get("status") == "Success":
        return 0
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(str(cause.get("message", "")).strip())
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
