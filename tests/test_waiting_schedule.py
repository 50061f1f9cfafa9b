"""scripts/experiments/waiting_schedule.py: its count of byte steps and backbone passes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "experiments" / "waiting_schedule.py"


def load():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("waiting_schedule", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schedule_counts_by_hand() -> None:
    schedule = load().schedule
    F, T = False, True
    ends = [[F, T, F, F], [F, F, F, T]]  # row 0's byte 1 and row 1's byte 3 finish a word
    assert schedule(ends, 1) == (4, 2)  # today: a pass before each of those bytes
    # k = 2: row 0 waits from step 2 while row 1 writes; when row 1 waits too, one pass
    # serves both; row 0 then needs two more steps
    assert schedule(ends, 2) == (6, 1)
    assert schedule([[T, T]], 1) == (2, 2)  # one row: it never waits for others


def test_today_runs_the_backbone_at_nearly_every_step_of_a_big_batch() -> None:
    ws = load()
    ends = ws.word_ends("small", 32, 64, 128)
    steps, passes = ws.schedule(ends, 1)
    assert steps == max(map(len, ends)) and passes / steps > 0.9
    waited_steps, waited_passes = ws.schedule(ends, 16)
    assert waited_passes < passes / 2 and waited_steps > steps  # fewer passes, rows wait
    one = ws.word_ends("small", 1, 64, 128)
    assert ws.schedule(one, 1)[1] / len(one[0]) < 0.4  # a word is ~5 bytes


def test_measure_times_passes_apart_from_byte_steps() -> None:
    ws = load()
    args = ws.argparse.Namespace(
        preset="tiny", batch=4, prompt_bytes=32, measure_bytes=12, threads=None,
        device="cpu", dtype="float32",
    )  # fmt: skip
    costs = ws.measure(args)
    assert costs["steps_timed"] == 11  # the first new byte comes from the prefill
    assert 0 < costs["passes_timed"] <= costs["steps_timed"]
    assert costs["byte_step_ms"] > 0 and costs["pass_ms"] > 0
    # the engine's methods are restored afterwards
    assert ws.hat_engine.HATCachedEngine.step.__name__ == "step"


def forced_passages(batch: int, prompt_bytes: int, new_bytes: int) -> tuple:
    """(bench_generate, the tiny HAT, prompts, a ForceText of their continuations)."""
    import sys

    import torch

    import hat
    from hat.splitter import PAD

    load()  # puts scripts/ on the path
    bench = sys.modules["bench_generate"]
    torch.manual_seed(0)
    model = hat.HATForCausalLM.from_name("tiny").eval()
    pairs = bench.passages(batch, prompt_bytes, new_bytes)
    force = bench.ForceText([list(text.encode()) for _, text in pairs], "cpu", PAD)
    return bench, model, [prompt for prompt, _ in pairs], force


def test_bench_generate_counts_the_passes_the_engine_runs(monkeypatch) -> None:
    """``bench_generate.backbone_steps`` (the ``"backbone"`` it reports) counts from the text
    what the cached engine runs: the byte steps with a backbone pass and the rows in each."""
    from hat.generation import HATCachedEngine

    bench, model, prompts, force = forced_passages(6, 32, 48)
    rows_per_pass = []
    original = HATCachedEngine._backbone_steps

    def counted(self, finished):  # noqa: ANN001, ANN202
        rows_per_pass.append(len({row for row, *_ in finished}))
        return original(self, finished)

    monkeypatch.setattr(HATCachedEngine, "_backbone_steps", counted)
    new = force.ids.shape[1]
    out = model.generate(prompts, max_new_tokens=new, logits_processor=[force])
    assert len(rows_per_pass) > 10
    assert bench.backbone_steps(model, prompts, out) == {
        "step_share": round(len(rows_per_pass) / (new - 1), 3),
        "rows_per_step": round(sum(rows_per_pass) / len(rows_per_pass), 2),
    }


def test_bench_generate_force_text_either_way() -> None:
    """``ForceText`` makes the model write the given text: ``run`` counts per row with
    ``backbone_wait`` and with the cheap shared count when rows keep pace; with waiting rows
    only the per-row count is right."""
    bench, model, prompts, force = forced_passages(4, 24, 40)
    work = (prompts, force.ids.shape[1], {"do_sample": False, "logits_processor": [force]})
    wanted = [bytes(row).decode("utf-8", "replace") for row in force.ids.tolist()]
    for wait in (1, 3):
        _, _, texts = bench.run(model, work, True, "cpu", backbone_wait=wait)
        assert force.per_row == (wait != 1)
        assert texts == wanted
    force.per_row = False  # wrong with waiting rows: they would skip ids of their text
    shared = model.generate(prompts, max_new_tokens=force.ids.shape[1], backbone_wait=3,
                            logits_processor=[force])  # fmt: skip
    assert shared != wanted


def test_bench_generate_ratios_of_the_choice_inside_and_outside() -> None:
    """``--choice-outside`` adds a compiled path whose choice stays outside the graph: its
    ratio is fused / outside, and the compiled / eager ratio is the fused path's."""
    import sys

    import torch

    load()  # puts scripts/ on the path
    bench = sys.modules["bench_generate"]
    row = {"model": "bpe", "batch": 2, "use_cache": True}
    results = [
        {**row, "compile_step": False, "bytes_per_s": 100.0},
        {**row, "compile_step": True, "bytes_per_s": 150.0},
        {**row, "compile_step": True, "choice_outside": True, "bytes_per_s": 120.0},
    ]
    out = bench.ratios(results)
    assert out["bpe_b2_fused_over_outside"] == 1.25
    assert out["bpe_b2_compiled_over_eager"] == 1.5
    assert bench.pass_through(None, torch.ones(2)).tolist() == [1.0, 1.0]
