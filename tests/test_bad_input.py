"""Bad input gets a clear result or a clear error, never a crash deep inside or a NaN."""

from __future__ import annotations

import math

import pytest
import torch

import hat
from hat.tokenizer import PAD_ID


@pytest.fixture(params=["hat", "bpe"])
def model(request, tiny_hat, tiny_bpe):
    return tiny_hat if request.param == "hat" else tiny_bpe


def test_empty_text_scores_zero(model) -> None:
    assert model.score([""]) == [0.0]
    assert model.score(["", "a"])[0] == 0.0


def test_empty_text_byte_logprobs(tiny_hat) -> None:
    assert tiny_hat.byte_logprobs("").numel() == 0


def test_invalid_utf8_is_a_clear_error(model) -> None:
    with pytest.raises(ValueError, match="not valid UTF-8"):
        model.score([b"caf\xc3"])
    with pytest.raises(ValueError, match="not valid UTF-8"):
        model.score([b"ok"], [b"\xff"])


def test_valid_bytes_are_accepted(model) -> None:
    assert model.score(["café".encode()]) == pytest.approx(model.score(["café"]))


def test_nul_bytes_and_cjk_score_finite(model) -> None:
    for text in ["a\x00b\x00\x00", "\x00", "日本語のテキスト", "👨‍👩‍👧"]:
        (value,) = model.score([text])
        assert math.isfinite(value) and value < 0


def test_megabyte_word_is_a_clear_error(model) -> None:
    with pytest.raises(ValueError, match="over max_seq"):
        model.score(["x" * 1_000_000])


def test_single_string_instead_of_list(model) -> None:
    with pytest.raises(TypeError, match="list of texts"):
        model.score("just one")


def test_context_length_mismatch(model) -> None:
    with pytest.raises(ValueError, match="contexts"):
        model.score(["a", "b"], ["only one"])


def test_bad_config_values_say_what_to_change() -> None:
    cfg = hat.HATConfig.from_name("tiny")
    cfg.decoder.dim = 96
    with pytest.raises(ValueError, match="decoder.dim"):
        hat.HATForCausalLM(cfg)
    with pytest.raises(ValueError, match="unknown HATConfig preset"):
        hat.HATConfig.from_name("huge")
    with pytest.raises(ValueError, match=r"HATConfig: unknown keys \[.encoderr.\]"):
        hat.HATConfig.from_dict({"encoderr": {}})
    cfg = hat.HATConfig.from_name("tiny")
    cfg.backbone.n_heads = 3
    with pytest.raises(ValueError, match="backbone.dim"):
        cfg.validate()
    # the full forward ignores a backbone window while the caches would slide: refused
    for cfg in (hat.HATConfig.from_name("tiny"), hat.BPEConfig.from_name("bpe_tiny")):
        cfg.backbone.window = 4
        with pytest.raises(ValueError, match="backbone.window=null"):
            cfg.validate()


def test_lone_surrogate_is_a_clear_error(model) -> None:
    """A str with a lone surrogate has no UTF-8 bytes: say so, for scoring and generation."""
    for call in (
        lambda: model.score(["ok \ud800 then"]),
        lambda: model.score(["ok"], ["context \udcff"]),
        lambda: model.generate("prompt \ud800", max_new_tokens=2),
    ):
        with pytest.raises(ValueError, match="lone surrogate"):
            call()


def test_tokenizer_rejects_lone_surrogates(tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        tiny_tokenizer.encode("a\ud800b")


def test_tokenizer_vocabulary_larger_than_the_text_supports(tmp_path) -> None:
    """sentencepiece's 'Vocabulary size too high' becomes an error that says what to change;
    ``hard_vocab_limit=False`` (the speed benchmarks) takes as many pieces as there are."""
    text = ["the cat sat on the mat, and the dog sat on the log"] * 20
    with pytest.raises(ValueError, match=r"more than this text supports \(at most \d+\)"):
        hat.BPETokenizer.train(text, vocab_size=5000, output_file=tmp_path / "a.model")
    tok = hat.BPETokenizer.train(text, 5000, tmp_path / "b.model", hard_vocab_limit=False)
    assert 256 < len(tok) < 5000 and tok.decode(tok.encode(text[0])) == text[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": -1}, "batch_size must be a whole number >= 1, got -1"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a whole number >= 1, got 2.5"),
        ({"window_bytes": 2.5, "rolling": True}, r"window_bytes=2.5 must be in \[8, "),
        ({"window_bytes": 2.5}, r"window_bytes=2.5 must be in \[8, "),  # not ignored either
    ],
)
def test_score_arguments_are_checked(model, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.score(["some text"], **kwargs)


def test_generate_arguments_are_checked(model) -> None:
    every_id = list(range(len(model.generation_spec().token_bytes)))
    cases = [
        ({"temperature": float("inf"), "do_sample": True}, "temperature must be a finite number"),
        ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number, got 2.5"),
        ({"suppress_tokens": every_id}, "leave no id that can be generated; suppress fewer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.generate("a prompt", **kwargs)


def test_odd_prompts_generate_and_a_too_long_one_is_named(model) -> None:
    for prompt in ["日本語のテキスト", "a\x00b", "👨‍👩‍👧"]:
        assert isinstance(model.generate(prompt, max_new_tokens=3), str)
    with pytest.raises(ValueError, match="longer than the model's context"):
        model.generate("x" * 200_000, max_new_tokens=3)


def test_twin_takes_transformers_style_labels(tiny_bpe) -> None:
    """``labels=input_ids`` (transformers' convention) is shifted inside, not read as targets
    already aligned (which would score each token against itself): the loss is score()'s."""
    tok = tiny_bpe.tokenizer
    texts = ["The cat sat on the mat.", "Emma was"]
    rows = [[tok.bos_id, *tok.encode(t)] for t in texts]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])
    attention_mask = (input_ids != PAD_ID).long()
    with torch.no_grad():
        out = tiny_bpe(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    assert float(out.sum_nll) == pytest.approx(-sum(tiny_bpe.score(texts)), rel=1e-5)
    assert int(out.n_targets) == sum(len(r) - 1 for r in rows)
    assert float(out.text_bytes) == sum(len(t.encode()) for t in texts)


def test_collating_no_documents_or_an_empty_one() -> None:
    """No documents is an error that says so; a document of no words is one padding word."""
    from hat.batching import collate_documents

    with pytest.raises(ValueError, match="at least one document"):
        collate_documents([])
    batch = collate_documents([[], [b"\xc0", b"ab"]])
    assert batch["input_ids"].shape == (2, 3) and batch["word_lengths"][0].tolist() == [3, 0, 0]


def test_empty_words_change_nothing(tiny_hat) -> None:
    """An empty word (b"") handed to collate_documents has no bytes, so it must change nothing.
    It used to become a zero-length slot mid-row, which layout_words reads as padding: the next
    word restarted its document's word positions and got the first-word guide."""
    from hat.batching import collate_documents

    words = [b"\xc0", b"ab ", b"cd"]
    with torch.no_grad():
        want = tiny_hat(**collate_documents([words])).logits
        batch = collate_documents([[b"", words[0], words[1], b"", words[2], b""]])
        got = tiny_hat(**batch).logits
    torch.testing.assert_close(got, want)
    assert batch["word_lengths"].tolist() == [[1, 3, 2, 0]]


def test_collating_the_padding_byte_is_a_clear_error() -> None:
    """Byte 255 (PAD, never in UTF-8) inside a document would silently start the padding tail's
    document mid-text (``document_starts``): refused, like invalid UTF-8 elsewhere."""
    from hat.batching import collate_documents

    with pytest.raises(ValueError, match="byte 255"):
        collate_documents([[b"\xc0", b"a\xffb"]])


@pytest.mark.parametrize(
    "word_lengths", [[[1, 3, 1, 0]], [[1, 3, 2, 1]], [[1, 3, 2], [1, 3, 2]], [[1, -1, 5, 1]]]
)
def test_word_lengths_that_do_not_fit_the_bytes_are_a_clear_error(tiny_hat, word_lengths) -> None:
    """Word lengths must be one row per row of input_ids, none negative, each row summing to
    its byte count: otherwise an error that says so, not one from deep inside torch."""
    input_ids = torch.tensor([[192, 97, 98, 32, 99, 100]])
    with pytest.raises(ValueError, match="word_lengths"):
        tiny_hat(input_ids=input_ids, word_lengths=torch.tensor(word_lengths))
