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


HAT_SETTINGS = {  # what BPETokenizer.train sets that sentencepiece's defaults do not
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": False,
    "remove_extra_whitespaces": False,
}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "no byte fallback"),  # unseen characters -> <unk>
        ({"byte_fallback": True}, "does not give back the bytes"),  # NFKC, dummy prefix
        ({**HAT_SETTINGS, "eos_id": -1}, r"expected unk_id=0.*got \(0, 1, -1, 3\)"),  # id 2: <0x00>
    ],
)
def test_a_tokenizer_that_loses_bytes_is_refused(
    settings: dict, message: str, sample_text: str, tmp_path
) -> None:
    """A sentencepiece model with the right BOS and PAD ids but other settings than ``train``'s
    loses bytes (to <unk>, normalisation, a dropped id): bits per byte would be counted over
    fewer bytes than the text has, silently."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    ids = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample_text[:50_000].splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        minloglevel=2,
        **{**ids, **settings},
    )
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model.getvalue())
    with pytest.raises(ValueError, match=message):
        hat.BPETokenizer(path)


def test_long_lines_of_many_byte_characters_are_trained_on(tmp_path) -> None:
    """Lines are cut to ``max_sentence_bytes`` *bytes* (sentencepiece's limit): cut to that many
    characters, a line of 3-byte characters was still too long and sentencepiece skipped it."""
    cjk = "日本語の文字です。" * 60  # 540 characters, 1,620 bytes
    texts = ["plain ascii text, a line of it\n" * 200, "\n".join([cjk] * 50)]
    tok = hat.BPETokenizer.train(
        texts, 300, tmp_path / "t.model", max_sentence_bytes=1000, hard_vocab_limit=False
    )
    word = "日本語の文字"
    assert len(tok.encode(word)) < len(word.encode("utf-8"))  # pieces, not byte fallback


@pytest.mark.parametrize(
    ("texts", "vocab_size", "message"),
    [
        (["abc def " * 100], 262, "at least 269"),  # bytes, specials, \n, \t and its characters
        (["", " \n\t\n"], 300, "no text to train on"),
    ],
)
def test_training_errors_say_what_to_change(texts, vocab_size, message, tmp_path) -> None:
    with pytest.raises(ValueError, match=message):
        hat.BPETokenizer.train(texts, vocab_size, tmp_path / "t.model")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["model=tiny"], "model=tiny has no vocabulary (a HAT preset?)"),
        (["model=bpe_tiny", "vocab_size=263"], "it needs at least"),
    ],
)
def test_cli_errors_are_one_line(settings: list[str], message: str, tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "tok.model"
    args = [sys.executable, "-m", "hat.cli.train_tokenizer", *settings, f"output={out}"]
    proc = subprocess.run([*args, "max_bytes=100000"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hat-tokenizer: error: ") and message in last, last
    assert not out.exists()
