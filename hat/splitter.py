"""Text -> words. The only place that decides where words begin.

Both splitters return words as UTF-8 ``bytes`` whose concatenation is the input exactly, never
cut a UTF-8 character (unless ``max_word_bytes`` < 4 is smaller than the character, as in
hat-splitter's ``split_with_limit``), never return an empty word, and are prefix-consistent: splitting a prefix
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


def _first_extender_after_space(text: str, start: int, end: int) -> int:
    """Index of the first Mn/Me/Cf character that follows whitespace in text[start:end]
    (``end`` if none): text[start:index] is then free of that pattern."""
    for m in _SPACE_THEN_NON_ASCII.finditer(text, start, end):
        if unicodedata.category(m.group()[1]) in ("Mn", "Me", "Cf"):
            return m.start() + 1
    return end


class HATWordSplitter:
    """Aleph Alpha's reference splitter (PyPI ``hat-splitter``), as in the TFree-HAT models.

    UAX#29 word boundaries, split after punctuation and at camelCase; a single leading space
    joins the next word, punctuation joins the previous one; words are capped at
    ``max_word_bytes`` on character boundaries.
    """

    LOWERCASE_RUNS_JOIN = True  # UAX#29 keeps letters together; camelCase splits before upper

    def __init__(self, max_word_bytes: int = 100) -> None:
        from hat_splitter import HATSplitter

        self.max_word_bytes = _check_cap(max_word_bytes)
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
        construction; a long word looks ahead only over text that appends no mark after
        whitespace, where hat-splitter is prefix-consistent itself). Needed only where a combining mark / format character follows
        whitespace: there hat-splitter can merge words that a shorter prefix kept apart
        (``"a \t"`` -> a | " " | "\t", but ``"a \t\u0301"`` -> a | " \t\u0301")."""
        starts = [0]  # character index where each word starts
        i = 1  # the next character to decide: does it start a word?
        while i < len(text):
            context = starts[-2] if len(starts) > 1 else 0  # the last complete word + current
            end = i + 1  # decide character i from text[context : i + 1] alone
            # A long current word (a run of 1 MB of dashes or digits) would cost one split of
            # all of it per character: quadratic, hours. hat-splitter only moves earlier
            # boundaries when a mark is appended after whitespace; where text[i + 1 : ahead]
            # appends none, one split of text[context:ahead] decides characters i..ahead-1
            # exactly as one split per character would. Short words keep the per-character step.
            ahead = min(len(text), i + (i - starts[-1]))
            ahead = min(ahead, _first_extender_after_space(text, i, ahead))
            if ahead > i + 64:
                end = ahead
            pos = context
            for word in self._splitter.split(text[context:end]):
                if pos >= i:  # the first word start at or after i
                    break
                pos += len(word)
            if pos < end:
                starts.append(pos)  # character pos begins a word (for end = i + 1: pos = i)
                i = pos + 1
            else:
                i = end
        starts.append(len(text))
        words = [text[a:b].encode("utf-8") for a, b in zip(starts, starts[1:])]
        return [piece for word in words for piece in cap_word(word, self.max_word_bytes)]


class WhitespaceSplitter:
    """The HAT paper's main splitter: a word is a run of non-space characters plus the
    whitespace after it (leading whitespace of a document is a word of its own)."""

    _word = re.compile(r"\s+|\S+\s*")
    LOWERCASE_RUNS_JOIN = True  # letters are not spaces

    def __init__(self, max_word_bytes: int = 100) -> None:
        self.max_word_bytes = _check_cap(max_word_bytes)

    def split(self, text: str) -> list[bytes]:
        words: list[bytes] = []
        for match in self._word.finditer(text):
            words.extend(cap_word(match.group().encode("utf-8"), self.max_word_bytes))
        return words


def _check_cap(max_word_bytes: int) -> int:
    # a cap of 0 would make cap_word loop forever and hat-splitter panic (not an Exception)
    if not isinstance(max_word_bytes, int) or max_word_bytes < 1:
        raise ValueError(f"max_word_bytes must be >= 1, got {max_word_bytes!r}")
    return max_word_bytes


def cap_word(word: bytes, max_bytes: int) -> list[bytes]:
    """Cut a word into pieces of at most ``max_bytes``, only at UTF-8 character starts."""
    if max_bytes < 1:  # no piece could hold a byte: the loop below would never end
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
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
