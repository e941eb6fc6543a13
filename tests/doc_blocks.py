"""Every fenced block of README.md and docs/*.md runs in the suite, through Sybil (README, Tests).

Sybil finds the blocks and makes each one a test item (``README.md::line:42,column:1``); this
module says how a block of each language runs, in a temporary copy of the reader's checkout
(a directory of links to this repository, with its own ``insider.db``), one per document,
blocks in document order:

- ``python``: the block, as it stands, in a file run by the project's Python. The only
  scaffolding: the example's own ``asyncio.sleep`` calls are cut to at most 1 s.
- ``sh`` (``bash``, ``shell``): command by command in bash, with ``.venv/bin`` first on the
  PATH, as after ``source .venv/bin/activate``; every command must succeed. A server
  (``make run``, ``python -m insider`` or ``... serve``, ``... simulate``) is started in the
  background and waited for until ``/healthz`` answers; at the end of the block it gets
  SIGINT (Ctrl+C) and must stop cleanly. A ``curl`` line gets ``--fail-with-body``, so a 4xx
  or 5xx fails the block; a curl at the service's or the simulator's documented port with no
  server of the block there gets one started first. Scaffolding: documented ports (8080,
  9090 and any other in the block) are swapped for free ones, ``$INSIDER_API_TOKEN`` (and ``$INSIDER_DLR_TOKEN``) is set
  when a block uses it, and ``make test`` only collects the suite (it is the suite running).
- ``text``: the output of the runnable block just before it: the block's lines must appear,
  in order and together, in what that block printed (ports and the checkout's directory
  written back as documented).

A block that cannot run here carries, on the line just before its fence, a visible marker
with the reason, ``<!-- not run here: needs a Docker engine -->``; it is only checked for
syntax (bash -n, compile). A block of another language, or with no language, fails: every
new block is covered, or marked, or the suite says so.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sybil import Document, Example, Region
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

from insider.config import ORIGINAL_IGNORED, ORIGINAL_NAMES

ROOT = Path(__file__).resolve().parents[1]
# Where the documents pretend the checkout is (the start-up summary shows its path).
DOCUMENTED_CHECKOUT = "/home/you/insider"
SERVICE_PORT = 8080  # INSIDER_PORT's default (config/defaults.env); a test keeps them equal
SIMULATOR_PORT = 9090  # `python -m insider simulate`'s default port
SHELLS = {"sh", "bash", "shell"}
PYTHONS = {"python", "py"}
OUTPUTS = {"text"}
SLEEP_CAP_S = 1.0
SERVER_UP_S = 90.0
COMMAND_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 40.0
# Entries of the repository that are not the reader's checkout, or that a run would write.
NOT_LINKED = {".git", ".env", ".pytest_cache", ".mypy_cache", ".ruff_cache", "__pycache__"}
MARKER = re.compile(r"^[ \t]*<!--\s*not run here:\s*(?P<reason>.*?)\s*-->[ \t]*$")
_LOCAL_PORT = re.compile(r"(?P<pre>\b(?:localhost|127\.0\.0\.1|0\.0\.0\.0):|\[::1\]:)(?P<port>\d{2,5})\b")
_OPTION_PORT = re.compile(r"(?P<pre>--port[ =])(?P<port>\d{2,5})\b")
_CONTROL_PORT = re.compile(r"(?P<pre>--control-port[ =])(?P<port>\d{2,5})\b")  # a simulator's second port
_SETTING_PORT = re.compile(r"(?P<pre>\bINSIDER_PORT=)(?P<port>\d{2,5})\b")
_PORTS = (_LOCAL_PORT, _OPTION_PORT, _CONTROL_PORT, _SETTING_PORT)
_HEREDOC = re.compile(r"(?<!<)<<-?(?!<)\s*(['\"]?)(\w+)\1")
# The example's own asyncio.sleep calls are cut short; those of the library are left alone.
_PYTHON_RUNNER = """
import asyncio, runpy, sys
path, cap = sys.argv[1], float(sys.argv[2])
sleep = asyncio.sleep
def cut_short(delay, result=None):
    if sys._getframe(1).f_code.co_filename == path:
        delay = min(delay, cap)
    return sleep(delay, result)
asyncio.sleep = cut_short
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""


@dataclass
class Block:
    """One fenced block: its language, its text, and the marker before it, if any."""

    language: str
    source: str
    line: int
    not_run_reason: str | None
    previous: Block | None = field(default=None, repr=False)
    next: Block | None = field(default=None, repr=False)

    @property
    def runnable(self) -> bool:
        return self.not_run_reason is None and self.language in SHELLS | PYTHONS

    @property
    def documented_output(self) -> Block | None:
        """The text block right after this one, unmarked: what this block prints."""
        following = self.next
        if following is not None and following.language in OUTPUTS and following.not_run_reason is None:
            return following
        return None


@dataclass
class Server:
    command: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    via_make: bool

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def ports(self) -> set[int]:
        """Where it answers: its port, and a simulator's --control-port."""
        return {self.port} | {int(m.group("port")) for m in _CONTROL_PORT.finditer(self.command)}


@dataclass
class Session:
    """One document's run: the reader's checkout (links to this repository) and its environment."""

    checkout: Path
    env: dict[str, str]
    checked_outputs: set[int] = field(default_factory=set)
    ran: set[int] = field(default_factory=set)
    counter: int = 0

    def next_path(self, stem: str, suffix: str) -> Path:
        self.counter += 1
        return self.checkout / ".doc-run" / f"{stem}-{self.counter}{suffix}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Sybil: one parser for every fenced block, whatever its language
# ---------------------------------------------------------------------------------------------


class FencedBlockParser:
    """Yields every fenced block of a document, with its marker and its neighbours."""

    def __init__(self) -> None:
        self.lexer = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<info>[^\n]*)$\n", re.MULTILINE))

    def __call__(self, document: Document) -> list[Region]:
        regions = sorted(self.lexer(document), key=lambda r: r.start)
        blocks: list[Block] = []
        for region in regions:
            info = str(region.lexemes["info"]).strip()
            language = info.split()[0].lower() if info else ""
            line = document.text.count("\n", 0, region.start) + 1
            block = Block(language, str(region.lexemes["source"]), line, _marker_before(document.text, region.start))
            if blocks:
                block.previous, blocks[-1].next = blocks[-1], block
            blocks.append(block)
            region.parsed = block
            region.evaluator = evaluate
        return regions


def _marker_before(text: str, start: int) -> str | None:
    """The reason of a ``<!-- not run here: ... -->`` on the line just before the fence."""
    before = text[:start].rstrip("\n").rsplit("\n", 1)[-1]
    match = MARKER.match(before)
    return match.group("reason") if match else None


def setup(namespace: dict[str, Any]) -> None:
    checkout = Path(tempfile.mkdtemp(prefix="insider-doc-")).resolve()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED and not entry.name.startswith("insider.db"):
            (checkout / entry.name).symlink_to(entry)
    (checkout / ".doc-run").mkdir()
    shims = checkout / ".doc-run" / "bin"
    shims.mkdir()
    curl = shutil.which("curl")
    if curl is not None:  # a 4xx or 5xx fails the command, as it would fail the reader
        (shims / "curl").write_text(
            f'#!/bin/sh\nexec {curl} --fail-with-body --silent --show-error --max-time 30 "$@"\n'
        )
        (shims / "curl").chmod(0o755)
    # The reader's environment: no INSIDER_* setting from outside (the suite's INSIDER_TEST_* stay), nor
    # the original Go service's names (DB_HOST, SMS_HOST, ...), which insider reads too.
    original = {name for names in ORIGINAL_NAMES.values() for name in names} | set(ORIGINAL_IGNORED)
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("INSIDER_") or k.startswith("INSIDER_TEST_")) and k not in original
    }
    env["PATH"] = os.pathsep.join([str(shims), str(checkout / ".venv" / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(checkout / ".venv")
    env.pop("PYTHONPATH", None)
    namespace["session"] = Session(checkout, env)


def teardown(namespace: dict[str, Any]) -> None:
    session: Session | None = namespace.pop("session", None)
    if session is not None:
        shutil.rmtree(session.checkout, ignore_errors=True)


def evaluate(example: Example) -> str | None:
    block: Block = example.parsed
    session: Session = example.namespace["session"]
    where = f"{Path(example.path).name}:{block.line}"
    if block.not_run_reason is not None:
        return _check_marked(block, where)
    if block.language in OUTPUTS:
        return _check_output_block(block, session, where)
    if block.language not in SHELLS | PYTHONS:
        return (
            f"{where}: a ```{block.language or '(no language)'} block, which this suite cannot run: give it a "
            "language it runs (python, sh, text for output), or mark it on the line before the fence with "
            "<!-- not run here: <why> -->"
        )
    _run_block(block, session, where)
    return None


def _check_marked(block: Block, where: str) -> str | None:
    if len(block.not_run_reason or "") < 10:
        return f"{where}: a 'not run here' marker must say why (at least a few words)"
    if block.language in SHELLS:
        result = subprocess.run(["bash", "-n"], input=block.source, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            return f"{where}: not valid shell: {result.stderr.strip()}"
    elif block.language in PYTHONS:
        compile(block.source, where, "exec")
    return None


def _check_output_block(block: Block, session: Session, where: str) -> str | None:
    producer = block.previous
    if producer is None or not producer.runnable:
        return (
            f"{where}: an output block must follow the runnable block whose output it shows; "
            "otherwise mark it <!-- not run here: <why> -->"
        )
    if id(block) not in session.checked_outputs:
        if id(producer) in session.ran:
            return f"{where}: the block before it failed before its output could be compared (see its failure)"
        _run_block(producer, session, f"{where} (the block before it)")
    return None


# ---------------------------------------------------------------------------------------------
# Running a block
# ---------------------------------------------------------------------------------------------


def _run_block(block: Block, session: Session, where: str) -> None:
    session.ran.add(id(block))
    ports: dict[int, int] = {}
    if block.language in PYTHONS:
        output = _run_python(block, session, where)
    else:
        output, ports = _run_shell(block, session, where)
    expected = block.documented_output
    if expected is not None:
        _assert_shown(expected, output, session, ports, where)
        session.checked_outputs.add(id(expected))


def _run_python(block: Block, session: Session, where: str) -> str:
    path = session.next_path(f"example-line-{block.line}", ".py")
    path.write_text(block.source, encoding="utf-8")
    result = subprocess.run(
        ["python", "-c", _PYTHON_RUNNER, str(path), str(SLEEP_CAP_S)],
        cwd=session.checkout,
        env=session.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{where}: the example exited with {result.returncode}:\n{output}"
    assert "Traceback" not in output, f"{where}: the example printed a traceback:\n{output}"
    return result.stdout + result.stderr


def commands_of(source: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, a here-document kept whole."""
    commands: list[str] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        command = lines[i]
        i += 1
        while command.endswith("\\") and i < len(lines):
            command = command[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = _HEREDOC.search(command)
        if heredoc is not None:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(2):
                body.append(lines[i])
                i += 1
            command = "\n".join([command, *body, lines[i] if i < len(lines) else heredoc.group(2)])
            i += 1
        if command.strip() and not command.lstrip().startswith("#"):
            commands.append(command)
    return commands


def without_comment(command: str) -> str:
    """``command`` without a trailing ``# comment``: a ``#`` that starts a word outside quotes, as bash reads it."""
    quote = ""
    escaped = False
    literal = -1  # the index of the last character a backslash made literal
    for i, char in enumerate(command):
        if escaped:
            escaped = False
            literal = i
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or (command[i - 1].isspace() and literal != i - 1)):
            return command[:i].rstrip()
    return command


def _words(command: str) -> tuple[list[str], list[str]]:
    """The leading VAR=value assignments and the words of the command after them."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return [], []
    assignments = []
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        assignments.append(words.pop(0))
    if words and words[-1] == "&":
        words.pop()
    return assignments, words


def server_kind(command: str) -> str | None:
    """``service`` or ``simulator`` for a command that serves until stopped; None for any other."""
    _, words = _words(command)
    if words[:2] == ["make", "run"]:
        return "service"
    if len(words) >= 3 and Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "insider"]:
        rest = words[3:]
        if {"--help", "-h", "--version"} & set(rest):
            return None
        if not rest or rest[0] == "serve":
            return "service"
        if rest[0] == "simulate":
            return "simulator"
    return None


def _documented_ports(source: str) -> set[int]:
    return {int(match.group("port")) for pattern in _PORTS for match in pattern.finditer(source)}


def _with_ports(command: str, ports: dict[int, int]) -> str:
    def swap(match: re.Match[str]) -> str:
        return match.group("pre") + str(ports.get(int(match.group("port")), match.group("port")))

    for pattern in _PORTS:
        command = pattern.sub(swap, command)
    return command


def _run_shell(block: Block, session: Session, where: str) -> tuple[str, dict[int, int]]:
    commands = commands_of(block.source)
    kinds = [server_kind(c) for c in commands]
    documented = _documented_ports(block.source)
    if "service" in kinds:
        documented.add(SERVICE_PORT)
    if "simulator" in kinds:
        documented.add(SIMULATOR_PORT)
    ports = {port: free_port() for port in sorted(documented)}
    env = dict(session.env)
    for token in ("INSIDER_API_TOKEN", "INSIDER_DLR_TOKEN"):  # a block that uses one runs with one set
        if re.search(rf"\$\{{?{token}\b", block.source):
            env[token] = "doc-" + secrets.token_hex(8)
    servers: list[Server] = []
    outputs: list[str] = []
    try:
        for command, kind in zip(commands, kinds, strict=True):
            command = _with_ports(command, ports)
            if kind is not None:
                taken = {s.port for s in servers}
                servers.append(_start_server(command, kind, ports, env, session, where, taken))
                continue
            for documented_port, actual in ports.items():
                if str(actual) in command and not any(actual in s.ports for s in servers):
                    implied = _implied_server(documented_port, actual, where)
                    taken = {s.port for s in servers}
                    implied_kind = server_kind(implied) or ""
                    servers.append(_start_server(implied, implied_kind, ports, env, session, where, taken))
            outputs.append(_run_command(command, env, session, where))
    finally:
        stopped = _stop(servers)
    for server, problem in stopped:
        assert problem is None, f"{where}: `{server.command}` {problem}:\n{server.output()}"
    return "\n".join([*(s.output() for s in servers), *outputs]), ports


def _implied_server(documented_port: int, actual: int, where: str) -> str:
    """The server a curl line of the documents talks to when its block starts none."""
    if documented_port == SERVICE_PORT:
        return f"INSIDER_PORT={actual} python -m insider"
    if documented_port == SIMULATOR_PORT:
        return f"python -m insider simulate --port {actual}"
    raise AssertionError(f"{where}: nothing of this project serves on port {documented_port}")


def _start_server(
    command: str,
    kind: str,
    ports: dict[int, int],
    env: dict[str, str],
    session: Session,
    where: str,
    taken: Collection[int] = (),
) -> Server:
    """Start a server of the block and wait until it answers on its port.

    One that names no port gets the default's stand-in, or a port of its own when another
    server of the block has that one (a list of commands may start the same server twice).
    """
    assignments, words = _words(command)
    run_env = dict(env)
    if kind == "service":
        port = next((int(a.split("=", 1)[1]) for a in assignments if a.startswith("INSIDER_PORT=")), None)
        if port is None:
            port = ports[SERVICE_PORT] if ports[SERVICE_PORT] not in taken else free_port()
            run_env["INSIDER_PORT"] = str(port)
    else:
        given = _OPTION_PORT.search(command)
        if given is not None:
            port = int(given.group("port"))
        else:
            port = ports[SIMULATOR_PORT] if ports[SIMULATOR_PORT] not in taken else free_port()
            # Before a trailing comment, or bash would read the option as part of it (and the
            # simulator would take its default port while another answered on this one).
            command = without_comment(command).rstrip().removesuffix("&").rstrip() + f" --port {port}"
    command = command.rstrip().removesuffix("&").rstrip()
    if kind == "service" and words[:2] == ["make", "run"]:
        _assert_installed(where)
    log_path = session.next_path("server", ".log")
    with log_path.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=session.checkout,
            env=run_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl+C reaches make and the service alike
        )
    server = Server(command, process, log_path, port, via_make=words[:1] == ["make"])
    deadline = time.monotonic() + SERVER_UP_S
    while not _answers(f"http://127.0.0.1:{port}/healthz"):
        if process.poll() is not None:
            raise AssertionError(f"{where}: `{command}` exited with {process.returncode}:\n{server.output()}")
        if time.monotonic() > deadline:
            _stop([server])
            raise AssertionError(f"{where}: `{command}` did not answer on port {port}:\n{server.output()}")
        time.sleep(0.05)  # polling a subprocess for a condition, with a deadline
    return server


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _assert_installed(where: str) -> None:
    """make in the copy must not reinstall: pip would point the venv's editable install at the copy."""
    result = subprocess.run(["make", "-q", "install"], cwd=ROOT, capture_output=True, check=False)
    assert result.returncode == 0, f"{where}: .venv is older than setup.cfg or pyproject.toml: run `make install`"


def _run_command(command: str, env: dict[str, str], session: Session, where: str) -> str:
    run_env = dict(env)
    _, words = _words(command)
    if words[:2] == ["make", "test"]:
        # The suite is what runs this block: make test here only collects it (no recursion).
        _assert_installed(where)
        run_env["PYTEST_ADDOPTS"] = "--collect-only -q -p no:cacheprovider"
    elif words[:1] == ["make"]:
        _assert_installed(where)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", command],
        cwd=session.checkout,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{where}: `{command}` exited with {result.returncode}:\n{output}"
    return output


def _stop(servers: list[Server]) -> list[tuple[Server, str | None]]:
    """Ctrl+C to each server still running; what went wrong with each, if anything."""
    report: list[tuple[Server, str | None]] = []
    for server in servers:
        if server.process.poll() is not None:
            report.append((server, f"stopped by itself (exit {server.process.returncode}) before the end of the block"))
            continue
        os.killpg(server.process.pid, signal.SIGINT)
        try:
            code = server.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
            report.append((server, f"did not stop within {STOP_TIMEOUT_S:g}s of Ctrl+C"))
            continue
        if "Traceback" in server.output():
            report.append((server, "printed a traceback"))
        elif code != 0 and not server.via_make:  # make reports an interrupted recipe itself
            report.append((server, f"exited with {code} after Ctrl+C"))
        else:
            report.append((server, None))
    return report


def _assert_shown(expected: Block, output: str, session: Session, ports: dict[int, int], where: str) -> None:
    """The documented output's lines appear together, in order, in what the block printed."""
    for documented, actual in ports.items():
        output = re.sub(rf"(?<=:){actual}\b", str(documented), output)
    output = output.replace(str(session.checkout), DOCUMENTED_CHECKOUT)
    shown = [line.rstrip() for line in output.splitlines()]
    wanted = [line.rstrip() for line in expected.source.rstrip("\n").splitlines()]
    for i in range(len(shown) - len(wanted) + 1):
        if shown[i : i + len(wanted)] == wanted:
            return
    raise AssertionError(
        f"{where}: the output documented at line {expected.line} is not what the block printed.\n"
        "documented:\n" + "\n".join(wanted) + "\n\nprinted:\n" + "\n".join(shown)
    )
