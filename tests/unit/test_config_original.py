"""Issue 12, point 2: the original Go service's settings (its .env names) when INSIDER_* is unset."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg.conninfo
import pytest

from insider.cli.summary import startup_summary
from insider.config import ConfigError, Settings, default_config_file, load_settings, parse_go_duration

# The original's .env, as its repository ships it (the webhook.site URL made up).
ORIGINAL_ENV = {
    "APP_NAME": "Insider Auto Message Sender",
    "APP_VERSION": "1.0.0",
    "SERVER_PORT": "8080",
    "SERVER_HOST": "localhost",
    "DB_HOST": "localhost",
    "DB_PORT": "5432",
    "DB_USER": "insider",
    "DB_PASSWORD": "insider",
    "DB_NAME": "insiderdb",
    "DB_SSLMODE": "disable",
    "REDIS_HOST": "localhost",
    "REDIS_PORT": "6379",
    "REDIS_DB": "0",
    "REDIS_PASSWORD": "",
    "REDIS_KEY": "sent:messages",
    "TICKER_PERIOD": "2m",
    "SMS_HOST": "https://webhook.site/00000000-0000-4000-8000-000000000000",
}


def load(environ: dict[str, str], *, env_file: Path | None = None) -> Settings:
    return load_settings(environ, env_file=env_file, defaults_file=default_config_file())


def test_the_originals_env_file_alone_points_at_its_database_redis_provider_and_rate(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in ORIGINAL_ENV.items()), encoding="utf-8")

    settings = load({}, env_file=env_file)

    assert settings.database_url == "postgresql://insider:insider@localhost:5432/insiderdb?sslmode=disable"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.redis_list == "sent:messages"
    assert settings.webhook_url == ORIGINAL_ENV["SMS_HOST"]
    assert settings.send_interval_s == 120
    assert (settings.host, settings.port) == ("localhost", 8080)
    assert dict(settings.from_original) == {
        "INSIDER_DATABASE_URL": "DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME, DB_SSLMODE",
        "INSIDER_REDIS_URL": "REDIS_HOST, REDIS_PORT, REDIS_DB",
        "INSIDER_REDIS_LIST": "REDIS_KEY",
        "INSIDER_WEBHOOK_URL": "SMS_HOST",
        "INSIDER_SEND_INTERVAL": "TICKER_PERIOD",
        "INSIDER_HOST": "SERVER_HOST",
        "INSIDER_PORT": "SERVER_PORT",
    }


def test_the_environment_wins_over_env_and_insider_names_win_over_both(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SMS_HOST=http://from-env-file/\nTICKER_PERIOD=30s\nINSIDER_PORT=9001\n", encoding="utf-8")
    settings = load(
        {"SMS_HOST": "http://from-environment/", "SERVER_PORT": "9002", "INSIDER_SEND_INTERVAL": "5s"},
        env_file=env_file,
    )
    assert settings.webhook_url == "http://from-environment/"
    assert settings.port == 9001  # INSIDER_PORT (.env) wins over SERVER_PORT (environment)
    assert settings.send_interval_s == 5  # INSIDER_SEND_INTERVAL wins over TICKER_PERIOD
    assert dict(settings.from_original) == {"INSIDER_WEBHOOK_URL": "SMS_HOST"}


def test_an_empty_insider_line_does_not_hide_the_originals_name() -> None:
    settings = load({"INSIDER_WEBHOOK_URL": "", "SMS_HOST": "https://example.com/hook", "DB_NAME": ""})
    assert settings.webhook_url == "https://example.com/hook"
    assert settings.database_url == "sqlite:///insider.db"  # an empty DB_NAME counts as unset


def test_the_defaults_of_a_url_are_the_originals_and_passwords_are_url_encoded() -> None:
    password = "p@ss:w/rd %&?#é"
    settings = load({"DB_PASSWORD": password, "DB_HOST": "db.internal", "REDIS_PASSWORD": password, "REDIS_DB": "3"})

    conninfo = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    assert conninfo == {
        "user": "insider",
        "password": password,
        "host": "db.internal",
        "port": "5432",
        "dbname": "insiderdb",
        "sslmode": "disable",
    }
    redis = urlsplit(settings.redis_url)
    assert (redis.hostname, redis.port, redis.path, unquote(redis.password or "")) == (
        "localhost",
        6379,
        "/3",
        password,
    )
    assert password not in repr(settings)
    summary = startup_summary(settings, base_url="http://127.0.0.1:8080", running=True, pending=0)
    assert password not in summary and "p%40ss" not in summary
    assert "Original  settings read from the Go service's names: INSIDER_DATABASE_URL from DB_HOST, DB_PASSWORD" in (
        summary
    )


def test_hosts_a_socket_directory_and_ipv6() -> None:
    settings = load({"DB_HOST": "/var/run/postgresql", "REDIS_HOST": "::1"})
    assert psycopg.conninfo.conninfo_to_dict(settings.database_url)["host"] == "/var/run/postgresql"
    assert settings.redis_url == "redis://[::1]:6379/0"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2m", 120),
        ("30s", 30),
        ("1m30s", 90),
        ("1h2m3.5s", 3723.5),
        ("300ms", 0.3),
        ("1.5h", 5400),
        ("0s", 0),
        ("0", 0),
        (".5s", 0.5),
        ("1us", 1e-6),
        ("1µs", 1e-6),
        ("+2m", 120),
    ],
)
def test_ticker_period_takes_any_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)
    assert load({"TICKER_PERIOD": text}).send_interval_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        ({"TICKER_PERIOD": "5"}, "TICKER_PERIOD: expected a Go duration"),
        ({"TICKER_PERIOD": "-1m"}, "TICKER_PERIOD: expected a duration of 0 or more"),
        ({"TICKER_PERIOD": "2 minutes"}, "TICKER_PERIOD: expected a Go duration"),
        ({"TICKER_PERIOD": "1d"}, "TICKER_PERIOD: expected a Go duration"),
        ({"DB_PORT": "fivefourthreetwo"}, "DB_PORT: expected a whole number"),
        ({"DB_PORT": "70000"}, "DB_PORT: expected a number from 1 to 65535"),
        ({"DB_SSLMODE": "sometimes"}, "DB_SSLMODE: expected one of disable, allow, prefer"),
        ({"DB_HOST": "db host@x"}, "DB_HOST: expected a host name or address"),
        ({"REDIS_PORT": "-1"}, "REDIS_PORT: expected a number from 1 to 65535"),
        ({"REDIS_DB": "zero"}, "REDIS_DB: expected a whole number"),
        ({"REDIS_HOST": "/tmp/redis.sock"}, "REDIS_HOST: expected a host name or address"),
        ({"SMS_HOST": "webhook.site/abc"}, "SMS_HOST: expected a URL starting with http:// or https://"),
        ({"SERVER_PORT": "http"}, "SERVER_PORT: expected a whole number"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_originals_variable(environ: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(environ)
    assert str(error.value).startswith(said), str(error.value)
    assert "\n" not in str(error.value)


def test_app_name_and_version_are_accepted_and_unknown_insider_names_still_refused() -> None:
    settings = load({"APP_NAME": "x", "APP_VERSION": "9", "DB_UNKNOWN": "y"})
    assert settings.from_original == ()
    with pytest.raises(ConfigError, match="INSIDER_DB_HOST: unknown setting"):
        load({"INSIDER_DB_HOST": "localhost"})
