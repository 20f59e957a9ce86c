"""Detection rules: Sigma rules evaluated in-process (see :mod:`siem.rules.sigma`)."""

from siem.rules.sigma import (
    ALERT_EVENT,
    STARTER_DIR,
    BusinessHours,
    RuleError,
    SigmaEngine,
    alert_event,
    load_rules,
)

__all__ = [
    "ALERT_EVENT",
    "STARTER_DIR",
    "BusinessHours",
    "RuleError",
    "SigmaEngine",
    "alert_event",
    "load_rules",
]
