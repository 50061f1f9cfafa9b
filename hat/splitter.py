"""Text -> words. The only place that decides where words begin.

Both splitters return words as UTF-8 ``bytes`` whose concatenation is the input exactly, never
cut a UTF-8 character, never return an empty word, and are prefix-consistent: splitting a prefix
of a text agrees with splitting the whole text on every word but the prefix's last. The model's
causality rests on that last property (see tests/test_splitter.py).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Protocol

EOD = 192  # end-of-document byte: 0xC0 never occurs in UTF-8; starts every document in a pack
PAD = 255  # padding byte: 0xFF never occurs in UTF-8; padding is never a target


class Splitter(Protocol):
    """Splits a text into words (UTF-8 bytes each)."""

    max_word_bytes: int

    def split(self, text: str) -> list[bytes]: ...


# A splitter class may declare ``LOWERCASE_RUNS_JOIN = True``: an ASCII lowercase letter after
# another never starts a word (below ``max_word_bytes``), nor moves an earlier start. Generation
# then skips re-splitting at those bytes (most of English text; ``WordTracker``).


_SPACE_THEN_NON_ASCII = re.compile(r"\s[^\x00-\x7f]")


def _extender_after_space(text: str) -> bool:
    """Does a combining mark or format character (Unicode Mn, Me, Cf) follow whitespace?"""
    return any(
        unicodedata.category(m.group()[1]) in ("Mn", "Me", "Cf")
        for m in _SPACE_THEN_NON_ASCII.finditer(text)
    )


class HATWordSplitter:
    """Aleph Alpha's reference splitter (PyPI ``hat-splitter``), as in the TFree-HAT models.

    UAX#29 word boundaries, split after punctuation and at camelCase; a single leading space
    joins the next word, punctuation joins the previous one; words are capped at
    ``max_word_bytes`` on character boundaries.
    """

    LOWERCASE_RUNS_JOIN = True  # UAX#29 keeps letters together; camelCase splits before upper

    def __init__(self, max_word_bytes: int = 100) -> None:
        from hat_splitter import HATSplitter

        self.max_word_bytes = max_word_bytes
        self._splitter = HATSplitter()

    def __getstate__(self) -> dict:
        # the Rust splitter does not pickle; DataLoader workers started by spawn or forkserver
        # (macOS; Python 3.14's default on Linux) receive the dataset pickled: rebuild it there
        return {"max_word_bytes": self.max_word_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_word_bytes"])

    def split(self, text: str) -> list[bytes]:
        if not text:
            return []
        if not _extender_after_space(text):
            return self._splitter.split_with_limit(text, self.max_word_bytes)
        return self._split_online(text)

    def _split_online(self, text: str) -> list[bytes]:
        """Decide each word start from the text before it only (prefix-consistent by
        construction). Needed only where a combining mark / format character follows
        whitespace: there hat-splitter can merge words that a shorter prefix kept apart
        (``"a \t"`` -> a | " " | "\t", but ``"a \t\u0301"`` -> a | " \t\u0301")."""
        starts = [0]  # character index where each word starts
        for i in range(1, len(text)):
            context = starts[-2] if len(starts) > 1 else 0  # the last complete word + current
            words = self._splitter.split(text[context : i + 1])
            if len(words[-1]) == 1 and sum(map(len, words)) == i + 1 - context:
                starts.append(i)  # the new character begins a word of its own
        starts.append(len(text))
        words = [text[a:b].encode("utf-8") for a, b in zip(starts, starts[1:])]
        return [piece for word in words for piece in cap_word(word, self.max_word_bytes)]


class WhitespaceSplitter:
    """The HAT paper's main splitter: a word is a run of non-space characters plus the
    whitespace after it (leading whitespace of a document is a word of its own)."""

    _word = re.compile(r"\s+|\S+\s*")
    LOWERCASE_RUNS_JOIN = True  # letters are not spaces

    def __init__(self, max_word_bytes: int = 100) -> None:
        self.max_word_bytes = max_word_bytes

    def split(self, text: str) -> list[bytes]:
        words: list[bytes] = []
        for match in self._word.finditer(text):
            words.extend(cap_word(match.group().encode("utf-8"), self.max_word_bytes))
        return words


def cap_word(word: bytes, max_bytes: int) -> list[bytes]:
    """Cut a word into pieces of at most ``max_bytes``, only at UTF-8 character starts."""
    pieces = []
    while len(word) > max_bytes:
        cut = max_bytes
        while cut > 0 and (word[cut] & 0xC0) == 0x80:  # continuation byte: move back
            cut -= 1
        cut = cut or max_bytes  # a character longer than max_bytes (max_bytes < 4) is cut anyway
        pieces.append(word[:cut])
        word = word[cut:]
    return pieces + [word] if word else pieces


def make_splitter(name: str, max_word_bytes: int = 100) -> Splitter:
    """Splitter by config name: "hat" (default) or "whitespace"."""
    if name == "hat":
        return HATWordSplitter(max_word_bytes)
    if name == "whitespace":
        return WhitespaceSplitter(max_word_bytes)
    raise ValueError(f"unknown splitter {name!r}; choose 'hat' or 'whitespace'")


def check_encodable(text: str) -> str:
    """``text`` itself, if it has a UTF-8 encoding: a lone surrogate (e.g. from
    ``bytes.decode(errors="surrogateescape")`` or a JSON ``"\\ud800"``) is a clear error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text has a lone surrogate {text[err.start]!r} at index {err.start}, which is not "
            "valid Unicode and has no UTF-8 bytes; clean it first, e.g. "
            "text.encode('utf-8', errors='replace').decode('utf-8')"
        ) from None
    return text


def as_text(text: str | bytes) -> str:
    """Accept str or UTF-8 bytes; invalid UTF-8 is a clear error, never silently changed."""
    if isinstance(text, str):
        return check_encodable(text)
    if isinstance(text, bytes | bytearray):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"input is not valid UTF-8 (byte {err.start}: {bytes(text)[err.start : err.start + 4]!r}); "
                "decode it yourself, e.g. data.decode('utf-8', errors='replace')"
            ) from None
    raise TypeError(f"expected str or bytes, got {type(text).__name__}")
