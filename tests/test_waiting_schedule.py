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
