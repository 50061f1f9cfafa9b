"""scripts/experiments/new_language.py end to end at a toy size (English -> Spanish on the built-in
samples): six runs at equal FLOPs per pair, the report, the figure, and a rerun that skips them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "experiments" / "new_language.py"


def load_script():
    spec = importlib.util.spec_from_file_location("new_language", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOY = [
    "--pretrain-steps=6",
    "--continue-steps=6",
    "--rows=2",
    "--row-bytes=256",
    "--eval-batches=1",
    "--eval-interval=3",
    "--log-interval=1",
    "--checkpoint-interval=0",
    "--twin-vocab=512",
    "--max-bytes=120000",
    "--tokenizer-bytes=100000",
]


def test_flops_to_reach_interpolates_between_evaluations() -> None:
    script = load_script()
    curve = [(0.0, 3.0), (10.0, 2.0), (20.0, 1.0)]
    assert script.flops_to_reach(curve, 1.5) == pytest.approx(15.0)
    assert script.flops_to_reach(curve, 3.5) == 0.0
    assert script.flops_to_reach(curve, 0.5) is None


@pytest.mark.slow
def test_experiment_end_to_end_at_toy_size(tmp_path: Path) -> None:
    script = load_script()
    out = tmp_path / "exp"
    report = script.main([f"--out={out}", *TOY])
    text = report.read_text()
    for name in script.RUNS:
        assert f"| {name} |" in text
    assert (
        "ratio twin / HAT" in text
        and "Command: `python scripts/experiments/new_language.py" in text
    )
    assert (out / "bpb_vs_flops.png").stat().st_size > 10_000

    res = json.loads((out / "results.json").read_text())
    runs = res["runs"]
    for phase in ("pretrain", "continue", "scratch"):  # equal FLOPs, counted from each run
        hat_run, twin = runs[f"{phase}_hat"], runs[f"{phase}_twin"]
        assert twin["flops"] == pytest.approx(hat_run["flops"], rel=0.35), phase
        assert hat_run["flops"] == pytest.approx(
            res["plan"][f"{phase}_hat"]["planned_flops"], rel=0.2
        )
    for name in ("continue_hat", "continue_twin"):  # evaluated on both languages from FLOPs 0
        assert runs[name]["curve"]["es"][0][0] == 0.0 and runs[name]["curve"]["en"][0][0] == 0.0
    en_twin, es_twin = runs["continue_twin"], runs["scratch_twin"]
    assert en_twin["positions_per_byte_es"] > en_twin["positions_per_byte_en"]
    assert es_twin["positions_per_byte_en"] > es_twin["positions_per_byte_es"]

    # rerunning skips every complete run and writes the report again
    metrics = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.jsonl")}
    assert len(metrics) == 6
    script.main([f"--out={out}", *TOY])
    assert {p: p.stat().st_mtime_ns for p in metrics} == metrics
