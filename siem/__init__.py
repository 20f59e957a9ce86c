"""SIEM forwarding: formats (native, CEF, syslog, OCSF, ECS, HEC), detection rules, sinks.

``siem.formats`` and ``siem.rules`` are pure (no Kafka, PostgreSQL or OpenSearch imports);
``siem.sinks`` and ``siem.worker`` do the I/O.
"""
