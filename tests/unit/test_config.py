"""Settings: the defaults file, then .env, then the environment; durations; clear errors; no secrets in repr."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from dotenv import dotenv_values

from insider.config import (
    ConfigError,
    Settings,
    default_config_file,
    format_duration,
    load_settings,
    mask_url,
    parse_duration,
    variable_names,
)

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, lines: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()), encoding="utf-8")
    return path


def load(environ: dict[str, str], *, env_file: Path | None = None) -> Settings:
    """Settings from the real defaults file, the given environment and (only if given) a .env file."""
    return load_settings(environ, env_file=env_file, defaults_file=default_config_file())


def test_defaults() -> None:
    settings = load({})

    # The embedded defaults: a SQLite file in the working directory, the in-process cache,
    # and (no webhook) the built-in simulated provider.
    assert settings.database_url == "sqlite:///insider.db"
    assert settings.redis_url == ""
    assert settings.redis_prefix == "insider"
    assert settings.redis_ttl_s == 7 * 86400
    assert settings.webhook_url == ""
    assert settings.webhook_auth_key == ""
    assert settings.webhook_timeout_s == 10
    assert settings.batch_size == 2
    assert settings.send_interval_s == 120
    assert settings.send_concurrency == 8
    assert settings.content_max_length == 160
    assert settings.autostart is True
    assert settings.max_attempts == 5
    assert settings.retry_backoff_s == 30
    assert settings.retry_backoff_max_s == 3600
    assert settings.shutdown_timeout_s == 10
    assert settings.api_token == ""
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.log_level == "info"
    assert settings.log_format == "auto"
    assert settings.allowed_hosts == ()  # the listen address and the local names (insider.web.guard)
    assert settings.http_header_timeout_s == 5
    assert settings.http_body_timeout_s == 10


def test_the_defaults_file_is_the_one_in_the_source_tree() -> None:
    assert default_config_file().is_file()
    # Without an explicit defaults file the loader finds the same one.
    assert load_settings({}, env_file=None) == load({})


def test_environment_beats_dotenv_beats_defaults(tmp_path: Path) -> None:
    env_file = write(
        tmp_path / ".env",
        {"INSIDER_BATCH_SIZE": "5", "INSIDER_SEND_INTERVAL": "30s", "OTHER_TOOL_SETTING": "ignored"},
    )

    settings = load({"INSIDER_BATCH_SIZE": "7", "PATH": "/usr/bin"}, env_file=env_file)

    assert settings.batch_size == 7  # environment over .env
    assert settings.send_interval_s == 30  # .env over defaults
    assert settings.send_concurrency == 8  # defaults


def test_a_missing_dotenv_file_is_fine(tmp_path: Path) -> None:
    assert load({}, env_file=tmp_path / "absent.env").batch_size == 2


def test_the_config_file_variable_chooses_the_defaults_file(tmp_path: Path) -> None:
    defaults = default_config_file().read_text(encoding="utf-8")
    custom = tmp_path / "custom.env"
    custom.write_text(defaults.replace("INSIDER_BATCH_SIZE=2", "INSIDER_BATCH_SIZE=3"), encoding="utf-8")

    settings = load_settings({"INSIDER_CONFIG_FILE": str(custom)}, env_file=None)

    assert settings.batch_size == 3


def test_a_missing_defaults_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"INSIDER_CONFIG_FILE": str(tmp_path / "nope.env")}, env_file=None)
    assert str(err.value).startswith("INSIDER_CONFIG_FILE:")


def test_a_setting_missing_from_the_defaults_file_is_named(tmp_path: Path) -> None:
    lines = default_config_file().read_text(encoding="utf-8").splitlines()
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(x for x in lines if not x.startswith("INSIDER_PORT=")), encoding="utf-8")

    with pytest.raises(ConfigError) as err:
        load_settings({}, env_file=None, defaults_file=partial)
    assert str(err.value).startswith("INSIDER_PORT:")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("120", 120.0), ("0.5", 0.5), ("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("7d", 604800.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert load({"INSIDER_SEND_INTERVAL": text}).send_interval_s == seconds


def test_a_zero_interval_means_drain_mode() -> None:
    assert load({"INSIDER_SEND_INTERVAL": "0"}).send_interval_s == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INSIDER_BATCH_SIZE", "abc"),
        ("INSIDER_BATCH_SIZE", "0"),
        ("INSIDER_SEND_INTERVAL", "soon"),
        ("INSIDER_SEND_INTERVAL", "-5s"),
        ("INSIDER_SEND_INTERVAL", "5 minutes"),
        ("INSIDER_SEND_INTERVAL", ""),
        ("INSIDER_PORT", "70000"),
        ("INSIDER_PORT", "-1"),
        ("INSIDER_LOG_LEVEL", "loud"),
        ("INSIDER_LOG_FORMAT", "xml"),
        ("INSIDER_AUTOSTART", "maybe"),
        ("INSIDER_WEBHOOK_TIMEOUT", "0"),
        ("INSIDER_REDIS_TTL", "500ms"),
        ("INSIDER_WEBHOOK_URL", "ftp://provider.test/"),
        ("INSIDER_DATABASE_URL", "mysql://db/insider"),
        ("INSIDER_DATABASE_URL", "sqlite://host/insider.db"),
        ("INSIDER_DATABASE_URL", "sqlite:///"),
        ("INSIDER_DATABASE_URL", "sqlite:insider.db"),
        ("INSIDER_DATABASE_URL", "sqlite:///insider.db?mode=ro"),
        ("INSIDER_DATABASE_URL", ""),
        ("INSIDER_REDIS_URL", "http://cache:6379"),
        ("INSIDER_SEND_CONCURRENCY", "1.5"),
        # Sent as a header: a line break would let it write headers of its own.
        ("INSIDER_WEBHOOK_AUTH_KEY", "key\r\nX-Injected: yes"),
        ("INSIDER_WEBHOOK_AUTH_KEY", "key\x00"),
        ("INSIDER_HTTP_HEADER_TIMEOUT", "0"),
        ("INSIDER_HTTP_HEADER_TIMEOUT", "slow"),
        ("INSIDER_HTTP_BODY_TIMEOUT", "-1s"),
        ("INSIDER_ALLOWED_HOSTS", "example.com:8080"),
        ("INSIDER_DEFAULT_REGION", "XX"),
        ("INSIDER_DEFAULT_REGION", "Turkey"),
        ("INSIDER_MAX_SEGMENTS", "-1"),
        ("INSIDER_MAX_SEGMENTS", "256"),
        ("INSIDER_SEND_ORDER", "random"),
    ],
)
def test_a_bad_value_is_named_in_the_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({name: value})
    assert str(err.value).startswith(f"{name}: ")


@pytest.mark.parametrize(
    "database_url",
    [
        "sqlite:///insider.db",
        "sqlite:///data/insider.db",
        "sqlite:////var/lib/insider/insider.db",
        "sqlite:///:memory:",
        "postgresql://app:pw@db:5432/insider",
        "postgres://db/insider",
    ],
)
def test_database_urls_of_sqlite_and_postgresql_are_accepted(database_url: str) -> None:
    assert load({"INSIDER_DATABASE_URL": database_url}).database_url == database_url


def test_message_settings() -> None:
    settings = load({"INSIDER_DEFAULT_REGION": " tr ", "INSIDER_MAX_SEGMENTS": "3", "INSIDER_SEND_ORDER": "NEWEST"})
    assert (settings.default_region, settings.max_segments, settings.send_order) == ("TR", 3, "newest")
    defaults = load({})
    assert (defaults.default_region, defaults.max_segments, defaults.send_order) == ("", 0, "oldest")


def test_empty_redis_and_webhook_urls_mean_the_embedded_adapters() -> None:
    settings = load({"INSIDER_REDIS_URL": "", "INSIDER_WEBHOOK_URL": " "})
    assert (settings.redis_url, settings.webhook_url) == ("", "")


def test_a_bad_value_in_dotenv_is_named_too(tmp_path: Path) -> None:
    env_file = write(tmp_path / ".env", {"INSIDER_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError) as err:
        load({}, env_file=env_file)
    assert str(err.value).startswith("INSIDER_BATCH_SIZE: ")


@pytest.mark.parametrize("where", ["environment", "dotenv"])
def test_an_unknown_setting_is_an_error(where: str, tmp_path: Path) -> None:
    foo = {"INSIDER_FOO": "1"}
    with pytest.raises(ConfigError) as err:
        if where == "environment":
            load(foo)
        else:
            load({}, env_file=write(tmp_path / ".env", foo))
    assert str(err.value).startswith("INSIDER_FOO: ")


@pytest.mark.parametrize("value", ["lean", "aiohttp", "curl", ""])
@pytest.mark.parametrize("where", ["environment", "dotenv"])
def test_the_removed_webhook_client_setting_is_ignored_whatever_its_value(
    where: str, value: str, tmp_path: Path
) -> None:
    old = {"INSIDER_WEBHOOK_CLIENT": value}
    settings = load(old) if where == "environment" else load({}, env_file=write(tmp_path / ".env", old))

    assert settings.ignored == ("INSIDER_WEBHOOK_CLIENT",)  # named in a warning at start-up
    assert not hasattr(settings, "webhook_client")
    assert load({}).ignored == ()


@pytest.mark.parametrize("where", ["environment", "dotenv"])
def test_the_test_suites_own_variables_are_ignored(where: str, tmp_path: Path) -> None:
    # README (Configuration): "Variables named INSIDER_TEST_* belong to the test suite and are ignored."
    own = {"INSIDER_TEST_REQUIRE_SERVICES": "1", "INSIDER_TEST_DATABASE_URL": "postgresql://x/y", "INSIDER_TEST_": "?"}
    settings = load(own) if where == "environment" else load({}, env_file=write(tmp_path / ".env", own))
    assert settings == load({})


def test_only_the_test_prefix_is_ignored() -> None:
    with pytest.raises(ConfigError) as err:
        load({"INSIDER_TESTING": "1"})
    assert str(err.value).startswith("INSIDER_TESTING: unknown setting")


def test_backoff_max_below_backoff_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load({"INSIDER_RETRY_BACKOFF": "1m", "INSIDER_RETRY_BACKOFF_MAX": "30s"})
    assert str(err.value).startswith("INSIDER_RETRY_BACKOFF_MAX: ")


def test_an_error_about_a_url_does_not_echo_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        load({"INSIDER_DATABASE_URL": "mysql://app:hunter2@db/insider"})
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql://app:hunter2@db:5432/insider",
        "postgresql://app:hunter2@db1:5432,db2:5432/insider",
        "postgresql://app@db/insider?sslmode=require&password=hunter2",
        "postgres://db/insider?password=hunter2",
    ],
)
def test_repr_never_shows_the_auth_key_or_a_password(database_url: str) -> None:
    settings = load(
        {
            "INSIDER_DATABASE_URL": database_url,
            "INSIDER_REDIS_URL": "redis://:r3dis-pass@cache:6379/0",
            "INSIDER_WEBHOOK_URL": "https://provider.test/hook",
            "INSIDER_WEBHOOK_AUTH_KEY": "s3cret-auth-key",
        }
    )

    for text in (repr(settings), str(settings), f"{settings!r}", repr([settings])):
        assert "s3cret-auth-key" not in text
        assert "hunter2" not in text
        assert "r3dis-pass" not in text
    assert "webhook_auth_key='***'" in repr(settings)
    assert "batch_size=2" in repr(settings)  # the rest is still there to read
    assert settings.database_url == database_url  # masked in repr only


def test_repr_of_a_url_without_password_is_unchanged() -> None:
    settings = load({})
    assert "database_url='sqlite:///insider.db'" in repr(settings)
    assert "webhook_auth_key=''" in repr(settings)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://h/db?password=pw&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("sqlite:///insider.db", "sqlite:///insider.db"),
        ("sqlite:////var/lib/insider.db", "sqlite:////var/lib/insider.db"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("batch_size", "concurrency", "timeout", "lease_s"),
    [
        ("2", "8", "10s", 1 * 10 + 30),  # one wave
        ("10", "3", "10s", 4 * 10 + 30),  # ceil(10 / 3) waves
        ("9", "3", "5s", 3 * 5 + 30),
        ("1", "1", "500ms", 0.5 + 30),
    ],
)
def test_lease_covers_every_wave_of_a_batch(batch_size: str, concurrency: str, timeout: str, lease_s: float) -> None:
    settings = load(
        {
            "INSIDER_BATCH_SIZE": batch_size,
            "INSIDER_SEND_CONCURRENCY": concurrency,
            "INSIDER_WEBHOOK_TIMEOUT": timeout,
        }
    )
    assert settings.lease_s == pytest.approx(lease_s)


@pytest.mark.parametrize(("batch_size", "concurrency", "lease_s"), [("2", "8", 10 + 30), ("10", "3", 7 * 10 + 30)])
def test_lease_in_drain_mode_covers_two_batches_sharing_the_bound(
    batch_size: str, concurrency: str, lease_s: float
) -> None:
    # README: ceil(2 x batch size / concurrency) x INSIDER_WEBHOOK_TIMEOUT + 30 s when INSIDER_SEND_INTERVAL=0.
    settings = load(
        {
            "INSIDER_SEND_INTERVAL": "0",
            "INSIDER_BATCH_SIZE": batch_size,
            "INSIDER_SEND_CONCURRENCY": concurrency,
            "INSIDER_WEBHOOK_TIMEOUT": "10s",
        }
    )
    assert settings.lease_s == pytest.approx(lease_s)


def test_settings_can_be_built_directly_for_embedding() -> None:
    settings = replace(load({}), batch_size=4, send_interval_s=1.0)
    assert settings.batch_size == 4
    assert settings.send_interval_s == 1.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (120, "2m"),
        (30, "30s"),
        (3600, "1h"),
        (7 * 86400, "7d"),
        (0.5, "500ms"),
        (0.3, "300ms"),
        (1.5, "1.5s"),
    ],
)
def test_format_duration_writes_what_parse_duration_reads(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def _assignments(path: Path) -> dict[str, str | None]:
    return {k: v for k, v in dotenv_values(path).items() if k.startswith("INSIDER_")}


def test_every_setting_is_in_the_defaults_file() -> None:
    defaults = _assignments(default_config_file())
    assert sorted(defaults) == sorted(v for v in variable_names() if v != "INSIDER_CONFIG_FILE")


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = ROOT / ".env.example"
    # Copied to .env as it is, it changes nothing.
    assert _assignments(example) == _assignments(default_config_file())
    assert load({}, env_file=example) == load({})
    # Each variable, INSIDER_CONFIG_FILE included, is explained in a comment above it.
    text = example.read_text(encoding="utf-8")
    for name in variable_names():
        assert re.search(rf"^# .*\n(# .*\n)*#? ?{name}=", text, re.MULTILINE), f"{name} has no comment in .env.example"


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in variable_names() if f"`{name}`" not in readme]
    assert missing == [], f"README.md does not document {missing}"


def test_a_refused_auth_key_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        load({"INSIDER_WEBHOOK_AUTH_KEY": "s3cret\nline"})
    assert "s3cret" not in str(err.value)
    assert "line breaks" in str(err.value)


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("", ()),
        ("*", ("*",)),
        ("SMS.Example.com., 10.0.0.5, [::1], .example.org", ("sms.example.com", "10.0.0.5", "::1", ".example.org")),
        ("a.example, a.example", ("a.example",)),
    ],
)
def test_allowed_hosts_are_read_as_a_comma_list(text: str, hosts: tuple[str, ...]) -> None:
    assert load({"INSIDER_ALLOWED_HOSTS": text}).allowed_hosts == hosts


def test_http_timeouts_take_units() -> None:
    settings = load({"INSIDER_HTTP_HEADER_TIMEOUT": "500ms", "INSIDER_HTTP_BODY_TIMEOUT": "1m"})
    assert (settings.http_header_timeout_s, settings.http_body_timeout_s) == (0.5, 60)
