"""Tokenizers: ``BPETokenizer`` (sentencepiece, for the BPE twin).

The twin's tokenizer is trained with byte fallback and no normalisation, so every text
encodes and decodes back to the same bytes, and ``token_bytes`` tells how many bytes each
token spells (bits per byte for the twin are measured on exactly the bytes HAT sees).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from hat.splitter import check_encodable

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.model"


class BPETokenizer:
    """A sentencepiece BPE model with byte fallback. ``BOS`` starts (and ends) every document."""

    bos_id, eos_id, pad_id, unk_id = BOS_ID, EOS_ID, PAD_ID, UNK_ID

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{model_file}: not a sentencepiece model ({err})") from None
        ids = (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id())
        if ids != (UNK_ID, BOS_ID, EOS_ID, PAD_ID):  # decode drops ids 1-3 as special
            raise ValueError(
                f"{model_file}: expected unk_id={UNK_ID}, bos_id={BOS_ID}, eos_id={EOS_ID}, "
                f"pad_id={PAD_ID}, got {ids}; train it with hat-tokenizer"
            )
        byte_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        if not all(self.sp.is_byte(i) for i in byte_ids):
            raise ValueError(
                f"{model_file}: no byte fallback (characters outside its vocabulary would become "
                "<unk> and their bytes be lost); train it with hat-tokenizer"
            )
        self._marker_bytes = [byte_ids[b] for b in "\u2581".encode()]
        self.token_bytes = torch.tensor(
            [self._piece_bytes(i) for i in range(len(self))], dtype=torch.long
        )
        # normalisation or a dummy prefix would change the text, and bits per byte would not
        # count the bytes of the text: only the settings of ``train`` give back every byte
        probe = " A  b\t\n\u212b e\u0301 \ufb01 "
        ids = self.encode(probe)
        if self.decode(ids) != probe or int(self.token_bytes[ids].sum()) != len(probe.encode()):
            raise ValueError(
                f"{model_file}: does not give back the bytes it encodes (normalisation or a "
                "dummy prefix); train it with hat-tokenizer"
            )

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        return len(self)

    def _piece_bytes(self, token_id: int) -> int:
        if self.sp.is_control(token_id) or self.sp.is_unknown(token_id):
            return 0
        if self.sp.is_byte(token_id):
            return 1
        return len(self.sp.id_to_piece(token_id).replace("\u2581", " ").encode("utf-8"))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; ``decode`` gives the same text back, byte for byte."""
        try:
            return self._encode(text)
        except RuntimeError:  # sentencepiece's message for a lone surrogate says nothing useful
            check_encodable(text)
            raise

    def _encode(self, text: str) -> list[int]:
        if "\u2581" not in text:
            return self.sp.encode(text) if text else []
        # sentencepiece reads a literal U+2581 as its own space marker (decoding it as " "):
        # spell each literal one as its three UTF-8 byte-fallback tokens instead
        parts = text.split("\u2581")
        ids = self.sp.encode(parts[0]) if parts[0] else []
        for part in parts[1:]:
            ids += self._marker_bytes + (self.sp.encode(part) if part else [])
        return ids

    def decode(self, ids: int | Sequence[int], **_: Any) -> str:
        """Ids (or one id) -> text, special ids dropped (``skip_special_tokens`` and the other
        options of transformers' decode are accepted, so its streamers take this tokenizer)."""
        ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        return self.sp.decode([i for i in ids if i >= 4 or i == UNK_ID])

    def save(self, directory: str | Path) -> Path:
        target = Path(directory) / TOKENIZER_FILE
        target.write_bytes(self.model_file.read_bytes())
        return target

    @staticmethod
    def train(
        texts: Iterable[str],
        vocab_size: int,
        output_file: str | Path,
        max_sentence_bytes: int = 16384,
        hard_vocab_limit: bool = True,
    ) -> BPETokenizer:
        """Train a byte-fallback BPE model on ``texts`` and write it to ``output_file``.

        ``vocab_size`` is exact unless ``hard_vocab_limit=False`` (then at most: as many
        pieces as the text supports, what speed benchmarks on a small sample need); text too
        small for an exact one is a ``ValueError`` saying how many it supports."""
        import sentencepiece as spm

        model = io.BytesIO()

        def lines() -> Iterable[str]:
            for text in texts:
                for line in text.splitlines():
                    if line.strip():
                        # sentencepiece skips a line over max_sentence_length *bytes*: cut it
                        # to that (a partial last character dropped), not to as many characters
                        cut = line.encode("utf-8", "replace")[:max_sentence_bytes]
                        yield cut.decode("utf-8", "ignore")

        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines(),
                model_writer=model,
                model_type="bpe",
                vocab_size=vocab_size,
                hard_vocab_limit=hard_vocab_limit,
                byte_fallback=True,
                character_coverage=0.9995,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                pad_id=PAD_ID,
                user_defined_symbols=["\n", "\t"],
                max_sentence_length=max_sentence_bytes,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as err:  # sentencepiece's own words, made one line to act on
            most = re.search(r"Vocabulary size too high.*<= (\d+)", str(err))
            least = re.search(
                r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", str(err)
            )
            if most is not None:
                raise ValueError(
                    f"a vocabulary of {vocab_size:,} tokens is more than this text supports "
                    f"(at most {int(most.group(1)):,}): train on more text, or choose a smaller "
                    "vocab_size"
                ) from None
            if least is not None:  # the 256 bytes, the specials and every character it covers
                raise ValueError(
                    f"a vocabulary of {vocab_size:,} tokens is too small for this text: it needs "
                    f"at least {int(least.group(1)):,} (256 bytes, special tokens and its "
                    "characters); choose a larger vocab_size"
                ) from None
            if "sentences_.empty()" in str(err):
                raise ValueError(
                    "no text to train on: the training documents hold no non-blank line"
                ) from None
            raise
        output_file = Path(output_file)
        output_file.parent.mkdir(parents=True, exist_ok=True)
        output_file.write_bytes(model.getvalue())
        return BPETokenizer(output_file)
