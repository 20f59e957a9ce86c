"""SIEM sinks: Splunk HEC, syslog (TLS, TCP, UDP), signed webhook, JSON lines.

:func:`make_sink` builds the sink a :class:`~siem.config.SinkConfig` describes. Every sink
follows :class:`siem.sinks.base.Sink`; the formats come from :mod:`siem.formats` (escaping is
never reimplemented here).
"""

from __future__ import annotations

from siem.config import HecOptions, JsonlOptions, SinkConfig, SyslogOptions, WebhookOptions
from siem.sinks.base import FormatError, Sink, SinkError, SinkRejectedError


def make_sink(config: SinkConfig) -> Sink:
    """The sink for ``config`` (connections are opened lazily, on first delivery)."""
    opts = config.options
    if isinstance(opts, HecOptions):
        from siem.sinks.splunk_hec import HecSink

        return HecSink(config.name, opts, config.format)
    if isinstance(opts, SyslogOptions):
        from siem.sinks.syslog import SyslogSink

        return SyslogSink(config.name, opts, config.format)
    if isinstance(opts, WebhookOptions):
        from siem.sinks.webhook import WebhookSink

        return WebhookSink(config.name, opts, config.format)
    assert isinstance(opts, JsonlOptions)
    from siem.sinks.jsonl import JsonlSink

    return JsonlSink(config.name, opts, config.format)


__all__ = ["FormatError", "Sink", "SinkError", "SinkRejectedError", "make_sink"]
