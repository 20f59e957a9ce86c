"""The one error hierarchy of sessionvault.

Every exception the library raises on purpose derives from :class:`SessionVaultError`.
Drivers' exceptions (kafka-python, asyncpg, opensearch-py, OS errors) are translated at the
boundary that calls the driver, with ``raise ... from exc`` so the cause stays visible.

``retriable`` says whether the same operation may succeed if tried again later (a server that
is down, a timeout); callers with a retry loop check it instead of matching on types.
"""

from __future__ import annotations


class SessionVaultError(Exception):
    """Root of every sessionvault error."""

    retriable: bool = False


class ConfigError(SessionVaultError):
    """A setting is missing or malformed."""


class ValidationError(SessionVaultError):
    """A record does not satisfy its contract.

    ``reason`` is a short machine-friendly code (for dead-letter records and metrics);
    the message says exactly what is wrong and where.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownVersionError(ValidationError):
    """A record carries a contract version this consumer does not know; it must not guess."""

    def __init__(self, message: str) -> None:
        super().__init__("unknown_version", message)


class IntegrityError(SessionVaultError):
    """A hash chain does not verify, or a record contradicts what is stored."""


class NotFoundError(SessionVaultError):
    """The thing asked for does not exist (or is not visible to this tenant)."""


class ShreddedError(SessionVaultError):
    """The recording's data key was destroyed (crypto-shredding): it is unreadable
    everywhere, on purpose. Not a fault of the store (``verify`` says "shredded")."""


class TransportError(SessionVaultError):
    """Kafka could not be reached or refused a request."""

    retriable = True


class StorageError(SessionVaultError):
    """PostgreSQL could not be reached or failed a statement."""

    retriable = True


class DataRejectedError(StorageError):
    """PostgreSQL refused a value (out of range, invalid text, a constraint): the record, not
    the server, is at fault, so retrying cannot help."""

    retriable = False


class SearchBackendError(SessionVaultError):
    """OpenSearch could not be reached or failed a request."""

    retriable = True


class StackError(SessionVaultError):
    """The embedded local stack could not be started, stopped or inspected."""


class SpoolError(SessionVaultError):
    """The local spool directory could not be written or read."""
