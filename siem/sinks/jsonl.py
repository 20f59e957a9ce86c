"""JSON lines to a file (appended to, fsynced before each offset commit) or to stdout.

One event per line in the sink's format (a CEF line is written as a JSON string). The JSON
writer escapes every control character, so an event never spans or forges lines. A file is
opened in append mode; :meth:`JsonlSink.sync` fsyncs it, and the worker commits offsets only
after that, so a crash can repeat lines but never lose them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from siem.config import JsonlOptions
from siem.sinks.base import SinkError, json_unit


class JsonlSink:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        options: JsonlOptions,
        fmt: str = "native",
        *,
        stdout: BinaryIO | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.format = fmt
        self._unit = json_unit(fmt)
        self._stdout = stdout
        self._file: BinaryIO | None = None
        self._dirty = False

    def encode(self, event: Mapping[str, Any]) -> bytes | None:
        unit = self._unit(event)
        return None if unit is None else unit + b"\n"

    def _out(self) -> BinaryIO:
        if self.options.path == "-":
            return self._stdout or sys.stdout.buffer
        if self._file is None:
            path = Path(self.options.path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "ab")  # noqa: SIM115 (kept open across batches)
            except OSError as exc:
                raise SinkError(f"jsonl {path}: cannot open: {exc}") from exc
        return self._file

    def deliver(self, units: Sequence[bytes]) -> None:
        out = self._out()
        try:
            out.write(b"".join(units))
            out.flush()
        except OSError as exc:
            self._reopen()
            raise SinkError(f"jsonl {self.options.path}: write failed: {exc}") from exc
        self._dirty = True

    def sync(self) -> None:
        if not self._dirty or self._file is None or not self.options.fsync:
            self._dirty = False
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._reopen()
            raise SinkError(f"jsonl {self.options.path}: fsync failed: {exc}") from exc
        self._dirty = False

    def _reopen(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def close(self) -> None:
        self._reopen()


__all__ = ["JsonlSink"]
