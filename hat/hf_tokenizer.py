"""``HATTokenizer``: a Hugging Face-style front end for HAT's byte ids.

HAT needs no vocabulary: a token id is a byte value. A document starts with the EOD byte (192,
never valid UTF-8), and PAD (255, never valid UTF-8) fills batches. The tokenizer turns texts
into ``input_ids`` / ``attention_mask`` for ``model.generate`` and decodes ids back to text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hat.splitter import EOD, PAD

SPECIAL_TOKENS = {EOD: "<eod>", PAD: "<pad>"}
SPECIAL_IDS = {token: i for i, token in SPECIAL_TOKENS.items()}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_TRANSFORMERS_LOAD_ARGS = ("trust_remote_code", "use_fast", "subfolder")


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

    Tokens as strings (``tokenize``, ``convert_ids_to_tokens``) are one per byte, ``chr(byte)``
    as in ByT5's tokenizer ("é" -> ``["Ã", "©"]``), and ``<eod>`` / ``<pad>``. ``save_pretrained``
    / ``from_pretrained`` (a directory or Hub id) keep ``padding_side`` and ``model_max_length``
    in ``tokenizer_config.json``.
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

    # ---- save / load ----------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> tuple[str]:
        """Write ``tokenizer_config.json``; returns the files written (as transformers does)."""
        path = Path(directory) / TOKENIZER_CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "tokenizer_class": type(self).__name__,
            "padding_side": self.padding_side,
            "model_max_length": self.model_max_length,
            "eos_token": self.eos_token,
            "bos_token": self.bos_token,
            "pad_token": self.pad_token,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        return (str(path),)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> HATTokenizer:
        """The tokenizer of a saved HAT model or tokenizer (a directory or a Hub id,
        ``org/name[@revision]``). ``padding_side`` / ``model_max_length`` override the saved
        ones; without a ``tokenizer_config.json`` the model's context is the max length."""
        from hat.hub import pop_hub_kwargs, resolve_model_dir

        path = resolve_model_dir(directory, **pop_hub_kwargs(kwargs))
        for name in [k for k in kwargs if k.startswith("_") or k in _TRANSFORMERS_LOAD_ARGS]:
            del kwargs[name]  # what AutoTokenizer passes along: bookkeeping, nothing to apply
        unknown = sorted(set(kwargs) - {"padding_side", "model_max_length"})
        if unknown:
            raise TypeError(f"HATTokenizer.from_pretrained got unknown arguments {unknown}")
        settings: dict[str, Any] = {}
        saved, model_config = path / TOKENIZER_CONFIG_FILE, path / "config.json"
        if saved.is_file():
            data = json.loads(saved.read_text())
            if data.get("tokenizer_class", cls.__name__) != cls.__name__:
                raise ValueError(
                    f"{saved} is for a {data['tokenizer_class']}, not a {cls.__name__}"
                )
            settings = {k: data[k] for k in ("padding_side", "model_max_length") if k in data}
        elif model_config.is_file():
            data = json.loads(model_config.read_text())
            if data.get("model_type") != "hat":
                raise ValueError(
                    f"{path} holds a {data.get('model_type')!r} model, not HAT: the BPE twin's "
                    "tokenizer is its tokenizer.model (hat.BPETokenizer)"
                )
            settings["model_max_length"] = data.get("max_seq_bytes")
        elif not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory")
        else:
            raise FileNotFoundError(f"{path} has neither {TOKENIZER_CONFIG_FILE} nor config.json")
        return cls(**{**settings, **kwargs})

    # ---- tokens as strings --------------------------------------------------------------
    def tokenize(self, text: str | bytes, add_special_tokens: bool = False) -> list[str]:
        """One token string per byte (``chr(byte)``), EOD first with ``add_special_tokens``."""
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=add_special_tokens))

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int] | torch.Tensor, skip_special_tokens: bool = False
    ) -> str | list[str]:
        """``chr(id)`` for a byte, ``<eod>`` / ``<pad>`` for the special ids; one id -> one str."""
        if isinstance(ids, int):
            return SPECIAL_TOKENS.get(ids, chr(ids))
        ids = _as_list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in SPECIAL_TOKENS]
        return [SPECIAL_TOKENS.get(i, chr(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """The inverse of ``convert_ids_to_tokens``."""
        if isinstance(tokens, str):
            return _token_id(tokens)
        return [_token_id(t) for t in tokens]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Token strings -> text (special tokens kept as ``<eod>`` / ``<pad>``)."""
        return self.decode(self.convert_tokens_to_ids(list(tokens)))

    def get_vocab(self) -> dict[str, int]:
        return {SPECIAL_TOKENS.get(i, chr(i)): i for i in range(self.vocab_size)}

    # ---- encoding -------------------------------------------------------------------
    def encode(
        self,
        text: str | bytes,
        add_special_tokens: bool = True,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> list[int] | torch.Tensor:
        """One text -> byte ids, EOD first (unless ``add_special_tokens=False``).

        ``truncation`` (True, or a transformers strategy name other than "do_not_truncate")
        keeps the first ``max_length`` ids (the EOD included). ``return_tensors="pt"``: a
        [1, T] tensor, as transformers' ``encode`` gives it."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        ids = ([EOD] if add_special_tokens else []) + list(data)
        limit = max_length if max_length is not None else self.model_max_length
        # "do_not_truncate" is a non-empty string: truthy, but it means no truncation
        if truncation and truncation != "do_not_truncate" and limit is not None:
            ids = ids[:limit]
        if return_tensors == "pt":
            return torch.tensor([ids], dtype=torch.long).view(1, -1)
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' or None")
        return ids

    def __call__(
        self,
        text: str | bytes | Sequence[str | bytes],
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        padding_side: str | None = None,
    ) -> BatchEncoding:
        """Encode one text or a batch. ``padding``: False / True ("longest") / "max_length"
        (to ``max_length``, else ``model_max_length``, as in transformers).

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
                target = max_length if max_length is not None else self.model_max_length
                if target is None:
                    raise ValueError('padding="max_length" needs max_length (or model_max_length)')
                width = max(width, target)
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
        self,
        ids: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        **_: Any,
    ) -> str | list[str]:
        """Byte ids -> text. Invalid UTF-8 becomes U+FFFD (``errors="replace"``); EOD and PAD
        appear as ``<eod>`` / ``<pad>`` unless ``skip_special_tokens``. A batch ([B, T], or a
        list of sequences) gives a list of texts, as transformers 5's ``decode`` does."""
        if _is_batch(ids):
            return self.batch_decode(ids, skip_special_tokens)
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
        self,
        sequences: Sequence[Sequence[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        **_: Any,
    ) -> list[str]:
        """``decode`` of every row (transformers' other decode options, such as
        ``clean_up_tokenization_spaces``, change nothing for bytes: accepted and ignored)."""
        return [self.decode(s, skip_special_tokens) for s in sequences]


def _token_id(token: str) -> int:
    if token in SPECIAL_IDS:
        return SPECIAL_IDS[token]
    if len(token) != 1 or ord(token) > 255:
        raise ValueError(f"{token!r} is not a HAT token: one character chr(0..255), <eod> or <pad>")
    return ord(token)


def _is_batch(ids: Any) -> bool:
    """Several sequences: a 2-D tensor, or a list whose first item is a sequence."""
    if isinstance(ids, torch.Tensor):
        return ids.dim() == 2
    if not isinstance(ids, list | tuple) or not ids:
        return False
    first = ids[0]
    return isinstance(first, list | tuple) or (isinstance(first, torch.Tensor) and first.dim() > 0)


def _as_list(ids: int | Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, int):  # transformers' decode takes a single id too
        return [ids]
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 0:
            return [int(ids)]
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
