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
