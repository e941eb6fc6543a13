"""Adapters of the ports: PostgreSQL, webhook, Redis and in-memory ones for tests and embedding."""
