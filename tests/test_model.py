"""The model is right: causal, document-isolated, consistent between its interfaces."""

from __future__ import annotations

import json
import math

import pytest
import torch

import hat
from hat.batching import collate_documents, document_words
from hat.block import AttentionMask

ADVERSARIAL = [
    "It's 3.14, not 1,000. Don't!",
    "日本語のテキスト、中文。",
    "Thumbs 👍🏽 family 👨‍👩‍👧 flags 🇩🇪",
    "runs   of\n\n\n  spaces\t\tand\r\nnewlines  ",
    "long " + "x" * 130 + "ü" * 60 + " end",  # words beyond the 100-byte cap
    "camelCaseHTTPServer iPhone",
    "NUL\x00bytes\x00",
    "mixed a \t\u0301 b  \u200dc",  # whitespace then combining marks: the splitter's hard case
]


def tiny(**overrides) -> hat.HATForCausalLM:
    torch.manual_seed(0)
    cfg = hat.HATConfig.from_name("tiny")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return hat.HATForCausalLM(cfg).eval()


@pytest.mark.parametrize("variant", [{}, {"splitter": "whitespace", "decoder_guide": "every"}])
@pytest.mark.parametrize("text", ADVERSARIAL)
def test_causality_prefix_resplit(text: str, variant: dict) -> None:
    """The log-prob of every byte is unchanged when later text is appended (and re-split)."""
    model = tiny(**variant)
    full = model.byte_logprobs(text)
    for cut in range(1, len(text)):
        prefix = text[:cut]
        n = len(prefix.encode("utf-8"))
        torch.testing.assert_close(model.byte_logprobs(prefix), full[:n], atol=1e-5, rtol=0)


def test_causality_random_texts() -> None:
    """Different continuations of the same prefix never change the prefix's log-probs."""
    model = tiny()
    gen = torch.Generator().manual_seed(1)
    alphabet = list("abc XYZ.,'\n日👍") + ["é", "🏽"]
    for _ in range(8):
        prefix = "".join(alphabet[i] for i in torch.randint(len(alphabet), (40,), generator=gen))
        a = "".join(alphabet[i] for i in torch.randint(len(alphabet), (20,), generator=gen))
        b = "".join(alphabet[i] for i in torch.randint(len(alphabet), (20,), generator=gen))
        n = len(prefix.encode("utf-8"))
        torch.testing.assert_close(
            model.byte_logprobs(prefix + a)[:n],
            model.byte_logprobs(prefix + b)[:n],
            atol=1e-5,
            rtol=0,
        )


def test_future_byte_never_changes_earlier_logits() -> None:
    """Gradient check of causality: d logits[t] / d embedding[s] == 0 for s > t."""
    model = tiny()
    batch = collate_documents([document_words("The cat sat on the mat, did it?", model.splitter)])
    embeds = []
    handle = model.encoder.embed.register_forward_hook(
        lambda m, i, o: embeds.append(o) or o.retain_grad()
    )
    logits = model(**batch).logits[0]
    handle.remove()
    seq = logits.shape[0]
    for t in (3, 10, seq - 2):
        model.zero_grad()
        embeds[0].grad = None
        logits[t].sum().backward(retain_graph=True)
        grad = embeds[0].grad[0].abs().sum(-1)  # [T]
        assert torch.all(grad[t + 1 :] == 0), f"position {t} sees the future"
        assert grad[: t + 1].sum() > 0


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_document_isolation(kind: str, tiny_bpe) -> None:
    """A document's scores do not depend on what precedes it in the pack."""
    first, second = "Some earlier document. " * 3, "The second one, scored alone."
    if kind == "hat":
        model = tiny()
        words = document_words(first, model.splitter) + document_words(second, model.splitter)
        batch = collate_documents([words])
        alone = model.byte_logprobs(second)
        n = len(second.encode())
    else:
        model, tok = tiny_bpe, tiny_bpe.tokenizer
        ids = [tok.bos_id, *tok.encode(first), tok.bos_id, *tok.encode(second)]
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([ids[1:] + [-100]])}
        n = len(tok.encode(second))
        alone_ids = [tok.bos_id, *tok.encode(second)]
        out = model(input_ids=torch.tensor([alone_ids]))
        alone = torch.log_softmax(out.logits[0, :-1].float(), -1).gather(
            1, torch.tensor(alone_ids[1:])[:, None]
        )[:, 0]
    out = model(**batch)
    logp = torch.log_softmax(out.logits[0].float(), -1)
    labels = batch["labels"][0]
    packed = logp[torch.arange(len(labels)), labels.clamp_min(0)][labels >= 0]
    torch.testing.assert_close(packed[-n:], alone[-n:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_gradients_reach_every_parameter(kind: str, tiny_bpe) -> None:
    model = (tiny(decoder_guide="every") if kind == "hat" else tiny_bpe).train()
    texts = ["First document here.", "A second, longer document with more words in it."]
    if kind == "hat":
        batch = collate_documents([document_words(t, model.splitter) for t in texts])
    else:
        batch = model._collate_for_scoring([model._encode_for_scoring(t, "") for t in texts])
    model(**batch).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_score_agrees_with_loss(kind: str, tiny_bpe) -> None:
    model = tiny() if kind == "hat" else tiny_bpe
    texts = ["Hello there.", "日本語 and emoji 👍🏽", "x"]
    scores = model.score(texts)
    for text, score in zip(texts, scores):
        batch = model._collate_for_scoring([model._encode_for_scoring(text, "")])
        with torch.no_grad():
            out = model(**batch)
        assert math.isclose(-float(out.sum_nll), score, rel_tol=1e-5)
        assert math.isclose(float(out.loss) * int(out.n_targets), -score, rel_tol=1e-5)
    if kind == "hat":
        assert math.isclose(float(model.byte_logprobs(texts[1]).sum()), scores[1], rel_tol=1e-5)


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_score_batched_equals_single_and_uses_context(kind: str, tiny_bpe) -> None:
    model = tiny() if kind == "hat" else tiny_bpe
    texts, contexts = ["cat.", "a much longer text than the other", "dog"], ["The ", "", "A hot "]
    batched = model.score(texts, contexts, batch_size=3)
    single = [model.score([t], [c])[0] for t, c in zip(texts, contexts)]
    assert batched == pytest.approx(single, rel=1e-5, abs=1e-5)
    if kind == "bpe":
        return  # the twin tokenizes context and text separately, so no exact chain rule
    # with context, the score covers only the text's bytes: equal to full minus context
    full, ctx = model.score(["The cat."])[0], model.score(["The "])[0]
    assert batched[0] == pytest.approx(full - ctx, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_save_load_round_trip_is_exact(kind: str, tiny_bpe, tmp_path) -> None:
    model = tiny() if kind == "hat" else tiny_bpe
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    cls = type(model)
    loaded = cls.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    texts = ["Round trip, exactly?"]
    assert model.score(texts) == loaded.score(texts)


def test_corrupt_checkpoint_names_the_file(tiny_hat, tmp_path) -> None:
    tiny_hat.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        hat.HATForCausalLM.from_pretrained(tmp_path)
    tiny_hat.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "unused": 1}))
    with pytest.raises(
        ValueError, match="config.json is (corrupt|truncated)"
    ):  # the manifest notices edits
        hat.HATForCausalLM.from_pretrained(tmp_path)
    cases = {  # a config.json that does not describe the weights is an error that names why
        r"unknown keys \['dimm'\]": {**saved, "encoder": {**saved["encoder"], "dimm": 3}},
        r"keys missing: \['decoder'\]": {k: v for k, v in saved.items() if k != "decoder"},
    }
    for message, broken in cases.items():
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"config.json: .*{message}"):
            hat.HATForCausalLM.from_pretrained(tmp_path, verify=False)
    with pytest.raises(FileNotFoundError, match="config.json"):
        hat.HATForCausalLM.from_pretrained(tmp_path / "missing")


def test_sdpa_and_flex_attention_agree() -> None:
    """The GPU path (flex attention + block mask) computes what the dense-mask path does."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = tiny()
    batch = collate_documents(
        [document_words(t, model.splitter) for t in ["First doc. Second part", "Other"]], pad_to=128
    )
    with torch.no_grad():  # flex attention has no CPU backward; the forward is what we compare
        dense = model(**batch).logits
    model.config.attn_impl = "flex"
    try:
        with torch.no_grad():
            flex = model(**batch).logits
    except Exception as err:  # flex attention's CPU support varies by torch build
        pytest.skip(f"flex attention unavailable on CPU here: {err}")
    torch.testing.assert_close(flex, dense, atol=1e-4, rtol=1e-4)


def test_mask_is_causal_windowed_and_per_document() -> None:
    doc_ids = torch.tensor([[0, 0, 0, 0, 1, 1]])
    mask = AttentionMask.packed(doc_ids, window=2, impl="sdpa").dense[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_mixed_precision_pools_in_one_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast the projections give bf16 while the learned query is fp32; the
    fused kernel takes a single dtype (it raised on GPU), so the pooler must hand it one."""
    model = tiny()
    seen = []
    pool = hat.pooling.hat_kernels.ragged_attention_pool

    def spy(q, k, v, offsets, impl="auto"):
        seen.append((q.dtype, k.dtype, v.dtype))
        return pool(q, k, v, offsets, impl=impl)

    monkeypatch.setattr(hat.pooling.hat_kernels, "ragged_attention_pool", spy)
    batch = collate_documents([document_words("Mixed precision, one dtype.", model.splitter)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    assert seen == [(torch.bfloat16,) * 3]
    assert math.isfinite(float(out.loss))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_training_step_matches_fp32() -> None:
    """What hat-train does on a GPU: bf16 autocast, flex attention, the Triton pooling kernel;
    its loss and gradients stay close to the fp32 reference path of the same model."""
    model = tiny().cuda().train()
    texts = ["It is a truth universally acknowledged. " * 4, "日本語のテキスト 👍🏽 " * 6]
    batch = collate_documents([document_words(t, model.splitter) for t in texts], pad_to=512)
    batch = {k: v.cuda() for k, v in batch.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.config.attn_impl, model.pooler.impl = "sdpa", "reference"
    reference = model(**batch).loss
    reference.backward()
    assert float(loss) == pytest.approx(float(reference), rel=2e-2)
    for name, param in model.named_parameters():
        cos = torch.nn.functional.cosine_similarity(
            grads[name].flatten(), param.grad.flatten(), dim=0
        )
        assert cos > 0.95, name
