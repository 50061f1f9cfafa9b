"""``generate(backbone_wait=K)``: rows of a batch that finish a word wait until K rows wait,
then one backbone pass serves them all. The rows then stand at different columns; every row's
logits must still equal the full model's on its own text, and the text written must not
depend on K."""

from __future__ import annotations

import pytest
import torch

import hat
from hat.batching import collate_documents
from hat.block import Attention
from hat.generation import HATCachedEngine, word_starts
from hat.hf_tokenizer import HATTokenizer
from hat.splitter import EOD, PAD

TOK = HATTokenizer()
PROMPTS = [b"Hello wor", b"", b"a \t", b"It's 3.14, not ", "日本".encode()[:-1], b"x"]
# words of many lengths; a multi-byte first character; a boundary that moves back (" \t" then
# U+0301 is one word for hat-splitter); a long word
TEXTS = [
    b"ld, and then some more words follow here.",
    b"A b cd efg hijk lmnop qrstuv w x y z end",
    "\u0301x 日本 \t\u0301 tail of it, with words".encode(),
    b"and a half. Pi is not three, said he",
    "日本".encode()[-1:] + "語のテキスト、 中文。 한국어 word".encode(),
    b"xxxxxxxxxxxxxxxxxxxxxxx yy z zz zzz done",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(sharp: bool = True, **overrides) -> hat.HATForCausalLM:  # noqa: ANN003
    """``tiny`` with sharpened queries: attention (so positions and masks) matters."""
    torch.manual_seed(0)
    cfg = hat.HATConfig.from_name("tiny")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = hat.HATForCausalLM(cfg).eval()
    if sharp:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, Attention):
                    module.qkv.weight[: module.n_heads * module.head_dim].mul_(8)
    return model


def full_logits(model: hat.HATForCausalLM, data: bytes) -> torch.Tensor:
    """The full model's logits [256] at the last byte of ``data`` (EOD first)."""
    starts = word_starts(data, model.splitter)
    words = [data[s:e] for s, e in zip(starts, [*starts[1:], len(data)])]
    with torch.no_grad():
        return model(**collate_documents([words])).logits[0, len(data) - 1]


@pytest.fixture(params=["eager", "static"])
def static(request, monkeypatch) -> bool:
    """The eager step, or the static-shape graphs of compile_step=True run uncompiled
    (torch.compile replaced by the identity, as in test_generation.py)."""
    if request.param == "static":
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    return request.param == "static"


def drive(model, prompts: list[bytes], texts: list[bytes], wait: int, static: bool) -> dict:  # noqa: ANN001
    """Write ``texts`` after ``prompts`` through the cached engine the way ``generate`` does
    (a row only takes a byte when its logits are ready), checking every ready row's logits
    against the full model. Returns what happened: steps, steps with rows waiting, steps
    whose rows stood at different columns."""
    rows = [[EOD, *p] for p in prompts]
    engine = HATCachedEngine(model, rows, max(map(len, texts)) + 1, static, wait=wait)
    assert engine.static == bool(static)
    written = [0] * len(rows)
    seen = {"steps": 0, "waiting": 0, "apart": 0}
    with torch.inference_mode():
        logits = engine.prefill()
        ready = [True] * len(rows)
        while True:
            tokens = torch.zeros(len(rows), dtype=torch.long)
            for r, text in enumerate(texts):
                if not ready[r] or written[r] > len(text):
                    continue
                want = full_logits(model, bytes(rows[r]) + text[: written[r]])
                torch.testing.assert_close(logits[r], want, atol=1e-4, rtol=0)
                if written[r] == len(text):  # checked its last logits: done
                    written[r] += 1
                    engine.retire(r)
                    continue
                tokens[r] = text[written[r]]
                engine.observe(r, int(tokens[r]))
                written[r] += 1
            if all(w > len(t) for w, t in zip(written, texts)):
                return seen
            logits = engine.step(tokens)
            ready = engine.ready or [True] * len(rows)
            live = [r for r in range(len(rows)) if r not in engine.retired]
            seen["steps"] += 1
            seen["waiting"] += not all(ready[r] for r in live)
            seen["apart"] += len({engine.col[r] for r in live}) > 1


@pytest.mark.parametrize("wait", [1, 3, 6])
def test_every_rows_logits_match_the_full_model(wait: int, static: bool) -> None:
    seen = drive(tiny(), PROMPTS, TEXTS, wait, static)
    if wait > 1:
        assert seen["waiting"] > 5, "rows never waited"
        assert seen["apart"] > 5, "rows never stood at different columns"


def test_waiting_past_the_windows(monkeypatch, static: bool) -> None:
    """Texts several byte windows long (tiny: 32), little slack: the buffers slide while rows
    stand apart, and a row that lags LAG columns behind stops waiting."""
    monkeypatch.setattr(HATCachedEngine, "SLACK", 24)
    monkeypatch.setattr(HATCachedEngine, "LAG", 4)
    slides = []
    original = HATCachedEngine._make_room

    def make_room(self, lo, n):  # noqa: ANN001
        original(self, lo, n)
        slides.append((self.base, min(c.offset for c in self.enc_caches + self.dec_caches)))

    monkeypatch.setattr(HATCachedEngine, "_make_room", make_room)
    texts = [t * 4 for t in TEXTS[:4]]
    monkeypatch.setattr(HATCachedEngine, "UNIT", 1)  # static buffers not rounded up either
    seen = drive(tiny(max_word_bytes=8), PROMPTS[:4], texts, 4, static)
    assert seen["apart"] > 20
    assert max(base for base, _ in slides) > 0, "the column buffers never slid"
    assert max(offset for _, offset in slides) > 0, "the byte KV caches never slid"


def test_compiled_waiting_step_matches_the_full_model(monkeypatch) -> None:
    """The static graphs traced for real (dynamo + AOTAutograd, eager kernels): the byte graph
    with one column per row compiles once beside the shared-column one, nothing compiles as
    the caches fill or on a second run, and every row's logits equal the full model's."""
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def counting(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    real_compile = torch.compile
    monkeypatch.setattr(  # (inductor's options are not the stand-in backend's)
        torch, "compile", lambda fn, options=None, **kw: real_compile(fn, backend=counting, **kw)
    )
    torch._dynamo.reset()
    model = tiny()
    seen = drive(model, PROMPTS[:4], TEXTS[:4], 3, True)
    assert seen["apart"] > 5
    first = len(graphs)  # byte graph: 2 (shared / per-row columns); backbone: groups of 1, 2, 4
    assert 3 <= first <= 5
    drive(model, PROMPTS[:4], TEXTS[:4], 3, True)
    assert len(graphs) == first
    # the CUDA-graph mode's host side (held cache buffers, copied outputs), twice: the second
    # run writes into the first run's buffers
    from hat.generation.lean import StaticBuffers

    drive(model, PROMPTS[:4], TEXTS[:4], 3, "reduce-overhead")
    held = dict(StaticBuffers.for_model(model).held)
    drive(model, PROMPTS[:4], TEXTS[:4], 3, "reduce-overhead")
    assert held and all(StaticBuffers.for_model(model).held[n] is t for n, t in held.items())


def test_choice_fused_with_waiting_rows(monkeypatch) -> None:
    """With ``backbone_wait`` > 1 and nothing on the host reading the scores, the compiled
    byte graphs (shared column, and a column per row) also pick the next bytes; rows sitting
    a step out get PAD and keep their UTF-8 state. The same text as the eager loop with the
    same K (greedy, and sampled: the same draws), rows waited, and most choices were made
    inside the graphs (rows that recompute columns choose outside)."""
    from torch._dynamo.backends.registry import lookup_backend

    from hat.generation.choose import Chooser

    real_compile = torch.compile
    monkeypatch.setattr(
        torch,
        "compile",
        lambda fn, options=None, **kw: real_compile(fn, backend=lookup_backend("aot_eager"), **kw),
    )
    outside, waited = [], []
    pick, schedule = Chooser.pick, HATCachedEngine._schedule

    def counted_pick(self, *args):  # noqa: ANN001, ANN002, ANN202
        if not torch.compiler.is_compiling():
            outside.append(1)
        return pick(self, *args)

    def counted_schedule(self):  # noqa: ANN001, ANN202
        out = schedule(self)
        waited.append(len(self.waiting))
        return out

    monkeypatch.setattr(Chooser, "pick", counted_pick)
    monkeypatch.setattr(HATCachedEngine, "_schedule", counted_schedule)
    torch._dynamo.reset()
    model = tiny()
    for kwargs in ({}, {"do_sample": True, "seed": 3, "suppress_tokens": [EOD]}):
        eager = model.generate(PROMPTS, max_new_tokens=40, backbone_wait=3, **kwargs)
        outside.clear(), waited.clear()
        fused = model.generate(
            PROMPTS, max_new_tokens=40, backbone_wait=3, compile_step=True, **kwargs
        )
        assert fused == eager, kwargs
        assert max(waited) >= 2, "no rows waited"
        assert len(outside) < len(waited) // 2, (kwargs, len(outside), len(waited))


class ForceRows:
    """A logits processor: row r writes ``texts[r]``, each row at its own pace (it counts the
    ids a row has written, not the calls: rows that wait fall behind)."""

    def __init__(self, texts: list[bytes], prompt_width: int) -> None:
        self.texts, self.width = texts, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = (input_ids[:, self.width :] != PAD).sum(1).tolist()
        for r, (text, count) in enumerate(zip(self.texts, counts)):
            if count < len(text):
                scores[r] = -float("inf")
                scores[r, text[count]] = 0.0
        return scores


def test_generate_writes_the_same_text_whatever_the_wait() -> None:
    model = tiny(sharp=False)
    batch = dict(TOK(PROMPTS, return_tensors="pt", padding=True, padding_side="left"))
    width = batch["input_ids"].shape[1] - 1  # prompt content columns the processors see
    outs = [
        model.generate(
            **batch,
            max_new_tokens=50,
            logits_processor=[ForceRows(TEXTS, width)],
            backbone_wait=wait,
            use_cache=cache,
        )
        for wait, cache in ((1, True), (4, True), (1, False))
    ]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    for row, text in zip(outs[0].tolist(), TEXTS):
        assert bytes(row[width + 1 : width + 1 + len(text)]) == text
    # sampled freely: every row still writes its budget of valid UTF-8
    texts = model.generate(
        PROMPTS, max_new_tokens=40, do_sample=True, seed=1, suppress_tokens=[EOD], backbone_wait=3
    )
    assert [len(t) for t in texts] == [40] * len(PROMPTS)  # bytes (bytes prompts), all valid
    for prompt, text in zip(PROMPTS, texts):
        (prompt + text).decode("utf-8")
    greedy = [model.generate(PROMPTS, max_new_tokens=30, backbone_wait=w) for w in (1, 5)]
    assert greedy[0] == greedy[1]
    one = [model.generate(PROMPTS[0], max_new_tokens=30, backbone_wait=w) for w in (1, 4)]
    assert one[0] == one[1]  # a single row never waits for others


def test_a_row_without_budget_does_not_hold_the_others_up() -> None:
    """A prompt as long as the context has no new bytes to write: it must not count as a row
    that writes (the others would wait for K rows forever, then for LAG columns)."""
    model = tiny(sharp=False)
    full = b"x" * (model.generation_spec().max_len - 1)  # + the document start
    prompts = [full, *PROMPTS[:3]]
    batch = dict(TOK(prompts, return_tensors="pt", padding=True, padding_side="left"))
    width = batch["input_ids"].shape[1] - 1
    steps = []
    original = HATCachedEngine.step

    def step(self, tokens):  # noqa: ANN001, ANN202
        steps.append(self.wait)
        return original(self, tokens)

    outs = []
    for wait in (1, 4):  # 4: more than the rows that write; they must not wait for it
        steps.clear()
        forced = ForceRows([b"", *TEXTS[:3]], width)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(HATCachedEngine, "step", step)
            outs.append(
                model.generate(
                    **batch, max_new_tokens=12, logits_processor=[forced], backbone_wait=wait
                )
            )
        assert len(steps) < 3 * 12, f"{len(steps)} byte steps for 12 bytes a row"
    assert torch.equal(outs[0], outs[1])


def test_auto_waits_for_the_paper_sized_presets_only(caplog) -> None:
    """``backbone_wait="auto"`` (the default): 3/4 of a batch of >= 8 rows where the backbone
    holds >= 16x the byte stacks' parameters (1b: 53x; measured 2.0x at batch 32, 1.29x at 8),
    else 1 (small: 3x; measured 0.91x)."""
    with torch.device("meta"):  # no memory
        paper = hat.HATForCausalLM(hat.HATConfig.from_name("1b"))
        small = hat.HATForCausalLM(hat.HATConfig.from_name("small"))
    choose = HATCachedEngine.auto_wait
    with caplog.at_level("INFO", logger="hat.generation.hat_engine"):
        assert [choose(paper, b) for b in (1, 4, 7, 8, 32)] == [1, 1, 1, 6, 24]
    assert any("backbone_wait=auto -> 24" in r.getMessage() for r in caplog.records)
    assert [choose(small, b) for b in (8, 32)] == [1, 1]
    assert hat.GenerationConfig().backbone_wait == "auto"


def test_hat_generate_takes_auto_or_a_number() -> None:
    from hat.cli.generate import build_parser

    parse = build_parser().parse_args
    assert parse(["m", "--backbone-wait", "auto"]).backbone_wait == "auto"
    assert parse(["m", "--backbone-wait", "8"]).backbone_wait == 8


def test_backbone_wait_settings_fail_clearly(tiny_bpe) -> None:  # noqa: ANN001
    model = tiny(sharp=False)
    with pytest.raises(ValueError, match="backbone_wait must be 'auto' or a whole number >= 1"):
        model.generate("x", backbone_wait=0)
    with pytest.raises(ValueError, match="backbone_wait is for HAT"):
        tiny_bpe.generate("x", backbone_wait=4)
