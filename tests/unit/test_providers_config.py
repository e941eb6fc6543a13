"""The providers file: the contract's keys read, and every mistake one line naming file, line and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from insider.providers.config import Breaker, Defaults, ProvidersFileError, load_providers_file, parse_providers

CONTRACT = """\
[[providers]]
name = "alpha"              # letters, digits, '-' and '_'
kind = "webhook"            # or "smpp"
url = "https://sms.example/send"
auth_key = "k-alpha"        # sent as x-ins-auth-key, as today
timeout = "10s"
concurrency = 16
rate = 50                   # messages per second, deployment-wide (optional)
price = 0.012               # per segment (optional)
breaker_failures = 5        # consecutive failures that open the breaker
breaker_cooldown = "30s"    # open -> half-open

[[providers]]
name = "carrier"
kind = "smpp"
host = "smsc.example"
port = 2775
system_id = "insider"
password = "secret"
source = "INSIDER"          # source address
window = 10                 # outstanding submit_sm

[[routes]]
match = { prefix = ["+90"] }  # also region = ["TR"], category = "commercial"
strategy = "failover"         # failover | weighted | cheapest
providers = ["alpha", "carrier"]

[[routes]]                    # a route without match is the default; the first match wins
strategy = "weighted"
providers = ["alpha", "carrier"]
weights = [80, 20]
"""


def test_the_contracts_example_is_read_whole() -> None:
    config = parse_providers(CONTRACT, "providers.toml", Defaults(timeout_s=7.0, concurrency=4))
    alpha, carrier = config.providers
    assert (alpha.name, alpha.kind, alpha.url, alpha.auth_key) == (
        "alpha",
        "webhook",
        "https://sms.example/send",
        "k-alpha",
    )
    assert (alpha.timeout_s, alpha.concurrency, alpha.rate, alpha.price) == (10.0, 16, 50.0, 0.012)
    assert alpha.breaker == Breaker(failures=5, cooldown_s=30.0)
    assert (carrier.kind, carrier.host, carrier.port, carrier.system_id, carrier.source, carrier.window) == (
        "smpp",
        "smsc.example",
        2775,
        "insider",
        "INSIDER",
        10,
    )
    assert (carrier.timeout_s, carrier.concurrency, carrier.rate, carrier.price) == (7.0, 4, None, None)
    first, default = config.routes
    assert (first.prefixes, first.strategy, first.providers, first.is_default) == (
        ("+90",),
        "failover",
        ("alpha", "carrier"),
        False,
    )
    assert (default.strategy, default.weights, default.is_default) == ("weighted", (80, 20), True)
    assert "secret" not in repr(config) and "k-alpha" not in repr(config)


def test_without_a_default_route_the_rest_go_to_every_provider_in_order() -> None:
    config = parse_providers(CONTRACT.split("[[routes]]                    #")[0], "p.toml")
    assert config.routes[-1].is_default and config.routes[-1].providers == ("alpha", "carrier")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("rate = 50 ", "rate = 0 "), "p.toml:8: providers[0].rate: expected messages per second, a number > 0"),
        (("rate = 50 ", 'rate = "fast" '), "p.toml:8: providers[0].rate: expected messages per second"),
        (('timeout = "10s"', 'timeout = "10 parsecs"'), "p.toml:6: providers[0].timeout: expected seconds"),
        (("concurrency = 16", "concurrency = 0"), "p.toml:7: providers[0].concurrency: expected a whole number"),
        (('name = "alpha" ', 'name = "al pha" '), "p.toml:2: providers[0].name: a name of letters"),
        (('kind = "webhook"', 'kind = "carrier-pigeon"'), "p.toml:3: providers[0].kind: expected one of webhook, smpp"),
        (('url = "https://sms.example/send"', 'url = "ftp://x"'), "p.toml:4: providers[0].url: expected an http"),
        (
            ('auth_key = "k-alpha"', 'authkey = "k"'),
            "p.toml:5: providers[0].authkey: unknown key (did you mean 'auth_key'?)",
        ),
        (("window = 10 ", "window = 0 "), "p.toml:21: providers[1].window: expected a whole number from 1 to 1000"),
        (("port = 2775", "port = 70000"), "p.toml:17: providers[1].port: expected a whole number from 1 to 65535"),
        (
            ('source = "INSIDER"', 'source = "A VERY LONG SENDER NAME"'),
            "p.toml:20: providers[1].source: expected up to 11",
        ),
        (
            ('name = "carrier"', 'name = "alpha"'),
            "p.toml:14: providers[1].name: 'alpha' is the name of an earlier provider",
        ),
        (('strategy = "failover"', 'strategy = "random"'), "p.toml:25: routes[0].strategy: expected one of"),
        (
            ('providers = ["alpha", "carrier"]\n\n', 'providers = ["alpha", "carier"]\n\n'),
            "routes[0].providers: no provider is named 'carier' (did you mean 'carrier'?)",
        ),
        (("weights = [80, 20]", "weights = [80]"), "p.toml:31: routes[1].weights: expected 2 whole numbers"),
        (
            ('match = { prefix = ["+90"] }', 'match = { prefix = ["90"] }'),
            "p.toml:24: routes[0].match: prefix: expected E.164 prefixes",
        ),
        (
            ('match = { prefix = ["+90"] }', 'match = { region = ["XX"] }'),
            "p.toml:24: routes[0].match: region: expected ISO 3166",
        ),
        (
            ('match = { prefix = ["+90"] }', 'match = { category = "spam" }'),
            "p.toml:24: routes[0].match: category: expected",
        ),
        (
            ('match = { prefix = ["+90"] }', "match = { priority = 12 }"),
            "p.toml:24: routes[0].match: priority: expected",
        ),
        (
            ('match = { prefix = ["+90"] }', 'match = { destination = "+90" }'),
            "p.toml:24: routes[0].match: destination: unknown key",
        ),
        (("concurrency = 16", "concurrency = 16\nconcurrency = 17"), "p.toml:8: not valid TOML"),
        (("window = 10 ", "window = = 10 "), "p.toml:21: not valid TOML"),
        (("window = 10 ", "windw = 10 "), "p.toml:21: providers[1].windw: unknown key (did you mean 'window'?)"),
        # The value as the file spells it, not as Python would.
        (
            ("concurrency = 16", "concurrency = true"),
            "p.toml:7: providers[0].concurrency: expected a whole number from 1 to 10000, got true",
        ),
        (
            ('url = "https://sms.example/send"', 'url = "ftp://x"'),
            'providers[0].url: expected an http:// or https:// URL, got "ftp://x"',
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_the_line_and_the_key(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in CONTRACT
    with pytest.raises(ProvidersFileError) as caught:
        parse_providers(CONTRACT.replace(old, new, 1), "p.toml")
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message, message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "p.toml:1: providers: at least one [[providers]] table is needed"),
        ('name = "x"', "p.toml:1: name: unknown key"),
        (
            '[[providers]]\nname = "a"\nurl = "https://x"\n[[routes]]\nstrategy = "weighted"\nproviders = ["a"]',
            "routes[0].strategy: a weighted route needs weights",
        ),
        (
            '[[providers]]\nname = "a"\nurl = "https://x"\n[[routes]]\nproviders = ["a"]\nweights = [1]',
            "routes[0].weights: weights go with strategy",
        ),
        (
            '[[providers]]\nname = "a"\nurl = "https://x"\nbreaker_ratio = 1.5',
            "p.toml:4: providers[0].breaker_ratio: expected a share",
        ),
        ('[[providers]]\nname = "a"\nkind = "smpp"\nhost = "h"\nsource = "S"', "providers[0]: system_id is needed"),
    ],
)
def test_small_files_with_mistakes(text: str, expected: str) -> None:
    with pytest.raises(ProvidersFileError) as caught:
        parse_providers(text, "p.toml")
    assert expected in str(caught.value), str(caught.value)


def test_an_unreadable_or_undecodable_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ProvidersFileError, match=r"missing\.toml: cannot read it"):
        load_providers_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[[providers]]\nname = "\xff"\n')
    with pytest.raises(ProvidersFileError, match=r"bad\.toml:2: not UTF-8 text"):
        load_providers_file(bad)


def test_the_readmes_example_is_a_valid_providers_file() -> None:
    from tests.readme_text import section

    [example] = re.findall(r"^```toml\n(.*?)^```", section("Providers"), flags=re.M | re.S)
    config = parse_providers(example, "README.md")
    assert [p.name for p in config.providers] == ["alpha", "carrier"]
    assert [r.strategy for r in config.routes] == ["failover", "weighted"]
