"""scripts/experiments/generation_time_split.py: its split of a generation step's time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/experiments/generation_time_split.py"


def test_time_split_parts_nest_and_the_methods_are_restored() -> None:
    spec = importlib.util.spec_from_file_location("generation_time_split", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    step = module.hat_engine.HATCachedEngine.step
    args = module.parse_args(["--preset", "tiny", "--batch", "2", "--new-bytes", "24"])
    report = module.measure(args)
    us = report["us_per_step"]
    assert report["steps"] >= 20 and report["device"] == "cpu"
    assert 0 < us["word passes"] <= us["engine step"] <= us["total"]
    assert 0 < us["word tracker"] < us["total"] and us["eager pooling"] > 0
    assert "graphs" not in us  # eager: no compiled step
    assert module.hat_engine.HATCachedEngine.step is step  # unwrapped again
    torch.testing.assert_close(  # the parts outside the graphs add up
        us["host, outside graphs, prefill and init"],
        us["total"] - us["prefill"] - us["engine init"],
        atol=0.2,
        rtol=0,
    )


def test_hand_capture_copies_arguments_in_and_replays(monkeypatch) -> None:
    """scripts/experiments/cuda_graph_capture.py's host side on a CPU, a replay standing in
    for the CUDA graph (it reruns the recorded call on the recorded inputs, writing the
    recorded outputs): the same text as the compiled step, one capture per argument shape,
    later calls replayed with their arguments copied in, and a fresh capture after the caches
    grow."""
    import hat
    from hat.generation import HATCachedEngine
    from tests.test_generation import Force

    path = SCRIPT.parent / "cuda_graph_capture.py"
    spec = importlib.util.spec_from_file_location("cuda_graph_capture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    replays, recorded = [], []

    def capture(fn, inputs):  # noqa: ANN001, ANN202
        recorded.append((fn, tuple(None if t is None else t.shape for t in inputs)))
        outputs = fn(*inputs)

        def replay() -> None:
            replays.append(1)
            fresh = fn(*inputs)
            flat, _ = torch.utils._pytree.tree_flatten(outputs)
            for old, new in zip(flat, torch.utils._pytree.tree_flatten(fresh)[0], strict=True):
                old.copy_(new)

        return replay, outputs

    monkeypatch.setattr(module.CapturedCalls, "capture", staticmethod(capture))
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the static graphs, uncompiled
    monkeypatch.setattr(HATCachedEngine, "UNIT", 1)  # caches not rounded up: they grow
    monkeypatch.setattr(HATCachedEngine, "WORD_UNIT", 1)
    torch.manual_seed(0)
    model = hat.HATForCausalLM.from_name("tiny").eval()
    prompts = ["Hello wor", "It's 3.14, "]
    kwargs = dict(max_new_tokens=60, do_sample=True, seed=1, suppress_tokens=[192])
    plain = model.generate(prompts, compile_step=True, **kwargs)  # the choice in the graphs
    short_words = dict(max_new_tokens=100, logits_processor=[Force(b"a " * 50)])
    grown = model.generate(prompts, compile_step=True, **short_words)  # 50 words: caches grow
    forgotten = []
    with module.CapturedCalls() as capture:
        reshaped = module.lean.StaticStep.reshaped
        module.lean.StaticStep.reshaped = lambda s: forgotten.append(1) or reshaped(s)
        try:
            assert model.generate(prompts, compile_step=True, **kwargs) == plain
            short_words["logits_processor"] = [Force(b"a " * 50)]
            assert model.generate(prompts, compile_step=True, **short_words) == grown
        finally:
            module.lean.StaticStep.reshaped = reshaped
    assert capture.captures >= 3 and len(replays) > 50  # byte graph, word graphs, regrown
    assert forgotten, "the word caches never grew"
    assert len(set(recorded)) < len(recorded)  # a step's shape captured again once they grew
    assert module.lean.StaticStep.__call__ is capture.original  # restored
