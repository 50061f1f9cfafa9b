"""A tokenizer's batch (transformers style) -> the batch ``HATForCausalLM`` takes.

``HATTokenizer`` gives ``input_ids`` [B, T] (EOD, then a text's UTF-8 bytes; PAD on the left or
right) and ``attention_mask`` [B, T]; transformers users pass ``labels`` = the input ids, and
the model shifts them. HAT also needs each row's word lengths: the model's own splitter finds
them here, exactly as ``hat.batching.collate_documents`` does for the trainer and ``score``.
"""

from __future__ import annotations

import torch

from hat.batching import IGNORE
from hat.generation.utf8 import incomplete_tail
from hat.splitter import EOD, PAD, Splitter


def batch_from_token_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    splitter: Splitter,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """-> ``(input_ids, word_lengths, labels)`` in the model's batch format.

    Each row's attended part (``attention_mask`` 1; without a mask, every byte but PAD) must be
    one contiguous run starting with EOD (byte 192); EODs inside it start further documents.
    Padding becomes a word of its own (its own document, as in ``collate_documents``).
    ``labels`` [B, T] are transformers-style (position t predicts ``labels[t + 1]``; -100 and
    padding are not predicted); they come back aligned to the position that predicts them.
    """
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    mask = (ids != PAD) if attention_mask is None else attention_mask.reshape(ids.shape).bool()
    rows = []
    for r, (row, keep) in enumerate(zip(ids.tolist(), mask.tolist())):
        where = [i for i, k in enumerate(keep) if k]
        if not where or where != list(range(where[0], where[-1] + 1)):
            raise ValueError(f"row {r}: attention_mask must be one contiguous run of 1s")
        start, end = where[0], where[-1] + 1
        if row[start] != EOD:
            raise ValueError(
                f"row {r} must start with the document-start byte {EOD} (HATTokenizer adds it "
                "unless add_special_tokens=False)"
            )
        lengths = [start] if start else []  # left padding: one word
        lengths += _document_word_lengths(bytes(row[start:end]), splitter, r)
        if end < len(row):
            lengths.append(len(row) - end)  # right padding: one word
        rows.append(lengths)
    word_lengths = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for r, lengths in enumerate(rows):
        word_lengths[r, : len(lengths)] = torch.tensor(lengths)
    if labels is not None:
        labels = shift_labels(labels.reshape(ids.shape).to(ids.device), mask)
    return ids, word_lengths.to(ids.device), labels


def shift_labels(labels: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """transformers-style labels [B, T] (position t predicts ``labels[t + 1]``) -> hat's
    (``labels[t]`` is position t's target); only attended positions predict, and only attended
    ones are predicted; -100 stays ignored."""
    predicted = attended[:, :-1] & attended[:, 1:]
    shifted = torch.where(predicted, labels[:, 1:], IGNORE)
    return torch.nn.functional.pad(shifted, (0, 1), value=IGNORE)


def _document_word_lengths(data: bytes, splitter: Splitter, row: int) -> list[int]:
    """Word lengths of EOD-started documents: EOD as a word of its own, then the text's words.
    An incomplete last character (a truncated row) is a word of its own."""
    lengths = []
    for doc in data.split(bytes([EOD]))[1:]:
        lengths.append(1)
        try:
            tail = incomplete_tail(doc)
        except ValueError:
            raise ValueError(f"row {row} is not valid UTF-8 text after the EOD byte") from None
        text = doc[: len(doc) - tail].decode("utf-8")
        lengths += [len(w) for w in splitter.split(text)]
        if tail:
            lengths.append(tail)
    return lengths
