"""Word boundaries during generation: ``word_starts`` (the rule) and ``WordTracker`` (the same,
incrementally, per byte)."""

from __future__ import annotations

from hat.generation.utf8 import UTF8_NEXT, incomplete_tail, utf8_advance
from hat.splitter import EOD, Splitter


def _boundaries(splitter: Splitter, data: bytes, offset: int) -> list[int]:
    """Start offsets of the words of ``data`` (valid UTF-8), shifted by ``offset``."""
    out, pos = [], offset
    for word in splitter.split(bytes(data).decode("utf-8")):
        out.append(pos)
        pos += len(word)
    return out


def word_starts(data: bytes, splitter: Splitter) -> list[int]:
    """THE rule for the words of a document being generated; returns word start offsets.

    ``data`` is the document: EOD, then text that is valid UTF-8 except maybe an incomplete last
    character. EOD is word 0. The complete text is split by the splitter, exactly as in training;
    trailing incomplete bytes belong to the last text word, or start the first one (a
    document's first text byte always starts a word). Used as-is by ``use_cache=False``;
    ``WordTracker`` computes the same incrementally.
    """
    if not data or data[0] != EOD:
        raise ValueError(f"a document must start with the EOD byte ({EOD})")
    end = len(data) - incomplete_tail(data[1:])
    starts = [0, *_boundaries(splitter, data[1:end], 1)]
    if len(starts) == 1 and len(data) > 1:
        starts.append(1)
    return starts


class WordTracker:
    """``word_starts`` of a growing document, updated per byte without re-splitting it all.

    When a character completes, only the last ``CONTEXT_WORDS`` finished words plus the current
    one are re-split; if that does not reproduce the known boundaries (the splitter looked
    further back), the whole text is re-split. A prefix-consistent splitter only ever adds
    starts; ``hat-splitter`` occasionally moves an earlier one (e.g. " \t" is two words, but
    " \t" + U+0301 is one), so ``push`` reports how many old starts survived and the caller
    rolls back what depended on the others. tests/test_generation.py checks the result equals
    ``word_starts`` byte by byte on adversarial text.
    """

    CONTEXT_WORDS = 3

    def __init__(self, splitter: Splitter, data: bytes) -> None:
        self.splitter = splitter
        self.lowercase_runs_join = getattr(splitter, "LOWERCASE_RUNS_JOIN", False)
        self.data = bytearray(data)
        self.starts = word_starts(bytes(data), splitter)
        self.state = utf8_advance(0, data[1:])

    def push(self, byte: int) -> tuple[int, int] | None:
        """Append one byte. None if the word starts are unchanged; else (how many old starts
        survive (a common prefix; the rest of ``starts`` is new), the first byte offset whose
        word changed)."""
        n = len(self.data)
        self.data.append(byte)
        self.state = UTF8_NEXT[self.state][byte]
        if self.state < 0:
            raise ValueError(f"byte {byte:#x} makes the document invalid UTF-8")
        if len(self.starts) == 1:  # first text byte of the document: always a new word
            self.starts.append(n)
            return 1, n
        if self.state != 0:  # inside a character: it joins the current word for now
            return None
        if (
            self.lowercase_runs_join
            and 0x61 <= byte <= 0x7A  # a-z after a-z, the word not at its size limit
            and 0x61 <= self.data[n - 1] <= 0x7A
            and n + 1 - self.starts[-1] <= self.splitter.max_word_bytes
        ):
            return None
        old, self.starts = self.starts, self._resplit()
        if self.starts == old:
            return None
        keep = 0
        while keep < min(len(old), len(self.starts)) and old[keep] == self.starts[keep]:
            keep += 1
        changed = min(x[keep] if keep < len(x) else n for x in (old, self.starts))
        return keep, changed

    def _resplit(self) -> list[int]:
        last = self.starts[-1]
        first = max(1, len(self.starts) - 1 - self.CONTEXT_WORDS)
        q = self.starts[first]
        bounds = _boundaries(self.splitter, self.data[q:], q)
        if [b for b in bounds if b <= last] == self.starts[first:]:
            return self.starts + [b for b in bounds if b > last]
        return [0, *_boundaries(self.splitter, self.data[1:], 1)]
