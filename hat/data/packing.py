"""Packing documents into fixed-size rows, lane by lane.

A document becomes a run of units (bytes for HAT, tokens for the BPE twin) that starts with the
end-of-document marker (EOD / BOS) and a parallel run of labels: the next unit of the same
document, and the marker again after its last unit (the model learns to end documents).

The global batch has ``global_rows`` rows; document j of the stream goes to lane
j % global_rows, and each lane packs its documents, in order, into consecutive rows of
``seq_len`` units; global batch k is row k of every lane. Rows are cut only at word boundaries
(HAT) so no word is split; a document that does not fit continues in the lane's next row (its
labels run on across the cut, so nothing is lost). When the next word does not fit, the rest of
the row is padding (PAD / PAD_ID, label -100; for HAT one padding word).

Each lane's rows depend only on that lane's documents, so a rank (or worker) that owns a subset
of lanes produces exactly its slice of the global batch, whatever the world size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hat.batching import IGNORE, document_words
from hat.splitter import EOD, PAD, Splitter
from hat.tokenizer import BOS_ID, PAD_ID, BPETokenizer


@dataclass
class Document:
    """One document as units to pack."""

    ids: np.ndarray  # [n] units, starting with the end-of-document marker
    labels: np.ndarray  # [n] ids[1:], then the end-of-document marker
    word_lens: np.ndarray | None  # [words] bytes per word (HAT); None: cut anywhere (BPE)

    def __post_init__(self) -> None:
        self.word_ends = None if self.word_lens is None else np.cumsum(self.word_lens)

    def cut(self, pos: int, room: int) -> int:
        """End of the longest run of whole words starting at ``pos`` that fits in ``room``."""
        if len(self.ids) - pos <= room:  # the usual case: the rest of the document fits
            return len(self.ids)
        if self.word_ends is None:
            return pos + room
        k = int(np.searchsorted(self.word_ends, pos + room, side="right"))
        return max(pos, int(self.word_ends[k - 1])) if k else pos

    def word_lengths(self, start: int, end: int) -> np.ndarray:
        """Lengths of the words in [start, end) (both word boundaries)."""
        assert self.word_lens is not None and self.word_ends is not None
        if start == 0 and end == len(self.ids):
            return self.word_lens
        lo, hi = np.searchsorted(self.word_ends, [start, end], side="right")
        return self.word_lens[lo:hi]


@dataclass
class Row:
    """One packed row: ``seq_len`` units, labels, and (HAT) word lengths incl. a padding word."""

    ids: np.ndarray
    labels: np.ndarray
    word_lengths: np.ndarray | None


class HATFormat:
    """Documents as bytes and words, batches as ``hat.batching.collate_documents`` makes them."""

    kind = "hat"

    def __init__(self, splitter: Splitter) -> None:
        self.splitter = splitter

    def encode(self, text: str) -> Document:
        words = document_words(text, self.splitter)
        ids = np.frombuffer(b"".join(words), dtype=np.uint8)
        labels = np.empty(len(ids), dtype=np.int16)
        labels[:-1] = ids[1:]
        labels[-1] = EOD
        return Document(ids, labels, np.fromiter(map(len, words), dtype=np.int64, count=len(words)))

    def empty_row(self, seq_len: int) -> Row:
        return Row(
            np.full(seq_len, PAD, np.uint8), np.full(seq_len, IGNORE, np.int16), np.array([seq_len])
        )

    def collate(self, rows: Sequence[Row]) -> dict[str, torch.Tensor]:
        word_lengths = np.zeros((len(rows), max(len(r.word_lengths) for r in rows)), dtype=np.int64)
        for i, row in enumerate(rows):
            word_lengths[i, : len(row.word_lengths)] = row.word_lengths
        return {
            "input_ids": _stack(r.ids for r in rows),
            "labels": _stack(r.labels for r in rows),
            "word_lengths": torch.from_numpy(word_lengths),
        }


class BPEFormat:
    """Documents as ``[BOS] + tokens``; batches with ``label_bytes``, the bytes each target
    token spells, for bits per byte."""

    kind = "bpe"

    def __init__(self, tokenizer: BPETokenizer) -> None:
        self.tokenizer = tokenizer
        self.token_bytes = tokenizer.token_bytes.numpy()

    def encode(self, text: str) -> Document:
        ids = np.array([BOS_ID, *self.tokenizer.encode(text)], dtype=np.int32)
        labels = np.append(ids[1:], np.int32(BOS_ID))
        return Document(ids, labels, None)

    def empty_row(self, seq_len: int) -> Row:
        return Row(np.full(seq_len, PAD_ID, np.int32), np.full(seq_len, IGNORE, np.int32), None)

    def collate(self, rows: Sequence[Row]) -> dict[str, torch.Tensor]:
        labels = _stack(r.labels for r in rows)
        label_bytes = torch.from_numpy(self.token_bytes[labels.clamp_min(0).numpy()])
        label_bytes[labels == IGNORE] = 0  # (BOS, the end-of-document target, spells none)
        return {
            "input_ids": _stack(r.ids for r in rows),
            "labels": labels,
            "label_bytes": label_bytes,
        }


def _stack(arrays: Iterable[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(list(arrays)).astype(np.int64))


class LanePacker:
    """Packs one lane's documents, in order, into rows of ``seq_len`` units (greedy)."""

    def __init__(self, fmt: HATFormat | BPEFormat, seq_len: int) -> None:
        self.fmt = fmt
        self.seq_len = seq_len
        self.rows: deque[Row] = deque()  # finished rows, oldest first
        self._ids: list[np.ndarray] = []  # pieces of the open row
        self._labels: list[np.ndarray] = []
        self._words: list[np.ndarray] = []
        self._fill = 0

    def add(self, doc: Document) -> None:
        """Append a document; rows it completes go to ``self.rows``."""
        pos, n = 0, len(doc.ids)
        while pos < n:
            end = doc.cut(pos, self.seq_len - self._fill)
            if end == pos and self._fill == 0:
                raise ValueError(
                    f"a word does not fit in a row of seq_len={self.seq_len}; raise seq_len"
                )
            if end > pos:
                self._ids.append(doc.ids[pos:end])
                self._labels.append(doc.labels[pos:end])
                if doc.word_lens is not None:
                    self._words.append(doc.word_lengths(pos, end))
                self._fill += end - pos
                pos = end
            # close the row when the next word does not fit, or when it is full
            if pos < n or self._fill == self.seq_len:
                self._close()

    def flush(self) -> None:
        """End of a finite stream: pad out the open row."""
        if self._fill:
            self._close()

    def _close(self) -> None:
        row = self.fmt.empty_row(self.seq_len)
        row.ids[: self._fill] = np.concatenate(self._ids)
        row.labels[: self._fill] = np.concatenate(self._labels)
        if row.word_lengths is not None:
            padding = [self.seq_len - self._fill] if self._fill < self.seq_len else []
            row.word_lengths = np.concatenate([*self._words, padding]).astype(np.int64)
        self.rows.append(row)
        self._ids, self._labels, self._words, self._fill = [], [], [], 0


def pack_rows(
    docs: Iterable[str],
    fmt: HATFormat | BPEFormat,
    lanes: Sequence[int],
    global_rows: int,
    seq_len: int,
) -> Iterator[list[Row]]:
    """Rows of ``lanes`` (one per lane, in order), one global batch at a time.

    Document j goes to lane j % global_rows; documents of lanes not in ``lanes`` are skipped
    unencoded. When ``docs`` ends, the open rows are padded out and lanes that run dry get
    all-padding rows until every lane is drained.
    """
    packers = {lane: LanePacker(fmt, seq_len) for lane in lanes}
    order = [packers[lane] for lane in lanes]
    starved = len(order)  # lanes without a finished row
    for j, text in enumerate(docs):
        packer = packers.get(j % global_rows)
        if packer is None:
            continue
        had_row = bool(packer.rows)
        packer.add(fmt.encode(text))
        starved -= not had_row and bool(packer.rows)
        while starved == 0:
            yield [p.rows.popleft() for p in order]
            starved = sum(not p.rows for p in order)
    for packer in order:
        packer.flush()
    while any(p.rows for p in order):
        yield [p.rows.popleft() if p.rows else fmt.empty_row(seq_len) for p in order]
