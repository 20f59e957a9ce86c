"""sessionvault: session recording and audit log pipeline for identity-aware access proxies.

The library never configures logging; applications (the CLI included) do.
"""

__version__ = "0.1.0"
