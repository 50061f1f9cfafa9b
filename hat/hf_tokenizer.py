"""``HATTokenizer``: a Hugging Face-style front end for HAT's byte ids.

HAT needs no vocabulary: a token id is a byte value. A document starts with the EOD byte (192,
never valid UTF-8), and PAD (255, never valid UTF-8) fills batches. The tokenizer turns texts
into ``input_ids`` / ``attention_mask`` for ``model.generate`` and decodes ids back to text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hat.splitter import EOD, PAD

SPECIAL_TOKENS = {EOD: "<eod>", PAD: "<pad>"}


class BatchEncoding(dict):
    """A dict of ``input_ids`` / ``attention_mask`` with attribute access and ``.to(device)``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device) -> BatchEncoding:
        return BatchEncoding(
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()}
        )


class HATTokenizer:
    """Texts <-> byte ids, with the names ``transformers`` tokenizers use.

    ``tok(["a", "bcd"], return_tensors="pt", padding=True)`` gives ``input_ids`` [B, T] (EOD
    first, then the UTF-8 bytes) and ``attention_mask`` [B, T]; padding is on the left by default
    (``padding_side="left"``), which is what ``generate`` wants; right padding works too.
    Texts may be ``bytes``, even ending inside a multi-byte character (generation completes it).
    """

    eos_token_id = bos_token_id = eod_token_id = EOD
    pad_token_id = PAD
    eos_token, bos_token, pad_token = SPECIAL_TOKENS[EOD], SPECIAL_TOKENS[EOD], SPECIAL_TOKENS[PAD]
    vocab_size = 256
    all_special_ids = [EOD, PAD]

    def __init__(self, padding_side: str = "left", model_max_length: int | None = None) -> None:
        _check_side(padding_side)
        self.padding_side = padding_side
        self.model_max_length = model_max_length

    def __len__(self) -> int:
        return self.vocab_size

    # ---- encoding -------------------------------------------------------------------
    def encode(
        self,
        text: str | bytes,
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
    ) -> list[int]:
        """One text -> byte ids, EOD first (unless ``add_special_tokens=False``).

        ``truncation`` keeps the first ``max_length`` ids (the EOD included)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = ([EOD] if add_special_tokens else []) + list(data)
        limit = max_length if max_length is not None else self.model_max_length
        if truncation and limit is not None:
            ids = ids[:limit]
        return ids

    def __call__(
        self,
        text: str | bytes | Sequence[str | bytes],
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        padding_side: str | None = None,
    ) -> BatchEncoding:
        """Encode one text or a batch. ``padding``: False / True ("longest") / "max_length".

        ``return_tensors="pt"`` gives [B, T] long tensors (a single text gives B = 1) and needs
        equal lengths, i.e. ``padding`` for ragged batches; otherwise lists are returned.
        """
        single = isinstance(text, str | bytes | bytearray)
        texts = [text] if single else list(text)
        rows = [self.encode(t, add_special_tokens, truncation, max_length) for t in texts]
        masks = [[1] * len(r) for r in rows]
        side = padding_side or self.padding_side
        _check_side(side)
        if padding and padding != "do_not_pad":
            width = max(map(len, rows), default=0)
            if padding == "max_length":
                if max_length is None:
                    raise ValueError('padding="max_length" needs max_length')
                width = max(width, max_length)
            rows = [_pad(r, width, PAD, side) for r in rows]
            masks = [_pad(m, width, 0, side) for m in masks]
        if return_tensors == "pt":
            if len({len(r) for r in rows}) > 1:
                raise ValueError("texts have different lengths: pass padding=True")
            return BatchEncoding(
                input_ids=torch.tensor(rows, dtype=torch.long).view(len(rows), -1),
                attention_mask=torch.tensor(masks, dtype=torch.long).view(len(rows), -1),
            )
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' or None")
        if single:
            return BatchEncoding(input_ids=rows[0], attention_mask=masks[0])
        return BatchEncoding(input_ids=rows, attention_mask=masks)

    # ---- decoding -------------------------------------------------------------------
    def convert_ids_to_bytes(self, ids: Sequence[int] | torch.Tensor) -> bytes:
        """The content bytes of ``ids``: EOD and PAD dropped."""
        ids = _as_list(ids)
        return bytes(i for i in ids if i not in SPECIAL_TOKENS)

    def decode(
        self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False, **_: Any
    ) -> str:
        """Byte ids -> text. Invalid UTF-8 becomes U+FFFD (``errors="replace"``); EOD and PAD
        appear as ``<eod>`` / ``<pad>`` unless ``skip_special_tokens``."""
        ids = _as_list(ids)
        if skip_special_tokens:
            return self.convert_ids_to_bytes(ids).decode("utf-8", errors="replace")
        out, run = [], bytearray()
        for i in ids:
            if i in SPECIAL_TOKENS:
                out.append(run.decode("utf-8", errors="replace"))
                out.append(SPECIAL_TOKENS[i])
                run = bytearray()
            else:
                run.append(i)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        """``decode`` of every row."""
        return [self.decode(s, skip_special_tokens) for s in sequences]


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"expected one sequence of ids (1-D), got shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]


def _pad(row: list[int], width: int, value: int, side: str) -> list[int]:
    fill = [value] * (width - len(row))
    return fill + row if side == "left" else row + fill


def _check_side(side: str) -> None:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
