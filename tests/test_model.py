"""The model is right: causal, document-isolated, consistent between its interfaces."""

from __future__ import annotations

import copy
import json
import math
import os
import warnings

import pytest
import torch

import hat
from hat import batching
from hat.batching import collate_documents, document_words
from hat.block import (
    Attention,
    AttentionMask,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    Transformer,
    chunked_attention,
    rope_angles,
    rotate,
)
from hat.config import TransformerConfig
from hat.pooling import WordPooler

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
def test_rows_of_one_document_take_sdpa_causal(
    kind: str, tiny_bpe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of one document each before their padding (what score() collates) attend with
    SDPA's causal mask, not a dense [S, S] one; loss and the logits of every real position
    are those of the dense mask. Packed rows of several documents, and padding that is not at
    the end, keep the dense mask."""
    model = tiny() if kind == "hat" else tiny_bpe
    texts = ["One document, scored alone. " * 3, "Another, shorter."]
    if kind == "hat":
        batch = collate_documents([document_words(t, model.splitter) for t in texts])
        real = batch["input_ids"] != hat.splitter.PAD
    else:
        batch = model._collate_for_scoring([model._encode_for_scoring(t, "") for t in texts])
        real = batch["input_ids"] != hat.tokenizer.PAD_ID
    assert not real.all()  # the shorter row is padded
    causal = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        causal.append(kwargs.get("is_causal", False))
        return sdpa(*args, **kwargs)

    two_docs = torch.tensor([[0] * 5 + [1] * 5])
    tail = torch.tensor([[False] * 8 + [True] * 2])
    assert AttentionMask.packed(two_docs, None, "sdpa", tail).dense is not None
    head = torch.tensor([[True] * 5 + [False] * 5])  # left padding: queries would see it
    assert AttentionMask.packed(two_docs, None, "sdpa", head).dense is not None
    assert AttentionMask.packed(two_docs, None, "sdpa", head.flip(1)).causal

    monkeypatch.setattr(hat.block.F, "scaled_dot_product_attention", spy)
    fast = model(**batch)
    assert any(causal)
    monkeypatch.setattr(hat.block, "one_document_per_row", lambda doc_ids, padding: False)
    causal.clear()
    dense = model(**batch)
    assert not any(causal)
    torch.testing.assert_close(fast.logits[real], dense.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.loss, dense.loss, atol=1e-6, rtol=1e-6)


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


def test_row_groups_bound_the_positions_of_a_cpu_forward(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(batching, "CPU_FORWARD_POSITIONS", 100)
    assert batching.row_groups([40] * 5, cpu) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert batching.row_groups([400, 30, 20, 10], cpu) == [slice(0, 1), slice(1, 4)]
    assert batching.row_groups([10] * 3, cpu) == [slice(0, 3)]
    assert batching.row_groups([400] * 3, torch.device("meta")) == [slice(0, 3)]  # no bound


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_score_splits_batches_of_long_rows_on_a_cpu(kind: str, tiny_bpe, monkeypatch) -> None:
    """A batch of more positions than ``CPU_FORWARD_POSITIONS`` runs as several forwards
    (rows longest first, consecutive); the scores stay those of the whole batch."""
    model = tiny() if kind == "hat" else tiny_bpe
    texts = ["a much longer text than the others, by far", "cat.", "日本語 👍🏽", "dog", "x y z"]
    whole = model.score(texts, batch_size=5, return_greedy=True)
    forwards = []
    hook = model.register_forward_hook(lambda module, args, output: forwards.append(1))
    monkeypatch.setattr(batching, "CPU_FORWARD_POSITIONS", 24)
    try:
        split = model.score(texts, batch_size=5, return_greedy=True)
    finally:
        hook.remove()
    assert len(forwards) > 1
    assert [g for _, g in split] == [g for _, g in whole]
    assert [v for v, _ in split] == pytest.approx([v for v, _ in whole], rel=1e-5, abs=1e-5)


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


@pytest.mark.parametrize(
    ("window", "length"), [(33, 256), (64, 256), (100, 256), (33, 250), (100, 193)]
)
def test_chunked_sliding_window_attention_equals_the_dense_mask(window: int, length: int) -> None:
    """Chunks of queries over their window of keys compute what one dense mask does: outputs
    and gradients, across document boundaries, grouped-query heads included, and for rows
    that are no multiple of the chunk (padded inside, the padding's outputs dropped)."""
    torch.manual_seed(0)
    doc_ids = torch.tensor([[0] * 50 + [1] * 150 + [2] * 56, [0] * 256, [0] * 255 + [1]])
    doc_ids = doc_ids[:, :length]
    chunked = AttentionMask.packed(doc_ids, window, impl="sdpa")
    assert chunked.chunk  # a window well below the row: the chunked layout
    idx = torch.arange(length)
    dense = (idx[None] <= idx[:, None]) & (idx[:, None] - idx[None] < window)
    dense = (dense & (doc_ids[:, :, None] == doc_ids[:, None]))[:, None]
    q = torch.randn(3, 4, length, 8, requires_grad=True)
    k, v = (torch.randn(3, 2, length, 8, requires_grad=True) for _ in range(2))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=dense, enable_gqa=True
    )
    out = chunked_attention(q, k, v, chunked, gqa=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # without autograd the rows run one at a time, their key prefixes and windows views of k
    # and v; here also of non-contiguous ones, as the attention layer's are
    with torch.no_grad():
        out = chunked_attention(q, k, v, chunked, gqa=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for row in range(3):
        k_t, v_t = (x[row : row + 1].detach().transpose(1, 2).contiguous() for x in (k, v))
        with torch.no_grad():
            mask = AttentionMask.packed(doc_ids[row : row + 1], window, impl="sdpa")
            out = chunked_attention(
                q[row : row + 1], k_t.transpose(1, 2), v_t.transpose(1, 2), mask, gqa=True
            )
        torch.testing.assert_close(out, ref[row : row + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pad_to", [256, None])
def test_model_with_chunked_attention_equals_dense(
    monkeypatch: pytest.MonkeyPatch, pad_to: int | None
) -> None:
    """The byte stacks of a 256-byte row, or of a row of the longest document's length (no
    multiple of the chunk), run chunked attention; the loss and logits are those of the dense
    mask (CHUNK = 512: chunks longer than the row take the dense path)."""
    model = tiny()
    texts = ["First doc. Second part of it, " * 3, "Other", "x " * 60, "A longer one. " * 14]
    batch = collate_documents([document_words(t, model.splitter) for t in texts], pad_to=pad_to)
    seq = batch["input_ids"].shape[1]
    assert seq == 256 if pad_to else seq % 64
    assert AttentionMask.packed(torch.zeros(1, seq), 32).chunk
    chunked = model(**batch)
    monkeypatch.setattr(hat.block, "CHUNK", 512)
    assert not AttentionMask.packed(torch.zeros(1, seq), 32).chunk
    dense = model(**batch)
    torch.testing.assert_close(chunked.logits, dense.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.loss, dense.loss, atol=1e-6, rtol=1e-6)


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


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_backbone_residual_stream_is_fp32_under_autocast(kind: str, tiny_bpe) -> None:
    """Both models' backbones add their layers' outputs to an fp32 residual stream under bf16
    autocast (HAT's input comes from the pooler's Linear, in bf16; the twin's from an
    embedding, in fp32), and a model cast to bf16 keeps bf16."""
    model = tiny() if kind == "hat" else tiny_bpe
    seen = []
    first = model.backbone.transformer.layers[0]
    hook = first.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.score(["Mixed precision, both twins alike."])
        half = copy.deepcopy(model).to(torch.bfloat16)
        with torch.no_grad():
            half.score(["Mixed precision, both twins alike."])
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16]


def test_norms_under_autocast_take_the_fused_kernel() -> None:
    """Under bf16 autocast a norm can see bf16 activations and fp32 weights (QK-norm on a
    projection's output); torch runs its fused RMSNorm (one kernel on a GPU) only when the two
    dtypes agree, and falls back to several ops otherwise. The norm must still match fp32 and
    train its fp32 weight."""
    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(32, 64)
    with torch.profiler.profile() as prof, torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())
    ops = {e.name for e in prof.events()}
    assert "aten::_fused_rms_norm" in ops, sorted(n for n in ops if n.startswith("aten::"))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(x), atol=3e-2, rtol=2e-2)
    out.float().sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.dtype == torch.float32


@pytest.mark.gpu  # and on a CPU with HAT_TEST_COMPILE=1
@pytest.mark.skipif(
    not torch.cuda.is_available() and not os.environ.get("HAT_TEST_COMPILE"),
    reason="compiles create_block_mask (inductor: ~30 s on a CPU; HAT_TEST_COMPILE=1)",
)
def test_compiled_block_mask_matches_eager_without_deprecated_flag() -> None:
    """On a GPU the flex path compiles create_block_mask (never the [B, S, S] mask); through
    torch.compile of the function, not its deprecated ``_compile`` flag, which warns on every
    mask, i.e. every training step."""
    from hat.block import _create_block_mask, _flex_block_mask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    doc_ids = torch.tensor([[0] * 100 + [1] * 156, [0] * 256], device=device)

    def mask_mod(b, h, q, k):  # noqa: ANN001, ANN202
        ok = (k <= q) & (doc_ids[b, q] == doc_ids[b, k])
        return ok & (q - k < 64)

    eager = _create_block_mask(False)(mask_mod, 2, None, 256, 256, device=device)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*_compile flag")
        compiled = _create_block_mask(True)(mask_mod, 2, None, 256, 256, device=device)
        packed = _flex_block_mask(doc_ids, 64)  # compiled on a GPU
    for mask in (compiled, packed):
        assert torch.equal(mask.to_dense(), eager.to_dense())
        assert torch.equal(mask.kv_num_blocks, eager.kv_num_blocks)
        assert torch.equal(mask.full_kv_num_blocks, eager.full_kv_num_blocks)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_scoring_rows_of_many_lengths_compiles_a_few_graphs() -> None:
    """score() collates rows to each batch's longest document; compiled flex attention must
    not compile a graph per length (past dynamo's limit it would fall back to the uncompiled
    kernel, which materialises the scores)."""
    from torch._dynamo.utils import counters

    model = tiny().cuda()
    texts = ["word " * n for n in (40, 57, 71, 90, 113, 131, 150, 177, 199, 230)]
    counters.clear()
    scores = model.score(texts, batch_size=1)  # ten row lengths
    assert all(math.isfinite(s) for s in scores)
    # a graph per length would be >= 20 here (flex and its block mask, bytes and words, ten
    # lengths); automatic dynamic shapes need a few per kind of call
    assert counters["stats"]["unique_graphs"] <= 12, dict(counters["stats"])
    reference = [model.cpu().score([t])[0] for t in texts]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(reference), rtol=1e-3, atol=1e-2)


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


# ---- one implementation: RoPE table, KV cache, fused projections ------------------------------
def textbook_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as usually written, in fp32 (the formula the table must reproduce exactly)."""
    cos, sin = rope_angles(positions, x.shape[-1], theta)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def test_swiglu_paths_agree() -> None:
    """Training runs SwiGLU as two products with the halves of its fused weight, inference as
    one product cut in two: the same outputs, and the gradients of the one-product formula."""
    torch.manual_seed(0)
    mlp = SwiGLU(16, 24)
    x = torch.randn(10, 16, requires_grad=True)
    out = mlp(x)
    with torch.no_grad():
        torch.testing.assert_close(out, mlp(x), atol=1e-6, rtol=1e-6)
    grad = torch.randn_like(out)
    gate, up = mlp.gate_up(x).chunk(2, dim=-1)
    reference = mlp.down(torch.nn.functional.silu(gate) * up)
    params = (x, mlp.gate_up.weight, mlp.down.weight)
    for a, b in zip(
        torch.autograd.grad(out, params, grad), torch.autograd.grad(reference, params, grad)
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_table_rotates_exactly_as_the_formula(dtype: torch.dtype) -> None:
    rope = RotaryEmbedding(32, 10000.0)
    rope.reserve(6000)
    pos = torch.randint(0, 6000, (3, 5))
    x = torch.randn(3, 5, 6, 32).to(dtype)
    assert torch.equal(rotate(x, *rope(pos)), textbook_rope(x, pos, 10000.0))
    # an int start: views of the same rows, shared by every row; the table grows on demand
    first = 9000
    span = torch.arange(first, first + 5)
    assert torch.equal(rotate(x, *rope(first, 5)), textbook_rope(x, span.expand(3, -1), 10000.0))
    assert rope.cos.shape[0] >= first + 5


def test_rope_table_is_no_state_and_stays_fp32(tiny_hat: hat.HATForCausalLM) -> None:
    assert not [k for k in tiny_hat.state_dict() if "rope" in k or k.endswith((".cos", ".sin"))]
    batch = collate_documents([document_words("In bf16, the angles stay fp32.", tiny_hat.splitter)])
    model = tiny_hat.to(torch.bfloat16)
    with torch.no_grad():
        model(**batch)
    tables = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    assert len(tables) == 4 and all(t.cos.dtype == torch.float32 for t in tables)


def test_kv_cache_writes_where_it_is_told() -> None:
    cache = KVCache(2, 1, 4, capacity=4)
    k = torch.arange(24.0).view(2, 1, 3, 4)
    keys, values = cache.update(k, -k, 0)  # positions 0..2
    assert torch.equal(keys, k) and torch.equal(values, -k)
    new = torch.full((2, 1, 1, 4), 99.0)
    keys, _ = cache.update(new, -new, 1)  # recompute position 1: returns positions [0, 2)
    assert keys.shape[2] == 2 and torch.equal(keys[:, :, 0], k[:, :, 0])
    assert torch.equal(keys[:, :, 1], new[:, :, 0])
    more = torch.ones(2, 1, 6, 4)
    keys, _ = cache.update(more, more, 3)  # past the capacity: no window, so it grows
    assert keys.shape[2] == 9 and torch.equal(keys[:, :, 1], new[:, :, 0])
    assert torch.equal(keys[:, :, 2], k[:, :, 2]) and torch.equal(keys[:, :, 3:], more)


def test_kv_cache_per_row_positions() -> None:
    """The word backbone's case: each row writes its entry at its own position."""
    cache = KVCache(3, 2, 4, capacity=2)
    cache.update(torch.zeros(3, 2, 2, 4), torch.zeros(3, 2, 2, 4), 0)
    new = torch.randn(3, 2, 1, 4)
    keys, values = cache.update(new, 2 * new, torch.tensor([0, 3, 1]), end=4)  # grows to hold 4
    assert keys.shape == (3, 2, 4, 4)
    for row, pos in enumerate([0, 3, 1]):
        assert torch.equal(keys[row, :, pos], new[row, :, 0])
        assert torch.equal(values[row, :, pos], 2 * new[row, :, 0])
        others = [p for p in range(4) if p != pos]
        assert not keys[row, :, others].any()
    # a subset of the rows (the backbone runs only rows that finished a word): rows 2 and 0
    sub = torch.randn(2, 2, 1, 4)
    keys, _ = cache.update(sub, sub, torch.tensor([2, 1]), end=3, rows=torch.tensor([2, 0]))
    assert keys.shape == (2, 2, 3, 4)  # rows 2 and 0, in that order, positions 0..2
    assert torch.equal(keys[0, :, 2], sub[0, :, 0]) and torch.equal(keys[1, :, 1], sub[1, :, 0])
    assert torch.equal(keys[1, :, 0], new[0, :, 0])  # row 0's earlier entry is kept
    assert torch.equal(cache.k[2, :, 2], sub[0, :, 0]) and not cache.k[1, :, :3].any()
    # static shapes: per-row slots without `end` write and return the whole buffers
    keys, _ = cache.update(new, new, torch.tensor([0, 1, 2]))
    assert keys is cache.k and torch.equal(keys[2, :, 2], new[2, :, 0])
    with pytest.raises(ValueError, match="per-row"):
        KVCache(3, 2, 4, capacity=8, window=4).update(new, new, torch.tensor([0, 1, 2]), end=3)


def test_kv_cache_slides_over_its_window() -> None:
    cache = KVCache(1, 1, 2, capacity=10, window=4, keep=6)
    for pos in range(30):  # the value of a key is its position
        keys, _ = cache.update(torch.full((1, 1, 1, 2), float(pos)), torch.zeros(1, 1, 1, 2), pos)
        assert keys[0, 0, :, 0].tolist() == list(map(float, range(max(pos - 3, 0), pos + 1)))
    assert cache.offset > 0 and cache.k.shape[2] == 10  # slid, never grew
    # a recompute up to `keep` back still finds its window ...
    keys, _ = cache.update(torch.full((1, 1, 2, 2), -1.0), torch.zeros(1, 1, 2, 2), 27)
    assert keys[0, 0, :, 0].tolist() == [24.0, 25.0, 26.0, -1.0, -1.0]
    # ... further back it is an error, not a silent wrong answer
    with pytest.raises(ValueError, match="slid past"):
        cache.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), cache.offset)


def causal_mask(queries: torch.Tensor, keys: torch.Tensor, window: int | None) -> AttentionMask:
    ok = keys[None] <= queries[:, None]
    if window is not None:
        ok = ok & (queries[:, None] - keys[None] < window)
    return AttentionMask(dense=ok[None, None])


@pytest.mark.parametrize("window", [None, 3])
def test_stack_with_caches_equals_full_forward(window: int | None) -> None:
    """A stack run in pieces (a prefill, single positions, a chunk, a recomputed chunk) on a
    small cache (that slides or grows) gives what the full forward gives."""
    torch.manual_seed(0)
    cfg = TransformerConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True, window=window
    )
    stack = Transformer(cfg).eval()
    x, seq = torch.randn(2, 12, 32), 12
    idx = torch.arange(seq)
    with torch.no_grad():
        full = stack(x, idx[None].expand(2, -1), causal_mask(idx, idx, window))
        caches = stack.make_caches(2, 8, keep=None if window is None else window + 2, like=x)
        for a, b in [(0, 5), (5, 6), (6, 7), (7, 10), (8, 10), (10, 11), (11, 12)]:
            lo = caches[0].read_start(a)
            mask = causal_mask(idx[a:b], idx[lo:b], window)
            out = stack(x[:, a:b], a, mask, caches, cache_pos=a)
            torch.testing.assert_close(out, full[:, a:b], atol=1e-5, rtol=0)
    assert caches[0].offset > 0 if window else caches[0].k.shape[2] >= seq


def test_stack_with_per_row_positions_equals_full_forward() -> None:
    """Rows that add positions at different steps (the backbone's words): a row without a new
    position writes scratch past its length, which its next position overwrites."""
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2)
    stack = Transformer(cfg).eval()
    x, idx = torch.randn(2, 6, 32), torch.arange(6)
    with torch.no_grad():
        full = stack(x, idx[None].expand(2, -1), causal_mask(idx, idx, None))
        caches = stack.make_caches(2, 3, like=x)
        stack(x[:, :3], 0, causal_mask(idx[:3], idx[:3], None), caches)
        # passes: (position of row 0, of row 1, does row 0 have a real entry)
        for p0, p1, real0 in [(3, 3, False), (3, 4, True), (4, 5, True)]:
            pos = torch.tensor([p0, p1])
            end = max(p0, p1) + 1
            inputs = torch.stack([x[0, p0] if real0 else torch.zeros(32), x[1, p1]])[:, None]
            mask = AttentionMask(dense=(torch.arange(end)[None] <= pos[:, None])[:, None, None])
            out = stack(inputs, pos[:, None], mask, caches, cache_pos=pos, cache_end=end)
            torch.testing.assert_close(out[1, 0], full[1, p1], atol=1e-5, rtol=0)
            if real0:
                torch.testing.assert_close(out[0, 0], full[0, p0], atol=1e-5, rtol=0)


def old_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as the code before fused projections saved it."""
    state = model.state_dict()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Attention):
            sizes = [module.n_heads * module.head_dim] + [module.kv_heads * module.head_dim] * 2
            parts = state.pop(f"{prefix}qkv.weight").split(sizes)
            state.update(zip((f"{prefix}{p}_proj.weight" for p in "qkv"), parts))
        elif isinstance(module, SwiGLU):
            gate, up = state.pop(f"{prefix}gate_up.weight").chunk(2)
            state.update({f"{prefix}gate.weight": gate, f"{prefix}up.weight": up})
        elif isinstance(module, WordPooler):
            k, v = state.pop(f"{prefix}kv.weight").chunk(2)
            state.update({f"{prefix}k_proj.weight": k, f"{prefix}v_proj.weight": v})
    return state


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_old_layout_state_dicts_load_with_the_same_logits(kind: str, tiny_bpe) -> None:
    model = tiny(decoder_guide="every") if kind == "hat" else tiny_bpe
    state = old_layout(model)
    assert "backbone.transformer.layers.0.attn.q_proj.weight" in state
    torch.manual_seed(123)
    fresh = type(model)(model.config, *([] if kind == "hat" else [model.tokenizer])).eval()
    fresh.load_state_dict(state)  # strict: every old name is folded, no fused one missing
    if kind == "hat":
        batch = collate_documents([document_words("Loaded from the old layout.", model.splitter)])
    else:
        batch = {"input_ids": torch.tensor([[1, *model.tokenizer.encode("Old layout.")]])}
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, model(**batch).logits)


def test_init_is_normal_with_std_on_every_linear(tiny_hat: hat.HATForCausalLM) -> None:
    """Fused projections keep the statistics of the separate ones: every Linear weight is
    normal(init_std); residual outputs (o_proj, down) scaled by 1/sqrt(2 * layers)."""
    std = tiny_hat.config.init_std
    for name, module in tiny_hat.named_modules():
        if isinstance(module, torch.nn.Linear):
            expected = std
            if name.endswith(("o_proj", "down")):
                layers = len(getattr(tiny_hat, name.split(".")[0]).transformer.layers)
                expected = std / math.sqrt(2 * layers)
            weight = module.weight.detach()
            assert float(weight.std()) == pytest.approx(expected, rel=0.1), name
            assert abs(float(weight.mean())) < expected / 4, name
