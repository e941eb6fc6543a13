"""docker-compose.yml and the Dockerfile, checked by reading them (no Docker engine needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from insider.config import variable_names

ROOT = Path(__file__).resolve().parents[2]
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?])?([^}]*)\}")


def _default(value: str) -> str:
    """A compose value with every ``${VAR:-default}`` replaced by its default, as with no variables set."""
    return _INTERPOLATION.sub(lambda m: m.group(2), value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return [_default(str(part)) for part in (shlex.split(command) if isinstance(command, str) else command)]


def test_the_production_shape_is_there(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", "simulator", "app"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    # The app and the simulator are built from this repository's Dockerfile.
    for name in ("app", "simulator"):
        assert services[name]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()


def test_long_running_services_have_health_checks(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "simulator", "app"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check["retries"] > 0
    assert "9090/healthz" in " ".join(services["simulator"]["healthcheck"]["test"])
    assert "8080/healthz" in " ".join(services["app"]["healthcheck"]["test"])


def test_the_app_starts_once_what_it_needs_is_healthy(services: dict[str, Any]) -> None:
    depends = services["app"]["depends_on"]
    assert depends["postgres"] == {"condition": "service_healthy"}
    assert depends["redis"] == {"condition": "service_healthy"}
    assert depends["simulator"] == {"condition": "service_healthy"}
    assert depends["demo-message"] == {"condition": "service_completed_successfully"}
    assert services["demo-message"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_the_simulator_runs_the_simulate_command_on_the_port_the_app_sends_to(services: dict[str, Any]) -> None:
    command = _command(services["simulator"])
    assert command[:4] == ["python", "-m", "insider", "simulate"]
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"

    env = {k: _default(str(v)) for k, v in services["app"]["environment"].items()}
    webhook = urlsplit(env["INSIDER_WEBHOOK_URL"])
    assert (webhook.hostname, str(webhook.port)) == ("simulator", port)
    # The simulator checks the key the app sends.
    assert command[command.index("--auth-key") + 1] == env["INSIDER_WEBHOOK_AUTH_KEY"] != ""


def test_the_app_uses_postgres_and_redis_of_the_compose_file(services: dict[str, Any]) -> None:
    env = {k: _default(str(v)) for k, v in services["app"]["environment"].items()}
    assert urlsplit(env["INSIDER_DATABASE_URL"]).hostname == "postgres"
    assert urlsplit(env["INSIDER_REDIS_URL"]).hostname == "redis"
    assert env["INSIDER_HOST"] == "0.0.0.0"
    demo_env = services["demo-message"]["environment"]
    assert demo_env["INSIDER_DATABASE_URL"] == env["INSIDER_DATABASE_URL"]


def test_no_variable_is_required() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for match in re.finditer(r"\$\{(\w+)([^}]*)\}", text):
        assert match.group(2).startswith(":-"), f"${{{match.group(1)}}} has no default"


def test_every_insider_variable_set_is_a_known_setting(services: dict[str, Any]) -> None:
    known = set(variable_names())
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable.startswith("INSIDER_"):
                assert variable in known, f"{name} sets unknown {variable}"
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for variable in re.findall(r"\b(INSIDER_\w+)=", dockerfile):
        assert variable in known, f"the Dockerfile sets unknown {variable}"


def test_the_dockerfile_keeps_the_sqlite_file_in_a_volume() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "INSIDER_DATABASE_URL=sqlite:////data/insider.db" in dockerfile
    assert "VOLUME /data" in dockerfile
    assert re.search(r"^USER insider$", dockerfile, re.MULTILINE)


def test_the_simulator_posts_its_receipts_to_the_app_with_the_apps_token(services: dict[str, Any]) -> None:
    command = _command(services["simulator"])
    url = urlsplit(_default(command[command.index("--dlr-url") + 1]))
    token = _default(command[command.index("--dlr-token") + 1])
    app_env = services["app"]["environment"]

    assert (url.scheme, url.hostname, url.port, url.path) == ("http", "app", 8080, "/api/v1/delivery-reports")
    assert app_env["INSIDER_PORT"] == "8080"
    assert token and token == _default(app_env["INSIDER_DLR_TOKEN"])  # the endpoint is on, and they agree
    raw = [str(part) for part in services["simulator"]["command"]]
    assert "${INSIDER_DLR_TOKEN" in raw[raw.index("--dlr-token") + 1]  # one variable sets both
    assert "${INSIDER_DLR_TOKEN" in app_env["INSIDER_DLR_TOKEN"]
