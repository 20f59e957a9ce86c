"""The naming rules every front end and every record enforce, in one place (pure).

A tenant is 1-63 characters of ``[A-Za-z0-9_.-]``, starting with a letter or digit: it is a
path segment, an OpenSearch index suffix and a label value, so it must be safe in all three.
"""

from __future__ import annotations

import re

TENANT_RULE = "1-63 of [A-Za-z0-9_.-], starting with a letter or digit"
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def is_tenant_name(value: object) -> bool:
    """Whether ``value`` is a valid tenant name (see the module docstring)."""
    return isinstance(value, str) and _TENANT_RE.fullmatch(value) is not None


__all__ = ["TENANT_RULE", "is_tenant_name"]
