"""SQL kept in files: named queries and numbered migrations, shipped inside the package."""

from __future__ import annotations

import re
from importlib.resources.abc import Traversable

_MIGRATION_FILE = re.compile(r"^(\d{4})_\w+\.sql$")
_QUERY_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def load_queries(directory: Traversable) -> dict[str, str]:
    """The queries of ``queries.sql``, each under a ``-- name --`` header, without comment lines.

    Comments go: psycopg would read a placeholder written in one as a parameter.
    """
    text = (directory / "queries.sql").read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


def with_category_listings(queries: dict[str, str], placeholder: str) -> dict[str, str]:
    """``queries`` and, for each listing of messages (``list_...``), its twin ``..._category``
    that keeps the messages of one category (the parameter ``placeholder`` names).

    The twin is the listing with ``category = <placeholder> AND`` first in its WHERE, so the
    rule of each listing (which rows, in which order, after which cursor) is written once.
    """
    twins = {}
    for name, sql in queries.items():
        if name.startswith("list_"):
            head, where, rest = sql.partition("\nWHERE ")
            if not where or "\nWHERE " in rest:
                raise RuntimeError(f"the listing {name} must have exactly one WHERE at the start of a line")
            twins[f"{name}_category"] = f"{head}{where}category = {placeholder} AND {rest}"
    return queries | twins


def load_migrations(directory: Traversable) -> list[tuple[int, str, str]]:
    """The migrations in ``directory/migrations``, as (version, file name, SQL), in order."""
    found = []
    for entry in (directory / "migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migration files share a version: {[name for _, name, _ in found]}")
    if not found:
        # A package built without its SQL files must not look like an up-to-date schema.
        raise RuntimeError(f"no migration files found in {directory}/migrations")
    return found
