"""Adapters of the ports: PostgreSQL, SQLite, webhook, Redis, and in-process ones (cache, fake SMS client)."""
