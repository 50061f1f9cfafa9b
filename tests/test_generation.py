"""generate(): the cached path equals the uncached reference, sampling is reproducible and
restricted as specified, streaming equals the returned text, bad input fails clearly."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
from pathlib import Path

import pytest
import torch

import hat
from hat.batching import collate_documents, document_words, layout_words
from hat.block import Attention, AttentionMask, KVCache
from hat.generation import (
    GenerationConfig,
    HATCachedEngine,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TextStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
    WordTracker,
    bpe_engine,
    hat_engine,
    lean,
    word_starts,
)
from hat.generation.lean import StaticStep, announce, lean_view
from hat.hf_tokenizer import HATTokenizer
from hat.splitter import EOD, PAD, make_splitter

TOK = HATTokenizer()
# prompts ending mid-word, inside a character, on a word boundary, empty, with CJK and emoji
PROMPTS = [b"Hello wor", "日本".encode()[:-1], b"It's 3.14, not ", b"", "Thumbs 👍🏽 ".encode()]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> hat.HATForCausalLM:
    torch.manual_seed(0)
    cfg = hat.HATConfig.from_name("tiny")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return hat.HATForCausalLM(cfg).eval()


def batch_of(prompts: list[bytes], side: str = "left") -> dict[str, torch.Tensor]:
    return dict(TOK(prompts, return_tensors="pt", padding=True, padding_side=side))


# ---- word boundaries ----------------------------------------------------------------
TRICKY = [
    "It's 3.14, not 1,000. Don't! e.g. U.S.A. http://x.com/a?b=c",
    "日本語のテキスト、中文。한국어 텍스트",
    "Thumbs 👍🏽 family 👨\u200d👩\u200d👧 flags 🇩🇪🇺🇸🇩",
    "runs   of\n\n\n  spaces\t\tand\r\nnewlines  ",
    "camelCaseHTTPServer iPhone XMLHttpRequest",
    "long " + "x" * 40 + "ü" * 30 + " end e\u0301 naïve",
    "can't won't e.g. i.e. it's fooBar foobarbazqux abcdefghijklmnopq aaaaaaaaaaaa bb",
]


@pytest.mark.parametrize("name", ["hat", "whitespace"])
def test_word_tracker_equals_full_resplit(name: str) -> None:
    """Byte by byte, the incremental tracker agrees with re-splitting everything."""
    splitter = make_splitter(name, max_word_bytes=12)
    rng = random.Random(0)
    alphabet = list("aZ3 .,'-\n\t\x00日é👍🏽\u200d🇩\u0301") + ["  ", "Ab", "HTTP"]
    alphabet += ["abc", "xyzw", "q", "bB", "a'b", "a.b"]  # lowercase runs (re-split skipped)
    texts = TRICKY + ["".join(rng.choice(alphabet) for _ in range(60)) for _ in range(20)]
    texts.append((Path(hat.__file__).parent / "assets" / "sample_corpus.txt").read_text()[:1500])
    for text in texts:
        data = bytes([EOD]) + text.encode()
        for cut in (1, 4):  # start from an empty and from a short prompt (maybe mid-character)
            tracker = WordTracker(splitter, data[:cut])
            for i in range(cut, len(data)):
                tracker.push(data[i])
                assert tracker.starts == word_starts(data[: i + 1], splitter), data[: i + 1]


def test_word_starts_rule() -> None:
    splitter = make_splitter("hat")
    assert word_starts(bytes([EOD]), splitter) == [0]
    assert word_starts(bytes([EOD]) + "日".encode()[:1], splitter) == [0, 1]  # first text byte
    # an incomplete character joins the current word until it is complete
    assert word_starts(bytes([EOD]) + b"Hi" + "日".encode()[:2], splitter) == [0, 1]
    assert word_starts(bytes([EOD]) + b"Hi" + "日".encode(), splitter) == [0, 1, 3]
    with pytest.raises(ValueError, match="UTF-8"):
        word_starts(bytes([EOD]) + b"a\xffb", splitter)


# ---- cached == uncached -------------------------------------------------------------
@pytest.fixture(params=["eager", "static"])
def step(request, monkeypatch) -> dict:
    """generate() options of the cached step: the eager one, or the static-shape graphs of
    compile_step=True run uncompiled (torch.compile replaced by the identity: the graphs'
    masks, slots and scratch writes checked against the reference in seconds; the compiled
    test below traces them for real)."""
    if request.param == "eager":
        return {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    return {"compile_step": True}


@pytest.fixture(params=[None, 1, 2], ids=["one-group", "groups-of-1", "groups-of-2"])
def prefill_groups(request, monkeypatch) -> None:
    """The prefill by groups of rows (``row_groups``; on a CPU rows of long prompts run a
    few at a time): the whole batch at once, each row alone, or two rows at a time."""
    if request.param is None:
        return
    size = request.param

    def groups(lengths: list[int], device: torch.device) -> list[slice]:
        batch = len(lengths)
        return [slice(r, min(r + size, batch)) for r in range(0, batch, size)]

    for engine in (hat_engine, bpe_engine):
        monkeypatch.setattr(engine, "row_groups", groups)


def test_kv_cache_row_view_shares_its_parent_buffers() -> None:
    cache = KVCache(3, 1, 2, 4)
    view = cache.row_view(slice(1, 3))
    k, v = view.update(torch.ones(2, 1, 2, 2), 2 * torch.ones(2, 1, 2, 2), 0)
    assert k.shape == (2, 1, 2, 2)
    assert cache.k[1:, :, :2].eq(1).all() and cache.v[1:, :, :2].eq(2).all()
    assert cache.k[0].eq(0).all() and cache.k[:, :, 2:].eq(0).all()
    with pytest.raises(ValueError, match="row view"):
        view.update(torch.ones(2, 1, 3, 2), torch.ones(2, 1, 3, 2), 2)  # would grow


def generate_both(model, prompts, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    batch = batch_of(prompts)
    a = model.generate(**batch, use_cache=True, **kwargs)
    b = model.generate(**batch, use_cache=False, **kwargs)
    return a, b


@pytest.mark.parametrize(
    "prompts", [PROMPTS[:1], PROMPTS[1:2], PROMPTS], ids=["b1", "b1mid", "ragged"]
)
def test_cached_equals_uncached_greedy(prompts) -> None:
    model = tiny()
    cached, uncached = generate_both(model, prompts, max_new_tokens=40)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == batch_of(prompts)["input_ids"].shape[1] + 40


@pytest.mark.parametrize(
    "variant",
    [{}, {"splitter": "whitespace", "decoder_guide": "every", "max_word_bytes": 6}],
    ids=["hat", "whitespace-every"],
)
def test_cached_equals_uncached_sampled(variant: dict, step: dict, monkeypatch) -> None:
    """Sampling visits many bytes, words and multi-byte first characters of words (whose
    decoder positions must be recomputed with the new word's guide)."""
    model = tiny(**variant)
    recomputed = []
    original = HATCachedEngine._decode
    monkeypatch.setattr(
        HATCachedEngine,
        "_decode",
        lambda self, c0, n, *rows: recomputed.append(n - c0) or original(self, c0, n, *rows),
    )
    cached, uncached = generate_both(
        model, PROMPTS, max_new_tokens=60, do_sample=True, seed=7, **step
    )
    assert torch.equal(cached, uncached)
    assert max(recomputed) >= 1, "no multi-byte word start was exercised"
    texts = TOK.batch_decode(cached, skip_special_tokens=True)
    assert len({t for text in texts for t in text}) > 40  # many different characters


def test_cached_equals_uncached_past_the_windows(step: dict, monkeypatch) -> None:
    """Long enough that the sliding windows slide and the column buffers are compacted."""
    monkeypatch.setattr(HATCachedEngine, "SLACK", 4)
    monkeypatch.setattr(HATCachedEngine, "UNIT", 1)  # static sizes not rounded up either
    monkeypatch.setattr(HATCachedEngine, "WORD_UNIT", 1)
    shifts, slides = [], []

    def make_room(self, lo, n):
        original(self, lo, n)
        shifts.append(self.base)
        slides.append(min(c.offset for c in self.enc_caches + self.dec_caches))

    original = HATCachedEngine._make_room
    monkeypatch.setattr(HATCachedEngine, "_make_room", make_room)
    model = tiny(max_word_bytes=8)
    cached, uncached = generate_both(
        model,
        [b"A longer prompt, with words.", b"x"],
        max_new_tokens=90,
        do_sample=True,
        seed=1,
        **step,
    )
    assert torch.equal(cached, uncached)
    assert max(shifts) > 0, "the column buffers never slid"
    assert max(slides) > 0, "the encoder and decoder KV caches never slid"


@pytest.mark.parametrize("decoder_window", [None, 48], ids=["same-windows", "decoder-48"])
def test_prompts_longer_than_the_buffers_keep_their_last_columns(
    step: dict, monkeypatch, decoder_window: int | None
) -> None:
    """Byte caches smaller than the prompt (eager: SLACK columns past the window; static
    steps: just what one step writes, whatever the prompt's length): the prefill keeps the
    prompt's last columns (``KVCache.hold_from``) and attends to all of them; every later
    step's logits equal a full forward."""
    monkeypatch.setattr(HATCachedEngine, "SLACK", 4)
    held = []
    original = KVCache.hold_from

    def hold_from(self, first):
        held.append(first)
        original(self, first)

    monkeypatch.setattr(KVCache, "hold_from", hold_from)
    # windows of 32 bytes: buffers of ~40-64 columns; a decoder window of its own gives the
    # prefill's decoder a mask of its own
    decoder = hat.HATConfig.from_name("tiny").decoder
    if decoder_window:
        decoder = dataclasses.replace(decoder, window=decoder_window)
    model = tiny(max_word_bytes=8, decoder=decoder)
    # row 0's first new bytes move a boundary back into its prompt: prompt columns recomputed
    long = b"A prompt of several windows, many words long. " * 3 + RETRACT[0].encode()
    prompts = [long, b"short one"]
    assert_logits_match_full_forward(
        model, prompts, max_new_tokens=40, logits_processor=[Force(RETRACT[1])], **step
    )
    assert held and min(held) > 0, "no cache was smaller than the prompt"
    cached, uncached = (
        model.generate(
            **batch_of(prompts),
            max_new_tokens=40,
            logits_processor=[Force(RETRACT[1])],
            use_cache=cache,
            **(step if cache else {}),
        )
        for cache in (True, False)
    )
    assert torch.equal(cached, uncached)


def assert_logits_match_full_forward(model, prompts: list[bytes], **kwargs) -> None:  # noqa: ANN001
    """Every generated step's logits (seeded sampling) equal the full model's on that row's
    prompt + bytes so far, at its last position."""
    out = model.generate(
        **batch_of(prompts),
        do_sample=True,
        seed=3,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    width = batch_of(prompts)["input_ids"].shape[1]
    for r, prompt in enumerate(prompts):
        new = out.sequences[r, width:].tolist()
        for step, logits in enumerate(out.logits):
            if step and new[step - 1] in (EOD, PAD):
                break
            data = bytes([EOD]) + prompt + bytes(new[:step])
            starts = word_starts(data, model.splitter)
            words = [data[s:e] for s, e in zip(starts, [*starts[1:], len(data)])]
            with torch.no_grad():
                full = model(**collate_documents([words])).logits[0, len(data) - 1]
            torch.testing.assert_close(logits[r], full, atol=1e-4, rtol=0)


def sharpen(attn: Attention) -> None:
    """Scale an attention layer's queries up (the q rows of its fused projection)."""
    attn.qkv.weight[: attn.n_heads * attn.head_dim].mul_(8)


class Force:
    """A logits processor that makes row ``row`` emit ``data`` first (then samples freely)."""

    def __init__(self, data: bytes, row: int = 0) -> None:
        self.data, self.row, self.step = data, row, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.step < len(self.data):
            scores[self.row] = -float("inf")
            scores[self.row, self.data[self.step]] = 0.0
        self.step += 1
        return scores


# " \t" is two words for hat-splitter, but " \t" + U+0301 one: a word boundary moves back
RETRACT = ("a \t", "\u0301x 日本 \t\u0301".encode())


def test_retracted_boundary_rolls_back(step: dict) -> None:
    """When the splitter merges an already finished word into the current one, the cached
    path rolls the backbone back; it still equals the reference."""
    model = tiny()
    prompt, forced = RETRACT[0].encode(), RETRACT[1]
    outs = [
        model.generate(
            **batch_of([prompt, b"xy"]),
            max_new_tokens=30,
            do_sample=True,
            seed=0,
            logits_processor=[Force(forced)],
            use_cache=cache,
            **step,
        )
        for cache in (True, False)
    ]
    assert torch.equal(*outs)
    assert bytes(outs[0][0, len(prompt) + 1 :].tolist()).startswith(forced)


class BurstSplitter:
    """Whitespace words, except that "aXa" splits into "a", "X", "a": two words end at once."""

    max_word_bytes = 100

    def split(self, text: str) -> list[bytes]:
        words = []
        for word in make_splitter("whitespace").split(text):
            words += [b"a", b"X", word[2:]] if word.startswith(b"aXa") else [word]
        return words


def test_several_words_finish_in_one_step(step: dict) -> None:
    model = tiny()
    model.splitter = BurstSplitter()
    batch = batch_of([b"q ", b"other row"])
    outs = [
        model.generate(
            **batch,
            max_new_tokens=12,
            do_sample=True,
            seed=0,
            logits_processor=[Force(b"aXa b aXa")],
            use_cache=cache,
            **step,
        )
        for cache in (True, False)
    ]
    assert torch.equal(*outs)


def test_most_rows_finish_a_word_at_once(step: dict) -> None:
    """Five of six rows end a word at the same bytes, the third row not until later: the
    static backbone then runs all six rows (its largest group) in row order, the eager one
    five. Every row's text differs, so a row given another's word would show."""
    model = tiny()
    texts = [bytes([c]) + b" ab cd ef gh ij" for c in b"vwxyzq"]
    texts[2] = b"xabcdefgh ij klm"
    cached, uncached = (
        model.generate(
            **batch_of([b"x"] * 6),
            max_new_tokens=len(texts[0]),
            logits_processor=[Force(t, row) for row, t in enumerate(texts)],
            use_cache=cache,
            output_logits=True,
            return_dict_in_generate=True,
            **step,
        )
        for cache in (True, False)
    )
    assert [bytes(row[2:].tolist()) for row in cached.sequences] == texts
    for got, want in zip(cached.logits, uncached.logits, strict=True):  # forced text: compare
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # what each row predicted


@pytest.mark.parametrize(
    ("prompts", "sharp"),
    [
        ([RETRACT[0].encode(), b"Hello wor", "日本".encode()[:-1], b""], False),
        ([RETRACT[0].encode(), b"Hello wor", "日本".encode()[:-1], b""], True),
        ([b"Hello wor", b"It's 3.14"], True),  # equal lengths: positions shared by all rows
        ([b"Hello wor"], True),
        # prompts several windows long (tiny's byte window: 32): a chunked prefill
        ([b"Long words here, " * 17, b"short. " * 20, b"x"], True),
    ],
    ids=["ragged", "ragged-sharp", "equal-sharp", "b1-sharp", "long-ragged-sharp"],
)
def test_cached_logits_match_full_forward(
    prompts: list[bytes], sharp: bool, prefill_groups: None
) -> None:
    """Every step's logits equal the full model on (prompt + bytes so far), last position.
    ``sharp``: queries scaled up so that attention, hence RoPE positions, matter (at random
    init attention is nearly uniform and a wrong position hardly changes the logits)."""
    model = tiny()
    if sharp:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, Attention):
                    sharpen(module)
    assert_logits_match_full_forward(
        model, prompts, max_new_tokens=30, logits_processor=[Force(RETRACT[1])]
    )


def test_lean_view_runs_the_modules_code() -> None:
    """The cached step calls the modules through lean views: the same forward code, hence
    bit-identical results; a module with hooks stays a module (its hooks run)."""
    model = tiny(decoder_guide="every")
    batch = collate_documents([document_words("Lean views, same code. 日本", model.splitter)])
    layout = layout_words(batch["input_ids"], batch["word_lengths"])
    mask = AttentionMask.packed(layout.doc_ids, model.config.encoder.window, "sdpa")
    word_states = torch.randn(1, 4, model.config.backbone.dim)
    with torch.no_grad():
        for module in (model, lean_view(model)):
            states = module.encoder(batch["input_ids"], layout.byte_pos, mask)
            guides = module.decoder.guides(word_states)
            index = layout.guide_index.clamp(max=4)
            hidden = module.decoder(states, guides, index, layout.byte_pos, mask)
            words = module.pooler(
                states[0], layout.byte_pos[0], layout.offsets, layout.word_end_pos[0]
            )
            if module is model:
                reference = (states, hidden, words)
        for got, want in zip((states, hidden, words), reference):
            assert torch.equal(got, want)
    assert type(lean_view(model.decoder.head)).__name__ == "_LeanLinear"
    seen = []
    model.encoder.embed.register_forward_hook(lambda *_: seen.append(1))
    assert lean_view(model.encoder).embed is model.encoder.embed
    model.generate("hooked", max_new_tokens=3)
    assert seen, "a hooked module was bypassed"


def test_compile_step_option(monkeypatch, caplog) -> None:
    """``compile_step=True`` runs the cached step through ``torch.compile`` (replaced here by
    a recorder: compiling takes minutes on a CPU; tests/test_generation.py's GPU test runs the
    real thing) and says so in the log; the default says it runs eagerly."""
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append((fn.__name__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    announce.cache_clear()  # it logs once per process
    model = tiny()
    with caplog.at_level(logging.INFO, logger="hat.generation.lean"):
        eager = model.generate(**batch_of(PROMPTS[:2]), max_new_tokens=20)
        again = model.generate(**batch_of(PROMPTS[:2]), max_new_tokens=20, compile_step=True)
    assert torch.equal(eager, again)
    # (flex attention, which the graphs attend with on a CPU, compiles its own operator too)
    compiled = [(name, kw) for name, kw in compiled if not name.startswith("_flex_attention")]
    names = [name for name, _ in compiled]
    assert names == ["_byte_graph", "_backbone_graph"]
    # static shapes; inductor's defaults (no CUDA graphs on a CPU) but no per-call size asserts,
    # and on a CPU the kernels called from C++
    options = {"size_asserts": False, "cpp_wrapper": True}
    assert all(kw == {"dynamic": False, "options": options} for _, kw in compiled)
    lines = [r.getMessage() for r in caplog.records]
    assert any("eager modules" in line for line in lines)
    assert any("torch.compile'd" in line and "mode 'default'" in line for line in lines)
    from hat.cli.generate import build_parser

    parse = build_parser().parse_args
    assert parse(["m", "--compile-step"]).compile_step is True  # hat-generate
    assert parse(["m", "--compile-step", "default"]).compile_step == "default"
    assert parse(["m"]).compile_step is None  # the model's generation config decides


def test_compile_step_falls_back_to_eager_where_it_cannot_compile(monkeypatch, caplog) -> None:
    """Without a compiler (or on Windows) compile_step=True warns once and runs eagerly."""
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled anyway"))
    monkeypatch.setattr(lean, "compile_unavailable", lambda device: "no C++ compiler found")
    announce.cache_clear()
    model = tiny()
    with caplog.at_level(logging.INFO, logger="hat.generation.lean"):
        eager = model.generate(**batch_of(PROMPTS[:2]), max_new_tokens=10)
        again = model.generate(**batch_of(PROMPTS[:2]), max_new_tokens=10, compile_step=True)
    assert torch.equal(eager, again)
    lines = [r.getMessage() for r in caplog.records]
    assert any("no C++ compiler found" in line and "eagerly" in line for line in lines)


# torch.compile backends of the compiled-step tests: aot_eager traces the graphs for real in
# seconds; inductor's C++ kernels take minutes to build
BACKENDS = [
    "aot_eager",
    pytest.param(
        "inductor",
        marks=pytest.mark.skipif(
            not os.environ.get("HAT_TEST_COMPILE"), reason="HAT_TEST_COMPILE=1: C++ builds"
        ),
    ),
]


@pytest.mark.parametrize("blocks", [True, False], ids=["key-blocks", "sdpa"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_step_equals_eager_on_cpu(
    backend: str, blocks: bool, tiny_bpe, monkeypatch
) -> None:
    """The compiled static-shape steps give the eager step's text and logits, across word
    boundaries, left padding, a ragged batch and the twin. ``aot_eager`` traces the graphs
    for real (dynamo + AOTAutograd, eager kernels: seconds); ``HAT_TEST_COMPILE=1`` adds
    inductor's C++ kernels. Graphs compile once per shape, never as the caches fill: HAT's
    byte step once, its backbone once per group size (1 and 2 rows here: a group of 1 reads
    the caches in place, ``AttentionMask.every_row``), the twin's step once; a second call of the
    same shapes compiles nothing. Attention through BlockMasks (a CPU above batch 1) and
    through SDPA under dense masks (a GPU) both."""
    from torch._dynamo.backends.registry import lookup_backend

    from hat.generation import lean

    monkeypatch.setattr(lean, "key_blocks", lambda mode, device, batch: blocks)  # both engines
    partial = []  # word passes of a group smaller than the batch (caches read in place)
    whole_pass = HATCachedEngine._backbone_pass_static

    def counted_pass(self, row_list, spans):  # noqa: ANN001, ANN202
        partial.append(len(row_list) < self.batch)
        return whole_pass(self, row_list, spans)

    monkeypatch.setattr(HATCachedEngine, "_backbone_pass_static", counted_pass)

    graphs = []

    def counting(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return lookup_backend(backend)(gm, example_inputs)

    real_compile = torch.compile
    monkeypatch.setattr(  # (inductor's options are not the stand-in backend's)
        torch, "compile", lambda fn, options=None, **kw: real_compile(fn, backend=counting, **kw)
    )
    taken = []  # the code each shape's later calls run (StaticStep: dynamo skipped)
    real_code = lean.dynamo_code
    monkeypatch.setattr(lean, "dynamo_code", lambda *a: taken.append(real_code(*a)) or taken[-1])
    torch._dynamo.reset()
    model = tiny()
    kwargs = dict(max_new_tokens=24, output_logits=True, return_dict_in_generate=True)
    batch = batch_of([b"Hello wor", b"It's 3.14, not "])  # a word ends at once; ragged
    eager = model.generate(**batch, **kwargs)
    compiled = model.generate(**batch, compile_step=True, **kwargs)
    hat_graphs = len(graphs)  # the byte graph and one or two backbone groups: really compiled
    assert any(partial) and not all(partial)
    assert 2 <= hat_graphs <= 3
    again = model.generate(**batch, compile_step=True, **kwargs)
    assert len(graphs) == hat_graphs and torch.equal(again.sequences, compiled.sequences)
    assert torch.equal(compiled.sequences, eager.sequences)
    for step_compiled, step_eager in zip(compiled.logits, eager.logits, strict=True):
        torch.testing.assert_close(step_compiled, step_eager, atol=1e-5, rtol=1e-5)

    texts = ["Hello there, my", "x"]  # the twin: ragged
    eager = tiny_bpe.generate(
        texts, max_new_tokens=20, output_logits=True, return_dict_in_generate=True
    )
    compiled = tiny_bpe.generate(
        texts,
        max_new_tokens=20,
        output_logits=True,
        return_dict_in_generate=True,
        compile_step=True,
    )
    assert compiled.sequences == eager.sequences and len(graphs) == hat_graphs + 1
    assert taken and None not in taken  # every shape's later calls ran dynamo's code directly
    for step_compiled, step_eager in zip(compiled.logits, eager.logits, strict=True):
        torch.testing.assert_close(step_compiled, step_eager, atol=1e-5, rtol=1e-5)

    # 2-byte words, more than the backbone cache was sized for (not rounded up here): it grows,
    # and the calls after that check every guard again (StaticStep.reshaped), so its graph is
    # recompiled, not reused
    monkeypatch.setattr(HATCachedEngine, "UNIT", 1)
    monkeypatch.setattr(HATCachedEngine, "WORD_UNIT", 1)
    reshaped = []
    original = StaticStep.reshaped
    monkeypatch.setattr(StaticStep, "reshaped", lambda self: reshaped.append(1) or original(self))
    kwargs = dict(kwargs, max_new_tokens=100)
    eager = model.generate(**batch, logits_processor=[Force(b"a " * 50)], **kwargs)
    compiled = model.generate(
        **batch, logits_processor=[Force(b"a " * 50)], compile_step=True, **kwargs
    )
    assert reshaped, "the backbone cache never grew"
    assert torch.equal(compiled.sequences, eager.sequences)
    for step_compiled, step_eager in zip(compiled.logits, eager.logits, strict=True):
        torch.testing.assert_close(step_compiled, step_eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_choice_fused_into_the_compiled_step(
    mode: str, backend: str, tiny_bpe, monkeypatch
) -> None:
    """Without processors that read the history, a compiled step also picks the next ids
    (UTF-8 mask, budget, min_new_tokens, warpers, argmax or the seeded exponential race, the
    reader's advance, finished rows): the same text as the eager loop, which picks outside
    the step. Only the prefill's logits, and HAT's steps that recompute columns after a word
    boundary moved, are picked outside the graphs (``aot_eager`` traces them for real;
    ``HAT_TEST_COMPILE=1`` adds inductor's C++ kernels)."""
    from torch._dynamo.backends.registry import lookup_backend

    from hat.generation.choose import Chooser

    real_compile = torch.compile
    monkeypatch.setattr(
        torch,
        "compile",
        lambda fn, options=None, **kw: real_compile(fn, backend=lookup_backend(backend), **kw),
    )
    outside = []  # picks run eagerly, not while dynamo traces a graph
    original = Chooser.pick

    def pick(self, *args):  # noqa: ANN001, ANN002, ANN202
        if not torch.compiler.is_compiling():
            outside.append(1)
        return original(self, *args)

    monkeypatch.setattr(Chooser, "pick", pick)
    torch._dynamo.reset()
    model = tiny()
    batch = batch_of([b"Hello wor", "It's 3.14, \u65e5".encode()[:-1]])  # ends mid-character
    cases = [
        dict(max_new_tokens=40),
        dict(max_new_tokens=40, do_sample=True, seed=3, top_k=20, temperature=0.8),
        dict(max_new_tokens=7, do_sample=True, seed=5, min_new_tokens=5),  # budget tight
        dict(max_new_tokens=40, do_sample=True, seed=1, top_p=0.9, eos_token_id=[ord("e")]),
    ]
    for kwargs in cases:
        eager = model.generate(**batch, **kwargs)
        outside.clear()
        fused = model.generate(**batch, compile_step=mode, **kwargs)
        assert torch.equal(fused, eager), kwargs
        new = (fused[:, batch["input_ids"].shape[1] :] != PAD).sum(1)
        assert len(outside) < max(new) // 2, (kwargs, len(outside))  # the graphs picked
    ends = model.generate(
        **batch,
        max_new_tokens=40,
        eos_token_id=[ord("e")],
        do_sample=True,
        seed=1,
        top_p=0.9,
        compile_step=mode,
    )
    assert (ends == PAD).any(), "no row finished before the others"
    # the host's own ends (stop strings, max_new_words), several samples per prompt, a streamer
    texts = ["Hello wor", "It's 3.14, "]
    host = dict(do_sample=True, seed=2, max_new_words=2, stop_strings=["a"], num_return_sequences=2)
    eager = model.generate(texts, max_new_tokens=40, **host)
    assert model.generate(texts, max_new_tokens=40, compile_step=mode, **host) == eager
    assert min(map(len, eager)) < 40  # some row stopped early
    printed = []
    for compiled in (False, mode):
        streamer = TextStreamer(skip_prompt=True, file=io.StringIO())
        text = model.generate("Hello", max_new_tokens=30, do_sample=True, seed=3,
                              streamer=streamer, compile_step=compiled)  # fmt: skip
        printed.append((text, streamer.file.getvalue()))
    assert printed[0] == printed[1] and printed[0][1] == printed[0][0] + "\n"  # all of it
    if mode == "reduce-overhead":  # CUDA graphs read the choice's tables in place: a later
        # call must read the same tensors, or its graphs would be recorded again
        marked = []
        real_mark = torch._dynamo.mark_static_address
        monkeypatch.setattr(
            torch._dynamo, "mark_static_address", lambda t, **kw: marked.append(t) or real_mark(t)
        )
        model.generate(texts, max_new_tokens=10, compile_step=mode)
        first, marked[:] = list(marked), []
        model.generate(texts, max_new_tokens=10, compile_step=mode)
        assert len(marked) >= 5 and all(any(t is u for u in first) for t in marked)

    texts = ["Hello there, my", "x"]  # the twin: every step's choice in its graph
    for kwargs in cases:
        eager = tiny_bpe.generate(texts, **kwargs)
        outside.clear()
        assert tiny_bpe.generate(texts, compile_step=mode, **kwargs) == eager, kwargs
        assert len(outside) == 1  # the prefill's
    # what a host-side reader needs keeps the choice outside: processors, per-step scores
    outside.clear()
    out = tiny_bpe.generate(texts, max_new_tokens=10, repetition_penalty=1.3, compile_step=mode)
    assert out == tiny_bpe.generate(texts, max_new_tokens=10, repetition_penalty=1.3)
    assert len(outside) >= 10


def test_cuda_graph_mode_keeps_cache_addresses(tiny_bpe, monkeypatch) -> None:
    """``compile_step="reduce-overhead"`` (what True means on a GPU: CUDA graphs) on a CPU,
    where inductor skips the graphs and ``aot_eager`` stands in for it: the host side of the
    graph path. The same text and logits as eager; each step's outputs are copies (a graph's
    next replay overwrites its own); the caches of a second call of the same shapes are the
    first call's buffers (their addresses are what a recorded graph writes), zeroed; other
    shapes replace them; a backbone cache that grows is held grown."""
    from torch._dynamo.backends.registry import lookup_backend

    from hat.generation.lean import StaticBuffers

    real_compile = torch.compile
    modes = []

    def fake_compile(fn, options=None, **kw):  # noqa: ANN001, ANN202
        modes.append(options.get("triton.cudagraphs"))  # what mode reduce-overhead sets
        return real_compile(fn, backend=lookup_backend("aot_eager"), **kw)

    monkeypatch.setattr(torch, "compile", fake_compile)
    marks = []
    real_mark = torch.compiler.cudagraph_mark_step_begin
    monkeypatch.setattr(
        torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1) or real_mark()
    )
    torch._dynamo.reset()
    model = tiny()
    kwargs = dict(max_new_tokens=24, output_logits=True, return_dict_in_generate=True)
    batch = batch_of([b"Hello wor", b"It's 3.14, not "])
    eager = model.generate(**batch, **kwargs)
    graphs = model.generate(**batch, compile_step="reduce-overhead", **kwargs)
    assert set(modes) == {True} and len(marks) >= 24
    assert torch.equal(graphs.sequences, eager.sequences)
    for step_graphs, step_eager in zip(graphs.logits, eager.logits, strict=True):
        torch.testing.assert_close(step_graphs, step_eager, atol=1e-5, rtol=1e-5)
    held = dict(StaticBuffers.for_model(model).held)
    assert {n.split(".")[0] for n in held} == {"encoder", "decoder", "backbone", "ring", "enc_out"}
    assert all(t.abs().sum() > 0 for t in held.values())  # the caches the steps wrote
    again = model.generate(**batch, compile_step="reduce-overhead", **kwargs)
    assert torch.equal(again.sequences, eager.sequences)  # zeroed: no stale keys leak in
    now = StaticBuffers.for_model(model).held
    assert all(now[n] is t for n, t in held.items())  # the same buffers, not new ones
    model.generate(**batch_of([b"x"]), compile_step="reduce-overhead", max_new_tokens=4)
    assert all(now[n].shape[0] == 1 for n in held)  # one row now: replaced
    StaticBuffers.for_model(model).release()
    assert not StaticBuffers.for_model(model).held

    # a backbone cache that grows (2-byte words, caches not rounded up) is held grown
    monkeypatch.setattr(HATCachedEngine, "UNIT", 1)
    monkeypatch.setattr(HATCachedEngine, "WORD_UNIT", 1)
    kwargs = dict(kwargs, max_new_tokens=100)
    eager = model.generate(**batch, logits_processor=[Force(b"a " * 50)], **kwargs)
    graphs = model.generate(
        **batch, logits_processor=[Force(b"a " * 50)], compile_step="reduce-overhead", **kwargs
    )
    assert torch.equal(graphs.sequences, eager.sequences)
    assert StaticBuffers.for_model(model).held["backbone.0.k"].shape[2] >= 50  # 50 new words

    texts = ["Hello there, my", "x"]  # the twin
    eager = tiny_bpe.generate(texts, max_new_tokens=20)
    assert tiny_bpe.generate(texts, max_new_tokens=20, compile_step="reduce-overhead") == eager
    assert {n.split(".")[0] for n in StaticBuffers.for_model(tiny_bpe).held} == {"backbone"}
    with pytest.raises(ValueError, match="compile_step must be True, False or one of"):
        tiny_bpe.generate("x", compile_step="fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_step_equals_eager_on_gpu() -> None:
    """Inductor's GPU kernels replayed as CUDA graphs (``compile_step=True`` on a GPU; two
    rows: the byte graph and two backbone groups). A second call replays the graphs recorded
    by the first on the same cache buffers (zeroed), and must give the same text again; so
    do the graphs that also choose the next byte (no per-step outputs asked for)."""
    model = tiny().cuda()
    batch = {k: v.cuda() for k, v in batch_of([b"Hello wor", "日本".encode()[:-1]]).items()}
    kwargs = dict(max_new_tokens=40, output_logits=True, return_dict_in_generate=True)
    eager = model.generate(**batch, **kwargs)
    for _ in range(2):
        compiled = model.generate(**batch, compile_step=True, **kwargs)
        assert torch.equal(eager.sequences, compiled.sequences)
        for step_compiled, step_eager in zip(compiled.logits, eager.logits, strict=True):
            torch.testing.assert_close(step_compiled, step_eager, atol=1e-4, rtol=1e-4)
    for kwargs in ({}, {"do_sample": True, "seed": 2, "top_k": 40}):  # the choice in the graph
        eager = model.generate(**batch, max_new_tokens=40, **kwargs)
        for _ in range(2):
            fused = model.generate(**batch, max_new_tokens=40, compile_step=True, **kwargs)
            assert torch.equal(fused, eager), kwargs


def test_cached_equals_uncached_qk_norm_and_equal_lengths() -> None:
    """QK-norm in every stack (the attention's other branch), no pool QK-norm; equal-length
    prompts share positions (views instead of index ops) yet finish words at different steps."""
    torch.manual_seed(0)
    cfg = hat.HATConfig.from_name("tiny")
    for stack in (cfg.encoder, cfg.backbone, cfg.decoder):
        stack.qk_norm = True
    cfg.pool_qk_norm = False
    model = hat.HATForCausalLM(cfg).eval()
    prompts = [b"Hello wor", b"It's 3.1", b"x y z w "]  # same length: 9 bytes with EOD
    for kwargs in ({}, {"do_sample": True, "seed": 4}):
        cached, uncached = generate_both(model, prompts, max_new_tokens=40, **kwargs)
        assert torch.equal(cached, uncached)


def test_right_padding_equals_left_padding() -> None:
    model = tiny()
    left = model.generate(**batch_of(PROMPTS, "left"), max_new_tokens=12, do_sample=True, seed=0)
    right = model.generate(**batch_of(PROMPTS, "right"), max_new_tokens=12, do_sample=True, seed=0)
    assert torch.equal(left, right)
    assert torch.equal(
        left[:, : len(batch_of(PROMPTS)["input_ids"][0])], batch_of(PROMPTS)["input_ids"]
    )


def test_bpe_cached_equals_uncached(tiny_bpe, step: dict) -> None:
    tok = tiny_bpe.tokenizer
    rows = [[tok.bos_id, *tok.encode(t)] for t in ["Hello there, my", "x", ""]]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
    for kwargs in ({}, {"do_sample": True, "seed": 5}):
        a = tiny_bpe.generate(ids, max_new_tokens=30, **kwargs, **step)
        b = tiny_bpe.generate(ids, max_new_tokens=30, use_cache=False, **kwargs)
        assert torch.equal(a, b)
    texts = tiny_bpe.generate(["Once upon", "日本"], max_new_tokens=20, do_sample=True, seed=1)
    assert all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize(
    "texts",
    [["Hello there, my", "x", ""], ["It was a", "the end"], ["Once upon a time"]],
    ids=["ragged-sharp", "equal-sharp", "b1-sharp"],  # equal: 4 tokens each, no padding
)
def test_bpe_cached_logits_match_full_forward(
    tiny_bpe, texts: list[str], prefill_groups: None
) -> None:
    """The twin's cached steps (its backbone on left-padded rows) give, at every step, the
    logits of the full model on that row alone; queries scaled up so that attention, hence
    RoPE positions and hidden padding, matter. Greedy cached == uncached on the same model."""
    from hat.tokenizer import BOS_ID, EOS_ID

    with torch.no_grad():
        for module in tiny_bpe.modules():
            if isinstance(module, Attention):
                sharpen(module)
    tok = tiny_bpe.tokenizer
    rows = [[tok.bos_id, *tok.encode(t)] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
    out = tiny_bpe.generate(
        ids,
        max_new_tokens=24,
        do_sample=True,
        seed=3,
        suppress_tokens=[BOS_ID, EOS_ID],  # no row ends: every step is compared
        output_logits=True,
        return_dict_in_generate=True,
    )
    for r, row in enumerate(rows):
        new = out.sequences[r, width:].tolist()
        for step, logits in enumerate(out.logits):
            with torch.no_grad():
                full = tiny_bpe(input_ids=torch.tensor([row + new[:step]])).logits[0, -1]
            torch.testing.assert_close(logits[r], full, atol=1e-4, rtol=0)
    cached, uncached = (
        tiny_bpe.generate(ids, max_new_tokens=30, use_cache=cache) for cache in (True, False)
    )
    assert torch.equal(cached, uncached)


# ---- outputs and options ------------------------------------------------------------
def test_text_contract_and_valid_utf8() -> None:
    model = tiny()
    text = model.generate("Hello", max_new_tokens=50, do_sample=True, seed=0)
    assert isinstance(text, str)
    texts = model.generate(["a", "b"], max_new_tokens=50, do_sample=True, seed=0)
    assert isinstance(texts, list) and len(texts) == 2
    # bytes in -> bytes out; a prompt ending inside a character gets it completed first
    raw = model.generate("日".encode()[:1], max_new_tokens=40, do_sample=True, seed=2)
    assert isinstance(raw, bytes)
    ("日".encode()[:1] + raw).decode("utf-8")  # strict: the output is valid UTF-8
    ids = model.generate(**batch_of([b"x"] * 4), max_new_tokens=80, do_sample=True, seed=4)
    for row in ids.tolist():
        content = bytes(b for b in row if b not in (EOD, PAD))
        content.decode("utf-8")  # never invalid, never a cut character


def test_sampling_is_reproducible() -> None:
    model = tiny()
    a = model.generate("The", max_new_tokens=30, do_sample=True, seed=11)
    b = model.generate("The", max_new_tokens=30, do_sample=True, seed=11)
    c = model.generate("The", max_new_tokens=30, do_sample=True, seed=12)
    gen = torch.Generator().manual_seed(11)
    d = model.generate("The", max_new_tokens=30, do_sample=True, generator=gen)
    assert a == b == d and a != c


def test_num_return_sequences_and_eos() -> None:
    model = tiny()
    out = model.generate(
        **batch_of([b"a", b"bc"]), max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=0
    )
    assert out.shape == (6, 3 + 5)
    assert torch.equal(out[0, :3], out[2, :3]) and torch.equal(out[3, :3], out[5, :3])
    with pytest.raises(ValueError, match="do_sample"):
        model.generate("a", num_return_sequences=2)
    # an extra end byte stops a row; it is kept in the ids and dropped from the text
    ids = model.generate(
        **batch_of([b"a"]),
        max_new_tokens=30,
        do_sample=True,
        seed=0,
        top_k=1,
        eos_token_id=[EOD, ord("L")],
    )
    assert ids[0, -1] in (ord("L"), PAD) or ord("L") not in ids[0, 2:].tolist()
    # ban the end byte: exactly max_new_tokens bytes come out
    out = model.generate("", max_new_tokens=25, do_sample=True, seed=0, suppress_tokens=[EOD])
    assert len(out.encode()) == 25


def test_stop_strings_and_max_new_words() -> None:
    model = tiny()
    full = model.generate("Hi", max_new_tokens=60, do_sample=True, seed=5, top_k=8)
    stop = full[10:12]
    cut = model.generate(
        "Hi", max_new_tokens=60, do_sample=True, seed=5, top_k=8, stop_strings=[stop]
    )
    assert cut == full[: full.index(stop) + len(stop)]
    prompt = b"Hi"
    for n in (0, 1, 3):
        text = model.generate(
            prompt,
            max_new_tokens=80,
            do_sample=True,
            seed=5,
            max_new_words=n,
            suppress_tokens=[EOD],
        )
        starts = word_starts(bytes([EOD]) + prompt + text, model.splitter)
        assert sum(s >= 1 + len(prompt) for s in starts) <= n
        longer = model.generate(
            prompt, max_new_tokens=80, do_sample=True, seed=5, suppress_tokens=[EOD]
        )
        assert longer.startswith(text)


# ---- logits processors --------------------------------------------------------------
def test_logits_processors() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0, -1.0]])
    ids = torch.tensor([[1, 4]])
    kept = TopKLogitsWarper(2)(ids, scores)
    assert torch.isfinite(kept).tolist() == [[False, True, True, False, False]]
    probs = scores.softmax(-1)[0]  # ~ [.09, .64, .24, .03, .01]
    nucleus = torch.isfinite(TopPLogitsWarper(0.8)(ids, scores))[0].tolist()
    assert nucleus == [False, True, True, False, False] and probs[1] < 0.8 <= probs[1] + probs[2]
    assert torch.isfinite(TopPLogitsWarper(0.5)(ids, scores))[0].tolist() == [0, 1, 0, 0, 0]
    torch.testing.assert_close(TemperatureLogitsWarper(2.0)(ids, scores), scores / 2)
    penal = RepetitionPenaltyLogitsProcessor(2.0)(ids, scores)
    assert penal.tolist() == [[1.0, 1.5, 2.0, 0.0, -2.0]]
    # top_p=0 keeps the most likely id only (transformers' meaning); outside [0, 1] an error
    assert torch.isfinite(TopPLogitsWarper(0.0)(ids, scores))[0].tolist() == [0, 1, 0, 0, 0]
    with pytest.raises(ValueError):
        TopPLogitsWarper(-0.1)


def test_top_k_and_temperature_restrict_sampling() -> None:
    model = tiny()
    out = model.generate(
        **batch_of([b"a"]),
        max_new_tokens=20,
        do_sample=True,
        seed=0,
        top_k=1,
        output_scores=True,
        return_dict_in_generate=True,
    )
    greedy = model.generate(**batch_of([b"a"]), max_new_tokens=20)
    assert torch.equal(out.sequences, greedy)  # top_k=1 is greedy
    assert all(torch.isfinite(s).sum() == 1 for s in out.scores)
    cold = model.generate(
        **batch_of([b"a"]), max_new_tokens=20, do_sample=True, seed=3, temperature=1e-4
    )
    assert torch.equal(cold, greedy)


# ---- streaming ----------------------------------------------------------------------
def test_streamer_equals_returned_text() -> None:
    model = tiny()
    for prompt, kwargs in [("日本語の", {}), ("Hi ", {"max_new_words": 4})]:
        sink = io.StringIO()
        text = model.generate(
            prompt,
            max_new_tokens=60,
            do_sample=True,
            seed=9,
            streamer=TextStreamer(skip_prompt=True, file=sink),
            **kwargs,
        )
        assert sink.getvalue() == text + "\n"
        assert any(len(ch.encode()) > 1 for ch in text)
        sink = io.StringIO()
        model.generate(
            prompt,
            max_new_tokens=60,
            do_sample=True,
            seed=9,
            streamer=TextStreamer(file=sink),
            **kwargs,
        )
        assert sink.getvalue() == prompt + text + "\n"


def test_streamer_decodes_incrementally() -> None:
    chunks = []

    class Capture(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            chunks.append(text)

    streamer = Capture(skip_prompt=True)
    streamer.put(torch.tensor([EOD]))
    for b in "é👍".encode():
        streamer.put(torch.tensor([b]))
    streamer.end()
    assert chunks == ["é", "👍", ""]


def test_bpe_streamer(tiny_bpe) -> None:
    sink = io.StringIO()
    text = tiny_bpe.generate(
        "Once",
        max_new_tokens=30,
        do_sample=True,
        seed=2,
        streamer=TextStreamer(skip_prompt=True, file=sink),
    )
    assert sink.getvalue() == text + "\n"


# ---- bad input ----------------------------------------------------------------------
def test_empty_prompt_generates_from_document_start() -> None:
    model = tiny()
    text = model.generate("", max_new_tokens=10, do_sample=True, seed=0)
    ids = model.generate(torch.tensor([[EOD]]), max_new_tokens=10, do_sample=True, seed=0)
    assert TOK.decode(ids[0], skip_special_tokens=True) == text
    assert model.generate(max_new_tokens=10, do_sample=True, seed=0) == text  # no prompt at all


def test_max_new_tokens_zero_returns_prompt() -> None:
    model = tiny()
    batch = batch_of([b"abc", b"d"])
    assert torch.equal(model.generate(**batch, max_new_tokens=0), batch["input_ids"])
    assert model.generate("abc", max_new_tokens=0) == ""


def test_prompt_too_long_or_invalid() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="longer than the model's context"):
        model.generate("x" * model.config.max_seq_bytes)
    with pytest.raises(ValueError, match="UTF-8"):
        model.generate(b"a\xffb")
    with pytest.raises(ValueError, match="document-start"):
        model.generate(torch.tensor([[ord("a"), ord("b")]]))
    with pytest.raises(ValueError, match="UTF-8"):
        model.generate(torch.tensor([[EOD, ord("a"), EOD, ord("b")]]))
    with pytest.raises(ValueError, match="not text"):
        model.generate(torch.tensor([[EOD, 300]]))
    with pytest.raises(TypeError, match="unknown arguments"):
        model.generate("a", max_new_token=3)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("a", do_sample=True, temperature=0.0)
    # a prompt at the context limit leaves no room: nothing is generated; rows near it stop
    # there (and never end inside a character), the others go on
    model.config.max_seq_bytes = 24
    assert model.generate("x" * 23, max_new_tokens=5) == ""
    sink = io.StringIO()
    assert model.generate("x" * 23, max_new_tokens=0, streamer=TextStreamer(file=sink)) == ""
    assert sink.getvalue() == "x" * 23 + "\n"
    for cache in (True, False):
        texts = model.generate(
            ["x" * 19, "y"],
            max_new_tokens=12,
            do_sample=True,
            seed=0,
            use_cache=cache,
            suppress_tokens=[EOD],
        )
        assert len(texts[0].encode()) <= 4 and len(texts[1].encode()) == 12


def test_bpe_bad_input(tiny_bpe) -> None:
    with pytest.raises(ValueError, match="longer than the model's context"):
        tiny_bpe.generate("x " * 5000)
    with pytest.raises(ValueError, match="max_new_words"):
        tiny_bpe.generate("x", max_new_words=2)
    assert tiny_bpe.generate("x", max_new_tokens=0) == ""


# ---- tokenizer, config, CLI ---------------------------------------------------------
def test_hat_tokenizer() -> None:
    enc = TOK(["ab", "é"], return_tensors="pt", padding=True)
    assert enc.input_ids.tolist() == [[EOD, 97, 98], [EOD, 0xC3, 0xA9]]
    enc = TOK(["ab", ""], return_tensors="pt", padding=True)
    assert enc.input_ids.tolist() == [[EOD, 97, 98], [PAD, PAD, EOD]]
    assert enc.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    right = TOK(["ab", ""], padding=True, padding_side="right")
    assert right["input_ids"] == [[EOD, 97, 98], [EOD, PAD, PAD]]
    assert TOK.decode([EOD, 104, 105, PAD]) == "<eod>hi<pad>"
    assert TOK.decode([EOD, 104, 0xC3, PAD], skip_special_tokens=True) == "h\ufffd"
    assert TOK.batch_decode(torch.tensor([[EOD, 104], [PAD, EOD]]), skip_special_tokens=True) == [
        "h",
        "",
    ]
    with pytest.raises(ValueError, match="padding"):
        TOK(["a", "bb"], return_tensors="pt")


def test_generation_config_round_trip(tmp_path) -> None:
    model = tiny()
    model.generation_config = GenerationConfig(max_new_tokens=7, do_sample=True, top_p=0.9)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "generation_config.json").is_file()
    loaded = hat.HATForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.generation_config == model.generation_config
    assert len(loaded.generate("a", seed=0).encode()) <= 7
    (tmp_path / "generation_config.json").write_text('{"max_new_tokenz": 3}')
    with pytest.raises(ValueError, match="generation_config.json"):
        hat.HATForCausalLM.from_pretrained(tmp_path)


def test_cli_streams(tmp_path, capsys, tiny_bpe) -> None:
    from hat.cli.generate import main

    tiny().save_pretrained(tmp_path / "hat")
    tiny_bpe.save_pretrained(tmp_path / "bpe")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("First prompt\nSecond\n")
    for kind in ("hat", "bpe"):
        main(
            [
                str(tmp_path / kind),
                "--prompt",
                "Hello",
                "--max-new-tokens",
                "12",
                "--do-sample",
                "--seed",
                "0",
                "--top-k",
                "20",
            ]
        )
        out = capsys.readouterr().out
        assert out.startswith("Hello")
    main([str(tmp_path / "hat"), "--prompt-file", str(prompts), "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert "First prompt" in out and "Second" in out


def test_end_and_suppressed_ids_outside_the_vocabulary_are_errors(tiny_hat, tiny_bpe) -> None:
    """An eos_token_id or suppressed id the model can never produce (300 for HAT's bytes) would
    end or ban nothing, silently: an error naming the setting."""
    with pytest.raises(ValueError, match=r"eos_token_id: \[300\] outside the model's ids 0..255"):
        tiny_hat.generate("Hi", max_new_tokens=2, eos_token_id=300)
    with pytest.raises(ValueError, match="suppress_tokens"):
        tiny_bpe.generate("Hi", max_new_tokens=2, suppress_tokens=[len(tiny_bpe.tokenizer)])
    assert len(tiny_hat.generate("Hi", max_new_tokens=2, eos_token_id=[10, 255])) <= 2
