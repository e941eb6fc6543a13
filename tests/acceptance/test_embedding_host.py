"""The README's embedding examples inside a host program with logging of its own, as a subprocess.

The host sets up the standard library's logging its way (a root handler and format of its own,
levels on ``aiohttp.access`` and ``psycopg.pool``, a filter on ``aiohttp.access``), then imports
insider, runs both examples of the README's Embedding section, and serves two apps from
``create_app`` in a row behind runners of its own. Afterwards its logging is exactly as it was
(new loggers aside, left as the standard library makes them), its own lines still come out
its way, and insider's events came to its handlers through the standard library.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.acceptance.conftest import service_env
from tests.readme_text import section

ROOT = Path(__file__).resolve().parents[2]
SLEEP_CAP_S = 1.0

HOST = """
import asyncio, logging, sys, warnings

# --- the host's own logging, before insider is imported ---
HOST_FORMAT = "HOST|%(levelname)s|%(name)s|%(message)s"
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter(HOST_FORMAT))
root = logging.getLogger()
root.addHandler(handler)
root.setLevel(logging.INFO)
host_filter = logging.Filter("aiohttp.access")
logging.getLogger("aiohttp.access").setLevel(logging.INFO)
logging.getLogger("aiohttp.access").addFilter(host_filter)
logging.getLogger("psycopg.pool").setLevel(logging.DEBUG)
host = logging.getLogger("host")

import structlog  # the host does not use it; insider must not configure it either
import psycopg  # noqa: F401  (psycopg sets its own logger to WARNING when imported: its doing, not insider's)


def snapshot():
    manager = logging.Logger.manager
    loggers = {"": root, **{n: l for n, l in manager.loggerDict.items() if isinstance(l, logging.Logger)}}
    return {
        "loggers": {
            n: (l.level, list(l.handlers), list(l.filters), l.propagate, l.disabled) for n, l in loggers.items()
        },
        "handlers": [(h, h.level, h.formatter, h.formatter._fmt, list(h.filters), h.stream) for h in root.handlers],
        "disable": manager.disable,
        "logger class": logging.getLoggerClass(),
        "record factory": logging.getLogRecordFactory(),
        "last resort": logging.lastResort,
        "raise exceptions": logging.raiseExceptions,
        "showwarning": warnings.showwarning,
        "structlog": (structlog.is_configured(), structlog.get_config()),
    }


before = snapshot()
host.info("before insider")

import aiohttp
from aiohttp import web

from insider import load_settings
from insider.container import Container
from insider.web.app import create_app

# --- the README's examples, as they stand (their own asyncio.sleep calls cut short) ---
sleep = asyncio.sleep


def cut_short(delay, result=None):
    if sys._getframe(1).f_code.co_filename == "README.md":
        delay = min(delay, SLEEP_CAP_S)
    return sleep(delay, result)


asyncio.sleep = cut_short
for example in EXAMPLES:
    exec(compile(example, "README.md", "exec"), {"__name__": "__main__"})
asyncio.sleep = sleep


# --- two apps in a row, each behind a runner of the host's (aiohttp's access log on) ---
async def serve(n):
    settings = load_settings({"INSIDER_DATABASE_URL": f"sqlite:///app{n}.db", "INSIDER_AUTOSTART": "false"})
    runner = web.AppRunner(create_app(Container(settings=settings)))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/healthz?token=host-secret-token") as response:
                assert response.status == 200, response.status
            async with session.post(base + "/api/v1/messages", json={"to": "+905301234009", "content": "hi"}) as r:
                assert r.status == 201, r.status
    finally:
        await runner.cleanup()


async def main():
    for n in (1, 2):
        await serve(n)


asyncio.run(main())

after = snapshot()
new = {n: state for n, state in after["loggers"].items() if n not in before["loggers"]}
untouched = (logging.NOTSET, [], [], True, False)
configured = {n: s for n, s in new.items() if s != untouched}
assert not configured, f"a logger was configured: {configured}"
after["loggers"] = {n: s for n, s in after["loggers"].items() if n in before["loggers"]}
changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
assert not changed, f"the host's logging changed: {changed}"
host.info("after insider")
"""


def examples() -> list[str]:
    """The Python blocks of the README's Embedding section, in order."""
    return re.findall(r"^```python\n(.*?)^```", section("Embedding"), flags=re.M | re.S)


def test_the_readme_examples_leave_a_hosts_logging_as_it_was_and_log_through_it(tmp_path: Path) -> None:
    blocks = examples()
    assert len(blocks) == 2  # open_service, then a Supervisor of one's own
    program = tmp_path / "host.py"
    program.write_text(f"EXAMPLES = {blocks!r}\nSLEEP_CAP_S = {SLEEP_CAP_S}\n" + textwrap.dedent(HOST))
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        # The first example queues its message after the sender started: with the default 2-minute
        # interval the first batch (at once) may have gone before it; the next goes 0.2 s later.
        env={**service_env(send_interval="200ms"), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    host = [line.split("|", 3)[1:] for line in lines if line.startswith("HOST|")]

    # The host's own lines, its way, before and after.
    assert host[0] == ["INFO", "host", "before insider"]
    assert host[-1] == ["INFO", "host", "after insider"]
    # insider's events came through the standard library to the host's handler, in its format.
    sends = [message for level, name, message in host if name == "insider.sender" and message.startswith("send ")]
    assert sends, result.stdout
    assert any("outcome=sent" in message for message in sends)
    requests = [m for level, name, m in host if name == "insider.web" and m.startswith("request method=POST")]
    assert len(requests) == 2, result.stdout  # one per app
    # aiohttp's access log, the host's: on, in its format, with the token masked.
    access = [message for level, name, message in host if name == "aiohttp.access"]
    assert len([m for m in access if "/healthz?token=*** " in m]) == 2, result.stdout
    # Nothing of insider's went anywhere else: the examples' own prints are all that is not the host's.
    others = [line for line in lines if not line.startswith("HOST|")]
    assert len(others) == 2 and others[-1] == "sent", others
    assert result.stderr == ""
    # Secrets and phone numbers stay out of the host's logs too.
    assert "host-secret-token" not in result.stdout
    assert "+905301234001" not in result.stdout and "+905*******01" in result.stdout
