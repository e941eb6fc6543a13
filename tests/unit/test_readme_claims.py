"""What the README names (settings, defaults, durations, simulator counts) read from the README and checked
against the code, so that the two cannot drift apart."""

from __future__ import annotations

import re

import pytest
from dotenv import dotenv_values

from insider.cli.arguments import SIMULATOR_PORT
from insider.config import (
    PREFIX,
    REMOVED,
    ConfigError,
    default_config_file,
    load_settings,
    parse_duration,
    variable_names,
)
from insider.simulator import ANSWER_KINDS
from tests import doc_blocks
from tests.readme_text import README, ROOT, code_spans, section, tables

DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
_NAME = re.compile(r"\bINSIDER_[A-Z0-9_]*[A-Z0-9]\b")


def suite_variables() -> set[str]:
    """The INSIDER_TEST_* variables the suite, the benchmark and CI really read or set."""
    names: set[str] = set()
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]:
        names |= set(re.findall(r"environ\.get\(\s*\"(INSIDER_TEST_[A-Z0-9_]+)\"", path.read_text(encoding="utf-8")))
    names |= set(re.findall(r"^export (INSIDER_TEST_[A-Z0-9_]+)=", (ROOT / ".ci" / "run").read_text(), re.MULTILINE))
    return names


# Names the README shows on purpose as what is NOT a setting (Choices: a typo or a near miss is an error).
TYPO_EXAMPLES = {"INSIDER_BATCHSIZE", "INSIDER_TESTING"}


def test_every_insider_variable_the_documents_name_exists() -> None:
    removed = {PREFIX + name for name in REMOVED}  # accepted, ignored, named in a warning
    known = set(variable_names()) | suite_variables() | TYPO_EXAMPLES | removed
    for path in DOCUMENTS:
        named = set(_NAME.findall(path.read_text(encoding="utf-8")))
        assert named - known == set(), f"{path.name} names variables the code does not read: {named - known}"


def test_the_typo_examples_are_refused_as_unknown() -> None:
    for name in TYPO_EXAMPLES:
        with pytest.raises(ConfigError, match=f"^{name}: unknown setting"):
            load_settings({name: "5"}, env_file=None)


def test_the_suite_variables_the_readme_describes_are_the_ones_read() -> None:
    tests_section = section("Tests")
    assert {n for n in _NAME.findall(tests_section) if n.startswith("INSIDER_TEST_")} <= suite_variables()
    assert "INSIDER_TEST_REQUIRE_SERVICES" in suite_variables()


def _cell_value(cell: str) -> str:
    if cell.strip() == "(empty)":
        return ""
    spans = code_spans(cell)
    assert len(spans) == 1, f"a default should be one code span or (empty), not {cell!r}"
    return spans[0]


def test_the_configuration_table_matches_the_defaults_file() -> None:
    [table] = tables("Variable")
    assert table.header[:2] == ("Variable", "Default")
    defaults = {k: v or "" for k, v in dotenv_values(default_config_file()).items()}
    documented = {}
    for variable, default, meaning in table.rows:
        [name] = code_spans(variable)
        documented[name] = _cell_value(default)
        assert meaning.strip(), f"{name} has no meaning in the table"
    assert sorted(documented) == sorted(variable_names())
    for name, value in documented.items():
        if name == "INSIDER_CONFIG_FILE":
            assert ROOT / value == default_config_file()
        else:
            assert defaults[name] == value, (
                f"README says {name} defaults to {value!r}; defaults.env: {defaults[name]!r}"
            )
    # And the defaults, as documented, are a valid configuration.
    load_settings({k: v for k, v in documented.items() if k != "INSIDER_CONFIG_FILE"}, env_file=None)


def test_every_duration_the_configuration_section_shows_is_accepted() -> None:
    text = " ".join(section("Configuration").split())
    sentence = re.search(r"Durations accept (.*?\))\.", text)
    assert sentence is not None, "README's Configuration section no longer says which durations are accepted"
    examples = code_spans(sentence.group(1))
    assert len(examples) >= 5
    for example in examples:
        assert parse_duration(example) > 0, example


def test_the_simulator_counts_the_kinds_of_answer_the_readme_lists() -> None:
    text = " ".join(section("Commands").split())
    listed = re.search(r"counts of every kind of answer: (.*?\))\)", text)
    assert listed is not None, "README's simulate paragraph no longer lists the counts"
    names = re.findall(r"`([A-Za-z]+)`", listed.group(1))
    assert tuple(names) == ANSWER_KINDS


def test_the_documents_harness_knows_the_documented_ports() -> None:
    assert load_settings({}, env_file=None).port == doc_blocks.SERVICE_PORT
    assert doc_blocks.SIMULATOR_PORT == SIMULATOR_PORT


def test_each_not_run_marker_says_why_and_stands_before_a_fence() -> None:
    for path in DOCUMENTS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^\s*<!--\s*not run here", line):
                match = doc_blocks.MARKER.match(line)
                assert match is not None and len(match.group("reason")) >= 10, f"{path.name}:{i + 1}: {line!r}"
                assert i + 1 < len(lines) and re.match(r"^\s*(```|~~~)", lines[i + 1]), (
                    f"{path.name}:{i + 1}: a 'not run here' marker must be the line just before a fence"
                )
