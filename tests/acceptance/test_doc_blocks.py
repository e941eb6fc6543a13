"""The harness that runs the documents' blocks (tests/doc_blocks.py): commands, servers, ports, markers, outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Document
from sybil.example import SybilFailure

from tests import doc_blocks
from tests.doc_blocks import FencedBlockParser, commands_of, server_kind


def test_commands_join_continuations_keep_here_documents_and_skip_comments() -> None:
    source = (
        "# a comment line\n"
        "curl -X POST localhost:8080/api/v1/messages \\\n"
        "     -d '{}'\n"
        "cat > list.csv <<'EOF'\n"
        "to,content\n"
        "+15555550100,hi\n"
        "EOF\n"
        'grep -c hi <<< "hi there"\n'
        "python -m insider --help   # every command has --help\n"
    )
    assert commands_of(source) == [
        "curl -X POST localhost:8080/api/v1/messages  -d '{}'",
        "cat > list.csv <<'EOF'\nto,content\n+15555550100,hi\nEOF",
        'grep -c hi <<< "hi there"',
        "python -m insider --help   # every command has --help",
    ]


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("make run", "service"),
        ("INSIDER_SEND_INTERVAL=10s make run", "service"),
        ("python -m insider", "service"),
        ("python -m insider                 # serve: the API and the sender", "service"),
        (".venv/bin/python -m insider serve", "service"),
        ("INSIDER_WEBHOOK_URL=http://127.0.0.1:9090/webhook python -m insider", "service"),
        ("python -m insider simulate --fail-rate 0.3 &", "simulator"),
        ("python -m insider simulate --help", None),
        ("python -m insider --help", None),
        ("python -m insider migrate", None),
        ("python -m insider enqueue --to +15555550100 --content 'x'", None),
        ("make test", None),
        ("curl localhost:8080/healthz", None),
    ],
)
def test_servers_are_told_from_commands_that_finish(command: str, kind: str | None) -> None:
    assert server_kind(command) == kind


@pytest.mark.parametrize(
    ("command", "kept"),
    [
        ("python -m insider simulate --dlr-token T  # ... that reports", "python -m insider simulate --dlr-token T"),
        ("python -m insider simulate &  # in the background", "python -m insider simulate &"),
        ("echo 'a # b' \"c # d\" e\\ #f # g", "echo 'a # b' \"c # d\" e\\ #f"),
        ("curl localhost:8080/#anchor", "curl localhost:8080/#anchor"),
        ("# a whole line", ""),
    ],
)
def test_a_trailing_comment_is_cut_as_bash_reads_it(command: str, kept: str) -> None:
    # The simulator's --port is appended to the command: after a comment, bash ignored it.
    assert doc_blocks.without_comment(command) == kept


def test_documented_ports_are_swapped_wherever_the_block_names_them() -> None:
    source = "python -m insider simulate --port 9090 &\nINSIDER_PORT=8081 python -m insider\ncurl 127.0.0.1:8081/x"
    assert doc_blocks._documented_ports(source) == {9090, 8081}
    swapped = doc_blocks._with_ports(source, {9090: 40001, 8081: 40002})
    assert swapped == (
        "python -m insider simulate --port 40001 &\nINSIDER_PORT=40002 python -m insider\ncurl 127.0.0.1:40002/x"
    )


def test_a_simulators_control_port_is_swapped_and_known_as_its_own() -> None:
    source = "python -m insider simulate --port 9090 --control-port 9190 &\ncurl 127.0.0.1:9190/simulator"
    assert doc_blocks._documented_ports(source) == {9090, 9190}
    swapped = doc_blocks._with_ports(source, {9090: 40001, 9190: 40002})
    assert swapped == "python -m insider simulate --port 40001 --control-port 40002 &\ncurl 127.0.0.1:40002/simulator"
    server = doc_blocks.Server(swapped.splitlines()[0], Any, Path("log"), 40001, via_make=False)  # type: ignore[arg-type]
    assert server.ports == {40001, 40002}  # a curl at the control port needs no server of its own


@pytest.fixture
def document(tmp_path: Path) -> Iterator[Any]:
    """Parses Markdown text as the suite parses README.md; yields a function running its examples."""
    namespaces: list[dict[str, Any]] = []

    def run(text: str) -> list[str | None]:
        path = tmp_path / "doc.md"
        path.write_text(text, encoding="utf-8")
        parsed = Document.parse(str(path), FencedBlockParser())
        doc_blocks.setup(parsed.namespace)
        namespaces.append(parsed.namespace)
        failures: list[str | None] = []
        for example in parsed.examples():
            try:
                example.evaluate()
            except (SybilFailure, AssertionError) as exc:
                failures.append(str(exc))
            else:
                failures.append(None)
        return failures

    yield run
    for namespace in namespaces:
        doc_blocks.teardown(namespace)


def test_a_block_of_another_language_fails_unless_marked(document: Any) -> None:
    failures = document(
        "```yaml\na: 1\n```\n\n"
        "```\nno language\n```\n\n"
        "<!-- not run here: a configuration file to copy, not a command -->\n```yaml\na: 1\n```\n"
    )
    assert "a ```yaml block, which this suite cannot run" in (failures[0] or "")
    assert "a ```(no language) block" in (failures[1] or "")
    assert failures[2] is None


def test_a_marked_block_must_say_why_and_still_parse(document: Any) -> None:
    failures = document(
        "<!-- not run here: x -->\n```sh\ndocker compose up\n```\n\n"
        "<!-- not run here: needs a Docker engine -->\n```sh\nif then fi (\n```\n\n"
        "<!-- not run here: needs a Docker engine -->\n```sh\ndocker compose up --build\n```\n"
    )
    assert "must say why" in (failures[0] or "")
    assert "not valid shell" in (failures[1] or "")
    assert failures[2] is None


def test_a_python_block_runs_and_its_output_is_compared(document: Any) -> None:
    failures = document(
        "```python\nimport asyncio\nasyncio.run(asyncio.sleep(3600))\nprint('done')\n```\n\n"
        "```text\ndone\n```\n\n"
        "```python\nprint('one')\n```\n\n"
        "```text\ntwo\n```\n\n"
        "```python\nraise SystemExit(3)\n```\n"
    )
    assert failures[:2] == [None, None]  # the hour-long sleep was cut short, the output matched
    assert "is not what the block printed" in (failures[2] or "")
    assert "failed before its output could be compared" in (failures[3] or "")
    assert "exited with 3" in (failures[4] or "")


def test_a_shell_block_fails_on_the_first_command_that_fails(document: Any) -> None:
    failures = document("```sh\ntrue\nfalse\n```\n\n```sh\necho hello\n```\n\n```text\nhello\n```\n")
    assert "`false` exited with 1" in (failures[0] or "")
    assert failures[1:] == [None, None]


def test_an_output_block_needs_a_runnable_block_before_it(document: Any) -> None:
    failures = document("Some prose.\n\n```text\nhello\n```\n")
    assert "must follow the runnable block" in (failures[0] or "")


def test_a_curl_line_gets_a_service_and_fails_on_an_error_status(document: Any) -> None:
    failures = document(
        "```sh\ncurl localhost:8080/healthz\n```\n\n"
        '```sh\ncurl -H "Authorization: Bearer $INSIDER_API_TOKEN" localhost:8080/api/v1/sender\n```\n\n'
        "```sh\ncurl localhost:8080/api/v1/messages/999999\n```\n\n"
        "```sh\npython -m insider simulate &\ncurl 127.0.0.1:9090/messages\n```\n\n"
        '```sh\ncurl -H "Authorization: Bearer x$INSIDER_API_TOKEN" localhost:8080/api/v1/sender\n```\n'
    )
    assert failures[:2] == [None, None]  # the second block's service has a token, and curl sends it
    assert "exited with 22" in (failures[2] or "") and "404" in (failures[2] or "")
    assert failures[3] is None
    assert "401" in (failures[4] or "")  # the service of a block naming $INSIDER_API_TOKEN requires it


def test_two_servers_of_a_block_that_name_no_port_each_get_one(document: Any) -> None:
    # README's Commands list starts the simulator twice: the second must not be taken as up
    # because the first answers on the port they would share (it then failed to bind, or
    # was stopped in the middle of its start-up).
    failures = document(
        "```sh\npython -m insider simulate --port 9090 &\n"
        "python -m insider simulate  # the same server again, no port named\n"
        "curl 127.0.0.1:9090/messages\n```\n"
    )
    assert failures == [None]
