"""Batches of packed bytes and their ragged word structure.

A HAT batch is three tensors:
  input_ids    [B, T] byte values; every document starts with the EOD byte (192) as a word of
               its own; PAD (255) fills a row's tail
  labels       [B, T] the byte to predict at each position, -100 where nothing is predicted
  word_lengths [B, W] bytes per word, in order, zero-padded; each row's lengths sum to T
From these the model derives everything else (``WordLayout``): documents, positions, the
flat word offsets that pooling needs, and which backbone vector each byte's decoder sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hat.splitter import EOD, PAD, Splitter

IGNORE = -100


@dataclass
class WordLayout:
    """Where the words and documents of a packed batch are (all on the batch's device)."""

    doc_ids: torch.Tensor  # [B, T] document index within the row (PAD tail is its own doc)
    byte_pos: torch.Tensor  # [B, T] byte position within its document
    word_of_byte: torch.Tensor  # [B, T] row-local index of each byte's word
    offsets: torch.Tensor  # [B*W + 1] word starts on the flattened byte axis (empty slots included)
    word_mask: torch.Tensor  # [B, W] real word (not a zero-length padding slot)
    word_doc: torch.Tensor  # [B, W] document of each word; padding slots get unique negative ids
    word_pos: torch.Tensor  # [B, W] word position within its document
    word_end_pos: torch.Tensor  # [B, W] byte position (within doc) of each word's last byte
    guide_index: torch.Tensor  # [B, T] 0 = first word of its doc, else 1 + index of previous word


def document_starts(
    input_ids: torch.Tensor, start_id: int = EOD, pad_id: int = PAD
) -> torch.Tensor:
    """[B, T] True where a document (``start_id``) or the padding tail begins; a row always
    begins one. HAT uses the EOD byte; the BPE twin passes its BOS and PAD token ids."""
    prev = torch.nn.functional.pad(input_ids[:, :-1], (1, 0), value=-1)
    starts = (input_ids == start_id) | ((input_ids == pad_id) & (prev != pad_id))
    starts[:, 0] = True
    return starts


def positions_since(starts: torch.Tensor) -> torch.Tensor:
    """[B, S] index of each element counted from the last True in ``starts`` at or before it."""
    idx = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last_start


def _check_word_lengths(word_lengths: torch.Tensor, batch: int, seq: int) -> None:
    """Clear errors for word lengths that do not describe the bytes (repeat_interleave's own
    are cryptic: "allocated size does not match required size"). Run on CPU tensors only,
    where reading them back costs nothing; on a GPU it would be a host sync every batch."""
    if word_lengths.dim() != 2 or word_lengths.shape[0] != batch:
        raise ValueError(
            f"word_lengths must be [B, W] with B = {batch} rows like input_ids, "
            f"got {list(word_lengths.shape)}"
        )
    if bool((word_lengths < 0).any()):
        raise ValueError("word_lengths must not be negative")
    sums = word_lengths.sum(dim=1)
    if bool((sums != seq).any()):
        raise ValueError(
            f"each row of word_lengths must sum to the row's {seq} bytes, got {sums.tolist()}"
        )


def layout_words(input_ids: torch.Tensor, word_lengths: torch.Tensor) -> WordLayout:
    """Derive the ragged word structure of a packed batch (no host synchronisation; CPU
    batches, where reading them costs nothing, are checked first: ``_check_word_lengths``)."""
    batch, seq = input_ids.shape
    if word_lengths.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_word_lengths(word_lengths, batch, seq)
    num_slots = word_lengths.shape[1]
    device = input_ids.device
    starts = document_starts(input_ids)
    doc_ids = starts.cumsum(dim=1) - 1  # [B, T]
    byte_pos = positions_since(starts)  # [B, T]

    flat_lengths = word_lengths.reshape(-1)  # [B*W]
    offsets = torch.nn.functional.pad(flat_lengths.cumsum(0), (1, 0))  # [B*W + 1]
    slot_of_byte = torch.repeat_interleave(
        torch.arange(batch * num_slots, device=device), flat_lengths, output_size=batch * seq
    )  # [B*T] global slot of each byte
    word_of_byte = (slot_of_byte % num_slots).view(batch, seq)

    word_mask = word_lengths > 0
    first_byte = offsets[:-1].clamp(max=batch * seq - 1)  # [B*W]
    last_byte = (offsets[1:] - 1).clamp(min=0)
    word_doc = doc_ids.reshape(-1)[first_byte].view(batch, num_slots)
    padding_ids = -1 - torch.arange(num_slots, device=device).expand(batch, -1)
    word_doc = torch.where(word_mask, word_doc, padding_ids)
    prev_doc = torch.nn.functional.pad(word_doc[:, :-1], (1, 0), value=-(num_slots + 2))
    word_pos = positions_since(word_doc != prev_doc)  # [B, W]
    word_end_pos = byte_pos.reshape(-1)[last_byte].view(batch, num_slots)

    first_word_of_doc = torch.gather(word_pos, 1, word_of_byte) == 0  # [B, T]
    guide_index = torch.where(
        first_word_of_doc, 0, word_of_byte
    )  # word i reads slot i-1 (+1 shift)
    return WordLayout(
        doc_ids,
        byte_pos,
        word_of_byte,
        offsets,
        word_mask,
        word_doc,
        word_pos,
        word_end_pos,
        guide_index,
    )


# The most positions one inference forward (scoring, generation's prefill) runs on a CPU.
# Many long rows at once make activations of tens to hundreds of MB, each a fresh allocation
# (page faults) that no cache holds, so a row costs more in a big batch than in a small one:
# HAT `small` scoring 16 documents of 4 KB, 6.3 s in one forward, 3.5 s one at a time; its
# prefill of 32 x 4 KB prompts 22 s at once, 8.4 s by groups (BENCHMARKS.md, "Prefill by
# groups of rows"). Elsewhere (a GPU: a caching allocator, and the more parallel work the
# better) a batch runs at once.
CPU_FORWARD_POSITIONS = 2048


def row_groups(lengths: Sequence[int], device: torch.device) -> list[slice]:
    """Consecutive groups of rows for one forward each, ``lengths`` (in positions) longest
    first, each row padded to its group's first: on a CPU at most ``CPU_FORWARD_POSITIONS``
    positions a group (one row at least); on other devices one group."""
    if device.type != "cpu":
        return [slice(0, len(lengths))]
    groups, start = [], 0
    while start < len(lengths):
        size = max(1, CPU_FORWARD_POSITIONS // max(lengths[start], 1))
        groups.append(slice(start, min(start + size, len(lengths))))
        start += size
    return groups


WORD_SLOT_MULTIPLE = 128


def pad_word_slots(word_lengths: torch.Tensor, multiple: int = WORD_SLOT_MULTIPLE) -> torch.Tensor:
    """[B, W] -> [B, W'] with W' the next multiple of ``multiple`` (the extra slots are empty
    words): compiled code sees a few shapes instead of one per batch's word count."""
    return torch.nn.functional.pad(word_lengths, (0, -word_lengths.shape[1] % multiple))


def document_words(text: str, splitter: Splitter) -> list[bytes]:
    """A document as the model sees it: the EOD byte as its own word, then the text's words."""
    return [bytes([EOD]), *splitter.split(text)]


def collate_documents(
    docs: Sequence[Sequence[bytes]],
    target_from: Sequence[int] | None = None,
    pad_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """One document per row, padded: the batch format the model takes.

    docs: each a list of words (bytes), e.g. from ``document_words``.
    target_from: per document, the first byte index whose byte is a target (default 1: every
        byte after EOD). Bytes before it are context only. Nothing predicts past the end.
    Empty words (b"") are dropped; byte 255 (PAD) in a document is an error.
    """
    if not docs:
        raise ValueError("collate_documents needs at least one document")
    # An empty word has no bytes: drop it. Kept, it would be a zero-length slot mid-row, which
    # layout_words reads as padding (restarting the document's word positions and giving the
    # next word the first-word guide). Zero-length slots may only follow a row's words.
    docs = [[w for w in doc if w] for doc in docs]
    for row, doc in enumerate(docs):
        if any(PAD in w for w in doc):
            # PAD never occurs in UTF-8; inside a document it would start the padding tail's
            # document there (document_starts), silently cutting the text in two
            raise ValueError(f"document {row} contains byte {PAD} (PAD), which is not UTF-8 text")
    lengths = [sum(len(w) for w in doc) for doc in docs]
    seq = max(pad_to or 0, *lengths, 1)
    num_words = max(len(doc) for doc in docs) + 1  # +1: room for a padding word
    input_ids = torch.full((len(docs), seq), PAD, dtype=torch.long)
    labels = torch.full((len(docs), seq), IGNORE, dtype=torch.long)
    word_lengths = torch.zeros(len(docs), num_words, dtype=torch.long)
    for row, doc in enumerate(docs):
        data = b"".join(doc)
        if not data:  # nothing to read or predict: the row is one padding word
            word_lengths[row, 0] = seq
            continue
        input_ids[row, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        start = 1 if target_from is None else max(target_from[row], 1)
        # position t predicts byte t+1: targets are bytes[start:], predicted from t = start-1 ...
        labels[row, start - 1 : len(data) - 1] = input_ids[row, start : len(data)]
        word_lengths[row, : len(doc)] = torch.tensor([len(w) for w in doc], dtype=torch.long)
        if seq > len(data):
            word_lengths[row, len(doc)] = seq - len(data)
    return {"input_ids": input_ids, "labels": labels, "word_lengths": word_lengths}
