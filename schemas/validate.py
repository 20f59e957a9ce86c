"""JSON Schema validation against the files in ``schemas/json`` (the published contracts)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import orjson

SCHEMA_FILES = {
    "chunk": "chunk.v2.json",  # the version written
    "chunk.v1": "chunk.v1.json",  # still read
    "event": "event.v1.json",
}


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath("json", SCHEMA_FILES[name]).read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name))


def _path(err: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in err.absolute_path]
    return ".".join(parts) if parts else "(record)"


def _reason(err: jsonschema.ValidationError) -> str:
    if err.validator == "required":
        return "missing_field"
    if err.validator == "const" and list(err.absolute_path) == ["sv_version"]:
        return "unknown_version"
    return "wrong_type"


_TOP_KEYWORDS = {"$schema", "$id", "title", "description", "type", "required", "properties"}
_PROPERTY_KEYWORDS = {"type", "const", "pattern", "minLength", "maxLength", "minimum"}
_ANNOTATIONS = {"description", "title", "format"}  # format: not asserted (no format checker)


@cache
def _fast_check(name: str) -> Callable[[object], bool] | None:
    """A check of schema ``name`` in plain Python, or None when the schema uses a keyword it
    does not know. Invariant: it returns True only for data the JSON Schema validator accepts
    (it is stricter where that is simpler: an integer must be an ``int``, a const the same
    type), so a False sends the record to the full validator for the verdict and the message.
    jsonschema walks every property of every record (about 65 µs an event: most of what a SIEM
    sink spent per event); this is a few µs, and ``tests/unit/test_validate_fast.py`` holds it
    to the validator."""
    schema = load_schema(name)
    if set(schema) - _TOP_KEYWORDS - {"additionalProperties"} or schema.get("type") != "object":
        return None
    if schema.get("additionalProperties", True) is not True:
        return None
    checks = []
    for prop, sub in schema.get("properties", {}).items():
        if set(sub) - _PROPERTY_KEYWORDS - _ANNOTATIONS or sub.get("type") not in (
            None,
            "string",
            "integer",
        ):
            return None
        checks.append(
            (
                prop,
                sub.get("type"),
                "const" in sub,
                sub.get("const"),
                re.compile(sub["pattern"]) if "pattern" in sub else None,
                sub.get("minLength"),
                sub.get("maxLength"),
                sub.get("minimum"),
            )
        )
    required = tuple(schema.get("required", ()))

    def check(data: object) -> bool:
        if not isinstance(data, dict):
            return False
        for field in required:
            if field not in data:
                return False
        for prop, kind, has_const, const, pattern, min_len, max_len, minimum in checks:
            if prop not in data:
                continue
            value = data[prop]
            if has_const and (type(value) is not type(const) or value != const):
                return False
            if kind == "string":
                if type(value) is not str:
                    return False
                if pattern is not None and pattern.search(value) is None:
                    return False
                if min_len is not None and len(value) < min_len:
                    return False
                if max_len is not None and len(value) > max_len:
                    return False
            elif kind == "integer":
                if type(value) is not int:
                    return False
                if minimum is not None and value < minimum:
                    return False
        return True

    return check


def schema_errors(name: str, data: object) -> list[tuple[str, str]]:
    """All violations of schema ``name`` as (reason code, message naming the field)."""
    fast = _fast_check(name)
    if fast is not None and fast(data):
        return []
    errs = sorted(_validator(name).iter_errors(data), key=lambda e: (len(e.absolute_path), e.path))
    return [(_reason(e), f"{name} field {_path(e)}: {e.message}") for e in errs]


def event_errors(data: object) -> list[tuple[str, str]]:
    return schema_errors("event", data)
