"""HATTokenizer as transformers users use it: tokens as strings, save/load, and
``model(**tokenizer(texts, return_tensors="pt"), labels=...)`` on HAT."""

from __future__ import annotations

import math

import pytest
import torch

import hat
from hat.batching import collate_documents, document_words
from hat.hf_tokenizer import HATTokenizer

TEXTS = ["The cat sat on the mat.", "Zwölf Boxkämpfer", "日本語"]


def test_tokens_are_bytes_as_strings() -> None:
    tok = HATTokenizer()
    assert tok.tokenize("hé") == ["h", "Ã", "©"]  # ByT5's convention: chr(byte)
    ids = tok.encode("hé")
    assert tok.convert_ids_to_tokens(ids) == ["<eod>", "h", "Ã", "©"]
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["h", "Ã", "©"]
    assert tok.convert_ids_to_tokens(255) == "<pad>"
    assert tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(ids)) == ids
    assert tok.convert_tokens_to_string(tok.tokenize("日本")) == "日本"
    assert len(tok.get_vocab()) == 256 and tok.get_vocab()["<eod>"] == 192
    with pytest.raises(ValueError, match="not a HAT token"):
        tok.convert_tokens_to_ids("ab")


def test_save_and_load(tmp_path, tiny_hat, tiny_bpe) -> None:
    files = HATTokenizer(padding_side="right", model_max_length=77).save_pretrained(tmp_path / "t")
    assert files[0].endswith("tokenizer_config.json")
    loaded = HATTokenizer.from_pretrained(tmp_path / "t")
    assert (loaded.padding_side, loaded.model_max_length) == ("right", 77)
    assert HATTokenizer.from_pretrained(tmp_path / "t", padding_side="left").padding_side == "left"
    # a saved HAT model directory: the model's context is the tokenizer's max length
    tiny_hat.save_pretrained(tmp_path / "m")
    assert HATTokenizer.from_pretrained(tmp_path / "m").model_max_length == (
        tiny_hat.config.max_seq_bytes
    )
    tiny_bpe.save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="BPETokenizer"):
        HATTokenizer.from_pretrained(tmp_path / "b")
    with pytest.raises(TypeError, match="unknown arguments"):
        HATTokenizer.from_pretrained(tmp_path / "t", vocab_file="vocab.json")


@pytest.mark.parametrize("side", ["left", "right"])
def test_model_on_tokenizer_batch_equals_native_batch(tiny_hat, side) -> None:
    """Words come from the model's splitter: logits on real bytes equal those of the batch
    ``collate_documents`` builds (the trainer's and score's format), whatever the padding."""
    tok = HATTokenizer(padding_side=side)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    logits = tiny_hat(**batch).logits
    for row, text in enumerate(TEXTS):
        native = collate_documents([document_words(text, tiny_hat.splitter)])
        expected = tiny_hat(**native).logits[0]
        real = batch["attention_mask"][row].bool()
        torch.testing.assert_close(logits[row, real], expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_labels_give_transformers_loss(tiny_hat, side) -> None:
    """labels = input_ids (transformers' convention, shifted inside): the loss is the mean
    negative log-likelihood of every text byte, as score() measures it."""
    batch = HATTokenizer(padding_side=side)(TEXTS, return_tensors="pt", padding=True)
    out = tiny_hat(**batch, labels=batch["input_ids"])
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert out.n_targets == n_bytes
    assert out.loss.item() == pytest.approx(-sum(tiny_hat.score(TEXTS)) / n_bytes, rel=1e-5)
    assert out.bits_per_byte == pytest.approx(out.loss.item() / math.log(2), rel=1e-5)
    # -100 labels are not predicted: ignore everything after the first text's 4th byte
    labels = batch["input_ids"].clone()
    labels[0, batch["attention_mask"][0].nonzero()[5:, 0]] = -100
    assert tiny_hat(**batch, labels=labels).n_targets == n_bytes - (len(TEXTS[0]) - 4)


def test_tokenizer_batch_errors(tiny_hat) -> None:
    tok = HATTokenizer()
    with pytest.raises(ValueError, match="document-start byte"):
        tiny_hat(**tok(["abc"], return_tensors="pt", add_special_tokens=False))
    truncated = tok(["日本"], return_tensors="pt", truncation=True, max_length=3)  # EOD + 2 of 3
    assert tiny_hat(**truncated).logits.shape == (1, 3, 256)  # a cut character still runs


def test_generate_takes_tokenizer_output(tiny_hat) -> None:
    tok = HATTokenizer()
    batch = tok(["Hello", "Hi"], return_tensors="pt", padding=True)
    ids = tiny_hat.generate(**batch, max_new_tokens=4)
    assert ids.shape == (2, batch["input_ids"].shape[1] + 4)
    assert isinstance(hat.HATTokenizer().batch_decode(ids, skip_special_tokens=True)[0], str)


def test_transformers_call_conventions() -> None:
    """What transformers users pass: batch_decode's decode options, encode(return_tensors=),
    a batch to decode (transformers 5), truncation strategy names, padding="max_length" up
    to model_max_length when no max_length is given."""
    tok = HATTokenizer(model_max_length=6)
    ids = torch.tensor([tok.encode("hé"), tok.encode("abc")])  # 4 ids each
    texts = tok.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert texts == ["hé", "abc"]
    assert torch.equal(tok.encode("hé", return_tensors="pt"), torch.tensor([[192, 104, 195, 169]]))
    assert tok.decode(ids, skip_special_tokens=True) == ["hé", "abc"]  # [B, T]: a text a row
    assert tok.decode(ids.tolist()) == ["<eod>hé", "<eod>abc"]
    assert tok.decode(ids[0]) == "<eod>hé"
    # "do_not_truncate" is transformers' name for no truncation (not a truthy "yes")
    assert tok("abcdef", truncation="do_not_truncate", max_length=3)["input_ids"] == [
        192,
        *b"abcdef",
    ]
    assert tok("abcdef", truncation="longest_first", max_length=3)["input_ids"] == [192, *b"ab"]
    assert tok("ab", padding="max_length")["input_ids"] == [255, 255, 255, 192, 97, 98]
    with pytest.raises(ValueError, match="max_length"):
        HATTokenizer()("ab", padding="max_length")
