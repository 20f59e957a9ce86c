"""Compliance search over events and terminal output: one query model (:mod:`.model`), two
backends (PostgreSQL :mod:`.pg`, OpenSearch :mod:`.opensearch`), and :mod:`.service` choosing
between them."""
