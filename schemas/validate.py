"""JSON Schema validation against the files in ``schemas/json`` (the published contracts)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import orjson

SCHEMA_FILES = {"chunk": "chunk.v1.json", "event": "event.v1.json"}


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


def schema_errors(name: str, data: object) -> list[tuple[str, str]]:
    """All violations of schema ``name`` as (reason code, message naming the field)."""
    errs = sorted(_validator(name).iter_errors(data), key=lambda e: (len(e.absolute_path), e.path))
    return [(_reason(e), f"{name} field {_path(e)}: {e.message}") for e in errs]


def event_errors(data: object) -> list[tuple[str, str]]:
    return schema_errors("event", data)
