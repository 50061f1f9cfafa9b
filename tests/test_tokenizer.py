"""The twin's tokenizer: every text round-trips, and token byte counts add up to the text's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hat


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(codec="utf-8") | st.sampled_from(list("\u2581 \n\tab日👍🏽")),
        max_size=40,
    )
)
def test_round_trip_and_byte_counts(tiny_tokenizer: hat.BPETokenizer, text: str) -> None:
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert int(tiny_tokenizer.token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_special_tokens_spell_no_bytes(tiny_tokenizer: hat.BPETokenizer) -> None:
    tok = tiny_tokenizer
    assert [int(tok.token_bytes[i]) for i in (tok.bos_id, tok.eos_id, tok.pad_id)] == [0, 0, 0]


def test_not_a_tokenizer_file(tmp_path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="tokenizer.model"):
        hat.BPETokenizer(path)
