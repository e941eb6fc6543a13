"""Collects the code blocks of README.md and docs/*.md as tests (tests/doc_blocks.py says how each runs)."""

from __future__ import annotations

import pytest
from sybil import Sybil

from tests.doc_blocks import COMMAND_TIMEOUT_S, FencedBlockParser, setup, teardown

pytest_collect_file = Sybil(
    parsers=[FencedBlockParser()],
    patterns=["README.md", "docs/*.md"],
    setup=setup,
    teardown=teardown,
    name="docs",
).pytest()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A block may start a service, run make or a bench command: more than a unit test's minute."""
    for item in items:
        if item.nodeid.startswith(("README.md", "docs/")):
            item.add_marker(pytest.mark.timeout(COMMAND_TIMEOUT_S * 2))
