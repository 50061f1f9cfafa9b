"""Model-specific facts: ``ModelSpec`` for HAT (``hat_spec``) and the BPE twin (``bpe_spec``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hat.generation.bpe_engine import BPECachedEngine, BPEUncachedEngine
from hat.generation.hat_engine import HATCachedEngine, HATUncachedEngine
from hat.generation.utf8 import incomplete_tail, token_byte_table
from hat.splitter import EOD, PAD, check_encodable


@dataclass
class ModelSpec:
    """What the generic loop needs to know about a model kind."""

    byte_level: bool
    start_id: int
    pad_id: int
    end_ids: list[int]  # always end a row (default eos)
    token_bytes: list[bytes]  # what each id spells
    banned: set[int]
    max_len: int  # longest document, start id included
    encode: Callable[[str | bytes], list[int]]
    engines: tuple[type, type]  # (cached, uncached)
    tokenizer: Any


def hat_spec(model: Any) -> ModelSpec:
    table = [bytes([b]) if b not in (EOD, PAD) else b"" for b in range(256)]
    return ModelSpec(
        byte_level=True,
        start_id=EOD,
        pad_id=PAD,
        end_ids=[EOD],
        token_bytes=table,
        banned={PAD},
        max_len=model.config.max_seq_bytes,
        encode=lambda text: [
            EOD,
            *(check_encodable(text).encode() if isinstance(text, str) else text),
        ],
        engines=(HATCachedEngine, HATUncachedEngine),
        tokenizer=None,
    )


def bpe_spec(model: Any) -> ModelSpec:
    from hat.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    tok = model._require_tokenizer()
    table = token_byte_table(tok)
    vocab = model.config.vocab_size
    table = table + [b""] * (vocab - len(table))

    def encode(text: str | bytes) -> list[int]:
        if isinstance(text, str):
            return [BOS_ID, *tok.encode(text)]
        tail = incomplete_tail(text)
        valid, rest = bytes(text[: len(text) - tail]), bytes(text[len(text) - tail :])
        byte_ids = [tok.sp.piece_to_id(f"<0x{b:02X}>") for b in rest]
        return [BOS_ID, *tok.encode(valid.decode("utf-8")), *byte_ids]

    return ModelSpec(
        byte_level=False,
        start_id=BOS_ID,
        pad_id=PAD_ID,
        end_ids=[BOS_ID, EOS_ID],
        token_bytes=table,
        banned={PAD_ID, UNK_ID, *range(len(tok), vocab)},
        max_len=model.config.max_seq_tokens,
        encode=encode,
        engines=(BPECachedEngine, BPEUncachedEngine),
        tokenizer=tok,
    )
