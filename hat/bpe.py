"""BPEForCausalLM: the tokenized twin of HAT. Same backbone class, a token embedding and head."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hat.backbone import Backbone
from hat.batching import IGNORE, document_starts, positions_since
from hat.block import AttentionMask, stage
from hat.config import BPEConfig
from hat.data.packing import BPEFormat
from hat.generation import GenerationMixin
from hat.generation.specs import ModelSpec, bpe_spec
from hat.hf_batch import shift_labels
from hat.modeling import CausalLMOutput, PreTrainedLM, causal_lm_output, softcap
from hat.tokenizer import BOS_ID, PAD_ID, TOKENIZER_FILE, BPETokenizer


class BPEForCausalLM(GenerationMixin, PreTrainedLM):
    """Tokens -> embedding -> Backbone -> token logits. Documents start with BOS.

    Batches: ``input_ids`` [B, T] token ids, ``labels`` [B, T] (position t's target) and
    ``label_bytes`` [B, T], the number of bytes each target token spells, as the data pipeline
    and ``score`` build them. ``labels`` without ``label_bytes`` are transformers' convention
    (``model(input_ids, attention_mask, labels=input_ids)``: shifted inside, padding and -100
    not predicted).
    """

    config_class = BPEConfig

    def __init__(self, config: BPEConfig, tokenizer: BPETokenizer | None = None) -> None:
        super().__init__()
        self.config = config.validate()
        if tokenizer is not None and len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but config.vocab_size={config.vocab_size}"
            )
        self.tokenizer = tokenizer
        dim = config.backbone.dim
        self.embed = nn.Embedding(config.vocab_size, dim)
        self.backbone = Backbone(config.backbone)
        self.head = nn.Linear(dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        label_bytes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **_: object,
    ) -> CausalLMOutput:
        with stage("bpe.layout"):
            starts = document_starts(input_ids, start_id=BOS_ID, pad_id=PAD_ID)
            mask = AttentionMask.packed(
                starts.cumsum(dim=1), None, self.config.attn_impl, input_ids == PAD_ID
            )
        with stage("bpe.backbone"):
            hidden = self.backbone(self.embed(input_ids), positions_since(starts), mask)
        with stage("bpe.head"):
            logits = softcap(self.head(hidden), self.config.logit_softcap)  # [B, T, V]
        with stage("bpe.loss"):
            if labels is not None and label_bytes is None:  # transformers-style labels
                attended = input_ids != PAD_ID if attention_mask is None else attention_mask.bool()
                labels = shift_labels(labels, attended)
                label_bytes = self._require_tokenizer().token_bytes.to(labels.device)
                label_bytes = label_bytes[labels.clamp_min(0)]
            return causal_lm_output(logits, labels, BOS_ID, label_bytes)

    def _require_tokenizer(self) -> BPETokenizer:
        if self.tokenizer is None:
            raise ValueError(
                "this BPEForCausalLM has no tokenizer; pass one or load with from_pretrained"
            )
        return self.tokenizer

    def _encode_for_scoring(self, text: str, context: str) -> tuple[list[int], int, int]:
        tok = self._require_tokenizer()
        ctx = tok.encode(context)
        ids = [BOS_ID, *ctx, *tok.encode(text)]
        if len(ids) > self.config.max_seq_tokens:
            raise ValueError(
                f"context + text is {len(ids)} tokens, over max_seq_tokens={self.config.max_seq_tokens}; "
                "shorten it, or score it in windows with score(..., rolling=True)"
            )
        return ids, 1 + len(ctx), len(ids)

    def max_window_bytes(self) -> int:
        # BOS takes one token; no token spells less than one byte (byte fallback, no dummy prefix)
        return self.config.max_seq_tokens - 1

    def _collate_for_scoring(
        self, items: list[tuple[list[int], int, int]]
    ) -> dict[str, torch.Tensor]:
        seq = max(n for _, _, n in items)
        input_ids = torch.full((len(items), seq), PAD_ID, dtype=torch.long)
        labels = torch.full((len(items), seq), IGNORE, dtype=torch.long)
        for row, (ids, target_from, n) in enumerate(items):
            input_ids[row, :n] = torch.tensor(ids)
            labels[row, target_from - 1 : n - 1] = input_ids[row, target_from:n]
        label_bytes = self._require_tokenizer().token_bytes[labels.clamp_min(0)]
        return {"input_ids": input_ids, "labels": labels, "label_bytes": label_bytes}

    def _save_extras(self, directory: Path) -> list[str]:
        written = super()._save_extras(directory)
        if self.tokenizer is not None:
            self.tokenizer.save(directory)
            written.append(TOKENIZER_FILE)
        return written

    def card_facts(self) -> dict[str, Any]:
        """What a Hub model card says of this kind (``hat.hub.model_card``)."""
        cfg = self.config
        return {
            "tags": ["hat", "bpe-twin"],
            "summary": "The BPE twin of a HAT model: a sentencepiece BPE tokenizer, a token "
            "embedding, the same backbone class as HAT and a token head, trained by the same "
            "trainer.",
            "inputs": f"Vocabulary {cfg.vocab_size:,} tokens (sentencepiece BPE, byte fallback), "
            f"context {cfg.max_seq_tokens:,} tokens.",
        }

    @classmethod
    def _from_config_and_dir(cls, config: BPEConfig, directory: Path) -> BPEForCausalLM:
        tok_file = directory / TOKENIZER_FILE
        return cls(config, BPETokenizer(tok_file) if tok_file.is_file() else None)

    def _tied_keys(self) -> set[str]:
        return {"head.weight", "embed.weight"} if self.config.tie_embeddings else set()

    # ---- what the trainer, data pipeline and generate() ask of each model kind ---------
    def data_format(self) -> BPEFormat:
        """Documents as ``[BOS] + tokens`` of this model's tokenizer."""
        return BPEFormat(self._require_tokenizer())

    def generation_spec(self) -> ModelSpec:
        return bpe_spec(self)

    def units_per_row(self, row_bytes: int, texts: Iterable[str]) -> int:
        """Tokens that hold ``row_bytes`` bytes of text like ``texts``, measured with this
        model's tokenizer (each document with its start marker, as rows hold them), so the
        twin reads as much text per row as a HAT row of ``row_bytes`` bytes."""
        tok = self._require_tokenizer()
        n_bytes = n_tokens = 0
        for text in texts:
            n_bytes += len(text.encode("utf-8")) + 1  # + the document start (EOD byte / BOS)
            n_tokens += len(tok.encode(text)) + 1
        if n_bytes == 0:
            raise ValueError("units_per_row needs some text to measure the tokenizer on")
        return max(1, round(row_bytes * n_tokens / n_bytes))

    @staticmethod
    def backbone_positions(batch: dict[str, torch.Tensor]) -> int:
        """Tokens the backbone predicts from in a batch."""
        return int((batch["labels"] != IGNORE).sum())

    def empty_copy(self) -> BPEForCausalLM:
        with torch.device("meta"):
            return type(self)(self.config, self.tokenizer)
