"""HATForCausalLM: bytes -> words -> encoder -> pooled words -> backbone -> decoder -> bytes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from hat.backbone import Backbone
from hat.batching import collate_documents, document_words, layout_words, pad_word_slots
from hat.block import AttentionMask, stage
from hat.config import HATConfig
from hat.data.packing import HATFormat
from hat.decoder import ByteDecoder
from hat.encoder import ByteEncoder
from hat.generation import GenerationMixin
from hat.generation.specs import ModelSpec, hat_spec
from hat.hf_batch import batch_from_token_ids
from hat.hf_tokenizer import TOKENIZER_CONFIG_FILE, HATTokenizer
from hat.modeling import CausalLMOutput, PreTrainedLM, causal_lm_output, next_unit_nll, softcap
from hat.pooling import WordPooler
from hat.splitter import EOD, PAD, as_text, make_splitter


class HATForCausalLM(GenerationMixin, PreTrainedLM):
    """Hierarchical autoregressive transformer over UTF-8 bytes (TFree-HAT design).

    Takes a batch from ``hat.batching`` (``input_ids``, ``word_lengths``, optional ``labels``)
    and returns next-byte logits [B, T, 256] and, with labels, the loss in nats per byte.
    Without ``word_lengths`` it takes a tokenizer's batch, as transformers users write it:
    ``model(**HATTokenizer()(texts, return_tensors="pt", padding=True), labels=...)``, where
    ``labels`` are the input ids themselves (shifted inside; see ``hat.hf_batch``).
    """

    config_class = HATConfig

    def __init__(self, config: HATConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.splitter = make_splitter(config.splitter, config.max_word_bytes)
        self.encoder = ByteEncoder(config.encoder)
        self.pooler = WordPooler(
            config.encoder, config.backbone.dim, config.pool_qk_norm, config.pool_impl
        )
        self.backbone = Backbone(config.backbone)
        self.decoder = ByteDecoder(config.decoder, config.backbone.dim, config.decoder_guide)
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        word_lengths: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **_: object,
    ) -> CausalLMOutput:
        if word_lengths is None:  # a tokenizer's batch: words from our splitter, HF-style labels
            input_ids, word_lengths, labels = batch_from_token_ids(
                input_ids, attention_mask, labels, self.splitter
            )
        cfg = self.config
        batch, seq = input_ids.shape
        if input_ids.is_cuda or torch.compiler.is_compiling():
            # round word slots up (extra slots are empty words) so that compiled code sees few
            # shapes: each batch has its own word count, and each new one would recompile
            word_lengths = pad_word_slots(word_lengths)
        with stage("hat.layout"):
            layout = layout_words(input_ids, word_lengths)
            # the rows' padding tails: PAD bytes, and their word (the tail document's) and
            # the empty word slots after it
            pad_bytes = input_ids == PAD
            tail_doc = (layout.word_doc == layout.doc_ids[:, -1:]) & pad_bytes[:, -1:]
            pad_words = ~layout.word_mask | tail_doc
            byte_mask = AttentionMask.packed(
                layout.doc_ids, cfg.encoder.window, cfg.attn_impl, pad_bytes
            )
            word_mask = AttentionMask.packed(layout.word_doc, None, cfg.attn_impl, pad_words)
            decoder_mask = byte_mask
            if cfg.decoder.window != cfg.encoder.window:
                decoder_mask = AttentionMask.packed(
                    layout.doc_ids, cfg.decoder.window, cfg.attn_impl, pad_bytes
                )

        # bytes -> encoder states                               [B, T] -> [B, T, De]
        with stage("hat.encoder"):
            byte_states = self.encoder(input_ids, layout.byte_pos, byte_mask)

        # encoder states -> one vector per word slot            [B*T, De] -> [B, W, D]
        with stage("hat.pooling"):
            words = self.pooler(
                byte_states.flatten(0, 1),
                layout.byte_pos.flatten(),
                layout.offsets,
                layout.word_end_pos.flatten(),
                max_pos=seq,  # positions are within a row
            ).view(batch, -1, cfg.backbone.dim)

        # words -> backbone states (word i has seen words <= i) [B, W, D]
        with stage("hat.backbone"):
            word_states = self.backbone(words, layout.word_pos, word_mask)

        # bytes of word i + backbone state of word i-1 -> logits [B, T, 256]
        with stage("hat.decoder"):
            hidden = self.decoder(
                byte_states,
                self.decoder.guides(word_states),
                layout.guide_index,
                layout.byte_pos,
                decoder_mask,
            )
            logits = softcap(self.decoder.head(hidden), cfg.logit_softcap)
        with stage("hat.loss"):
            return causal_lm_output(logits, labels, end_id=EOD)

    # ---- scoring --------------------------------------------------------------------
    def _encode_for_scoring(self, text: str, context: str) -> tuple[list[bytes], int, int]:
        words = document_words(context + text, self.splitter)
        num_bytes = sum(map(len, words))
        if num_bytes > self.config.max_seq_bytes:
            raise ValueError(
                f"context + text is {num_bytes} bytes, over max_seq_bytes={self.config.max_seq_bytes}; "
                "shorten it, or score it in windows with score(..., rolling=True)"
            )
        return words, 1 + len(context.encode("utf-8")), num_bytes

    def max_window_bytes(self) -> int:
        return self.config.max_seq_bytes - 1  # the document's EOD byte takes one

    def _collate_for_scoring(
        self, items: list[tuple[list[bytes], int, int]]
    ) -> dict[str, torch.Tensor]:
        return collate_documents([w for w, _, _ in items], target_from=[t for _, t, _ in items])

    @torch.no_grad()
    def byte_logprobs(self, text: str | bytes) -> torch.Tensor:
        """Log-probability (nats) of each byte of ``text`` as a new document: [len(bytes)]."""
        text = as_text(text)
        if not text:
            return torch.zeros(0)
        words, _, _ = self._encode_for_scoring(text, "")
        batch = {k: v.to(self.device) for k, v in collate_documents([words]).items()}
        was_training = self.training
        self.eval()
        try:
            out = self(**batch)
        finally:
            self.train(was_training)
        nll = next_unit_nll(out.logits, batch["labels"])[0]
        return -nll[: len(text.encode("utf-8"))].cpu()

    @classmethod
    def from_name(cls, name: str) -> HATForCausalLM:
        """A freshly initialised model of a named preset (``tiny``, ``small``, ``1b``, ...)."""
        return cls(HATConfig.from_name(name))

    # ---- what the trainer, data pipeline and generate() ask of each model kind ---------
    def data_format(self) -> HATFormat:
        """Documents as bytes cut into words by this model's splitter."""
        return HATFormat(self.splitter)

    def generation_spec(self) -> ModelSpec:
        return hat_spec(self)

    def units_per_row(self, row_bytes: int, texts: Iterable[str] = ()) -> int:
        """A training row of ``row_bytes`` bytes is ``row_bytes`` input ids."""
        return row_bytes

    def card_facts(self) -> dict[str, Any]:
        """What a Hub model card says of this kind (``hat.hub.model_card``)."""
        cfg = self.config
        return {
            "tags": ["hat", "byte-level", "hierarchical"],
            "summary": "A hierarchical autoregressive transformer (HAT) over raw UTF-8 bytes: a "
            "byte encoder pools each word into one vector, a word-level backbone predicts the "
            "next word, a byte decoder spells it out. No tokenizer vocabulary.",
            "inputs": f"Splitter `{cfg.splitter}` (words of at most {cfg.max_word_bytes} bytes), "
            f"context {cfg.max_seq_bytes:,} bytes, decoder guide `{cfg.decoder_guide}`.",
        }

    def _save_extras(self, directory: Path) -> list[str]:
        """Besides the generation config, a ``tokenizer_config.json``, so transformers'
        ``AutoTokenizer`` loads the byte-level tokenizer from the saved directory."""
        written = super()._save_extras(directory)
        HATTokenizer(model_max_length=self.config.max_seq_bytes).save_pretrained(directory)
        return [*written, TOKENIZER_CONFIG_FILE]

    @staticmethod
    def backbone_positions(batch: dict[str, torch.Tensor]) -> int:
        """Words the backbone reads in a batch (a padded row's padding word is not one)."""
        padding_words = (batch["input_ids"][:, -1] == PAD).sum()
        return int((batch["word_lengths"] > 0).sum() - padding_words)
