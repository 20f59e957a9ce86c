"""Persistence: PostgreSQL (migrations, chunk store, event store, retention) and OpenSearch.

Nothing here knows Kafka.
"""
