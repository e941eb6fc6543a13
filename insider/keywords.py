"""Opt-out and opt-in keywords, matched as carriers match them: the whole reply, in any case, Turkish i's alike."""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

# What a reply of one of these words asks for (the ``action`` of a stored reply).
DEFAULT_OPT_OUT: Final = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "İPTAL", "IPTAL", "RET")
DEFAULT_OPT_IN: Final = ("START", "UNSTOP", "BAŞLA", "BASLA")
# A keyword is a word or a few, never a sentence.
MAX_KEYWORD_LENGTH: Final = 40


class Action(enum.StrEnum):
    """What a reply asked for: to receive no more messages, or to receive them again."""

    OPT_OUT = "opt-out"
    OPT_IN = "opt-in"


_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Turkish has four i's: dotted and dotless, each in two cases. A reply typed on a Turkish
# keyboard ("ıptal", "İPTAL") means the keyword as much as one typed elsewhere ("iptal").
# Python's casefold turns İ into i + a combining dot above, so the dots go first and last.
_TURKISH_I: Final = str.maketrans({"\u0130": "i", "\u0131": "i", "I": "i"})
_COMBINING_DOT_ABOVE: Final = "\u0307"


def fold(text: str) -> str:
    """``text`` as keywords are compared: NFC, trimmed (of white space and invisible format characters such
    as a zero-width space or a byte order mark), runs of white space as one space, case folded, the Turkish
    dotted and dotless i (İ, I, ı, i) as one letter."""
    composed = unicodedata.normalize("NFC", text)  # a decomposed İ (I + U+0307) is İ
    folded = _SPACES.sub(" ", _trimmed(composed)).translate(_TURKISH_I).casefold()
    return folded.replace("i" + _COMBINING_DOT_ABOVE, "i")


def _invisible(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) == "Cf"


def _trimmed(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def parse_keywords(text: str) -> tuple[str, ...]:
    """A comma list of keywords (INSIDER_OPT_OUT_KEYWORDS, INSIDER_OPT_IN_KEYWORDS), each trimmed, in order,
    each once; empty: none. ValueError says what is wrong."""
    words: dict[str, None] = {}
    for raw in text.split(","):
        word = _SPACES.sub(" ", raw.strip())
        if not word:
            continue
        if _CONTROL.search(word):
            raise ValueError(f"a keyword must not contain control characters, got {word!r}")
        if len(word) > MAX_KEYWORD_LENGTH:
            raise ValueError(f"a keyword has at most {MAX_KEYWORD_LENGTH} characters, got {word[:50]!r}")
        words[word] = None
    return tuple(words)


@dataclass(frozen=True, slots=True)
class Keywords:
    """The opt-out and opt-in keywords of a deployment; :meth:`action` reads a reply with them.

    A reply matches a keyword when, trimmed of white space (and invisible format characters) at both ends,
    it is that keyword
    and nothing else, in any case, with any of the Turkish i's: ``stop``, `` Stop ``,
    ``ıptal`` and ``İPTAL`` match; ``stop please`` and ``STOP.`` do not (as Twilio reads them).
    """

    opt_out: tuple[str, ...] = DEFAULT_OPT_OUT
    opt_in: tuple[str, ...] = DEFAULT_OPT_IN
    _folded: dict[str, Action] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        out, back = _folded(self.opt_out), _folded(self.opt_in)
        if out & back:
            raise ValueError(f"a word cannot both opt out and opt in: {', '.join(sorted(out & back))}")
        folded = dict.fromkeys(out, Action.OPT_OUT) | dict.fromkeys(back, Action.OPT_IN)
        object.__setattr__(self, "_folded", folded)  # frozen: set once, here

    def action(self, text: str) -> Action | None:
        """What ``text`` asks for, or None when it is not one of the keywords."""
        return self._folded.get(fold(text))


def _folded(words: Iterable[str]) -> frozenset[str]:
    return frozenset(fold(word) for word in words)
