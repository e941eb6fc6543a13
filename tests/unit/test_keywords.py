"""Opt-out and opt-in keywords: the whole reply, any case, the Turkish i's alike; and their settings."""

from __future__ import annotations

import unicodedata

import pytest

from insider.config import ConfigError, Settings, default_config_file, load_settings
from insider.keywords import DEFAULT_OPT_IN, DEFAULT_OPT_OUT, Action, Keywords, fold, parse_keywords

KEYWORDS = Keywords()


def load(environ: dict[str, str]) -> Settings:
    return load_settings(environ, env_file=None, defaults_file=default_config_file())


@pytest.mark.parametrize(
    "reply",
    [
        "STOP",
        "stop",
        "Stop",
        "sToP",
        " STOP ",
        "\tstop\n",
        "\u00a0Stop\u00a0",  # a no-break space, as some handsets add
        "\ufeffSTOP",  # a byte order mark
        "STOP\u200b",  # a zero-width space
        "\u200eSTOP\r\n",  # a left-to-right mark, a line end
        "stopall",
        "Unsubscribe",
        "cancel",
        "End",
        "quit",
        "iptal",
        "İPTAL",
        "İptal",
        "ıptal",
        "IPTAL",
        "Iptal",
        "IPTAl",
        unicodedata.normalize("NFD", "İPTAL"),  # I + a combining dot above: NFC makes it İ
        "i\u0307ptal",  # what Python's lower() makes of İPTAL
        "ret",
        "RET",
        "Ret",
    ],
)
def test_an_opt_out_keyword_in_any_spelling_opts_out(reply: str) -> None:
    assert KEYWORDS.action(reply) is Action.OPT_OUT


@pytest.mark.parametrize(
    "reply", ["START", "start", " Start ", "unstop", "başla", "BAŞLA", "Başla", "Basla", "BASLA", "basla", "BAŞLa"]
)
def test_an_opt_in_keyword_in_any_spelling_opts_in(reply: str) -> None:
    assert KEYWORDS.action(reply) is Action.OPT_IN


def test_a_decomposed_s_cedilla_is_the_composed_one() -> None:
    assert KEYWORDS.action("Bas\u0327la") is Action.OPT_IN


@pytest.mark.parametrize(
    "reply",
    [
        "stop please",
        "please stop",
        "STOP.",  # punctuation is not the keyword (as Twilio reads it): documented in the README
        "STOP!",
        "S T O P",
        "stopp",
        "st op",
        "",
        "   ",
        "iptal et",
        "Evet",
        "STARTING",
        "başlat",
    ],
)
def test_anything_more_or_less_than_the_keyword_is_no_keyword(reply: str) -> None:
    assert KEYWORDS.action(reply) is None


def test_the_defaults_are_the_carriers_and_the_turkish_words() -> None:
    assert DEFAULT_OPT_OUT == ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "İPTAL", "IPTAL", "RET")
    assert DEFAULT_OPT_IN == ("START", "UNSTOP", "BAŞLA", "BASLA")
    settings = load({})
    assert (settings.opt_out_keywords, settings.opt_in_keywords) == (DEFAULT_OPT_OUT, DEFAULT_OPT_IN)
    assert (settings.opt_out_scope, settings.opt_out_reply, settings.opt_in_reply) == ("all", "", "")


def test_fold_is_how_words_compare() -> None:
    assert fold("  İPTAL ") == fold("ıptal") == fold("Iptal") == "iptal"
    assert fold("STOP   ALL") == "stop all"


def test_keyword_lists_are_trimmed_and_each_word_is_kept_once() -> None:
    assert parse_keywords(" stop, STOP ,, İptal,iptal , arrêt,stop ") == ("stop", "STOP", "İptal", "iptal", "arrêt")
    assert parse_keywords("") == ()
    assert parse_keywords(" , ") == ()


def test_settings_take_the_lists_and_the_replies() -> None:
    settings = load(
        {
            "INSIDER_OPT_OUT_KEYWORDS": "DUR, stop",
            "INSIDER_OPT_IN_KEYWORDS": "devam",
            "INSIDER_OPT_OUT_SCOPE": "Commercial",
            "INSIDER_OPT_OUT_REPLY": "You will get no more messages. Reply START to come back.",
            "INSIDER_OPT_IN_REPLY": "Welcome back.",
        }
    )
    assert settings.opt_out_keywords == ("DUR", "stop")
    assert settings.opt_in_keywords == ("devam",)
    assert settings.opt_out_scope == "commercial"
    assert settings.opt_out_reply.startswith("You will get")
    keywords = Keywords(settings.opt_out_keywords, settings.opt_in_keywords)
    assert keywords.action("dur") is Action.OPT_OUT
    assert keywords.action("İPTAL") is None  # the defaults are replaced, not added to
    assert keywords.action("DEVAM") is Action.OPT_IN


def test_empty_lists_turn_the_keywords_off() -> None:
    keywords = Keywords((), ())
    assert keywords.action("STOP") is None
    settings = load({"INSIDER_OPT_OUT_KEYWORDS": "", "INSIDER_OPT_IN_KEYWORDS": " "})
    assert settings.opt_out_keywords == settings.opt_in_keywords == ()


def test_a_word_in_both_lists_stops_the_start_up() -> None:
    with pytest.raises(ConfigError, match=r"^INSIDER_OPT_IN_KEYWORDS: a word cannot both opt out and opt in: iptal"):
        load({"INSIDER_OPT_IN_KEYWORDS": "START,ıptal"})
    with pytest.raises(ValueError, match="both opt out and opt in: stop"):
        Keywords(("STOP",), ("stop",))


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        ({"INSIDER_OPT_OUT_SCOPE": "everything"}, r"^INSIDER_OPT_OUT_SCOPE: expected one of all, commercial"),
        ({"INSIDER_OPT_OUT_KEYWORDS": "STOP," + "X" * 41}, r"^INSIDER_OPT_OUT_KEYWORDS: a keyword has at most 40"),
        ({"INSIDER_OPT_IN_KEYWORDS": "go\x01on"}, r"^INSIDER_OPT_IN_KEYWORDS: a keyword must not contain control"),
        ({"INSIDER_OPT_OUT_REPLY": "x" * 161}, r"^INSIDER_OPT_OUT_REPLY: content is 161 characters, over the limit"),
        (
            {"INSIDER_OPT_IN_REPLY": "ğ" * 80, "INSIDER_CONTENT_MAX_LENGTH": "1000", "INSIDER_MAX_SEGMENTS": "1"},
            r"^INSIDER_OPT_IN_REPLY: content takes 2 UCS-2 segments",
        ),
    ],
)
def test_bad_consent_settings_are_named(environ: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(environ)
