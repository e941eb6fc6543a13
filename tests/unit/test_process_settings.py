"""What the command line does to its own process once it serves: the garbage collector's settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from insider.cli.process import GC_YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector, as it was, afterwards."""
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("collector")
def test_the_start_up_heap_is_frozen_and_the_young_are_collected_less_often() -> None:
    _, older, oldest = gc.get_threshold()
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    settle_heap()

    assert gc.get_freeze_count() > 1000  # what was built so far: modules, the app's classes
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, older, oldest)  # the older generations as they were


def test_importing_the_library_changes_nothing_in_the_collector() -> None:
    # Only `serve` settles the heap: an embedding program keeps its collector as it set it.
    import subprocess
    import sys

    probe = "import gc; t = gc.get_threshold(); import insider, insider.web.app; assert gc.get_threshold() == t"
    subprocess.run([sys.executable, "-c", probe + "; assert gc.get_freeze_count() == 0"], check=True)


@pytest.mark.parametrize("command", [["simulate", "--port", "0"], []])
def test_ctrl_c_during_start_up_stops_quietly_with_exit_0(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before serve and simulate install their own handlers, asyncio turns Ctrl+C into
    # KeyboardInterrupt: it printed a traceback. It now ends as a Ctrl+C afterwards does.
    import insider.cli as cli
    from insider.cli import process

    def interrupted(main: Any) -> int:
        main.close()  # the command's coroutine, never started
        raise KeyboardInterrupt

    monkeypatch.setattr(process, "run_fast", interrupted)
    monkeypatch.setenv("INSIDER_DATABASE_URL", "sqlite:///:memory:")

    assert cli.main(command) == 0
    assert "Traceback" not in capsys.readouterr().err
