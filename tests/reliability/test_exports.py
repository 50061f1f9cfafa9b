"""Saved models: a corrupted export is refused by name (in Python, hat-generate and hat-eval,
never sampled or scored to NaN), a config.json that lacks keys names them, and a training
checkpoint is accepted wherever a model directory is (load_pretrained, hat-eval, init_from)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hat
from hat.cli import generate
from hat.manifest import DamagedFileError, write_manifest
from tests.helpers import assert_cli_error, check, cli, read_metrics, run_cli, tiny

TEXT = "It is a truth universally acknowledged, that a single man"


@pytest.fixture
def corrupt_model(tiny_run: Path, tmp_path: Path) -> Path:
    """The run's export with 4 KB in the middle of its weights overwritten (same size: only
    the checksum can tell; 0xFF bytes are NaN floats)."""
    model = Path(shutil.copytree(tiny_run / "model", tmp_path / "model"))
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 4096)
    assert weights.stat().st_size == size
    return model


def test_corrupt_weights_are_refused_naming_the_file(corrupt_model: Path) -> None:
    weights = corrupt_model / "model.safetensors"
    with pytest.raises(DamagedFileError, match="checksum mismatch") as err:
        hat.load_pretrained(corrupt_model)
    assert err.value.path == weights
    with pytest.raises(DamagedFileError, match=f"{weights} is corrupt"):
        hat.HATForCausalLM.from_pretrained(corrupt_model)


@pytest.mark.slow
@pytest.mark.parametrize("prog", ["hat-generate", "hat-eval"])
def test_clis_refuse_corrupt_weights(corrupt_model: Path, prog: str, tmp_path: Path) -> None:
    if prog == "hat-generate":
        args = cli(str(corrupt_model), "--prompt", TEXT, module="hat.cli.generate")
    else:
        args = cli(f"models=[{corrupt_model}]", "max_docs=2", module="hat.cli.evaluate")
    proc = run_cli(args, cwd=tmp_path)
    assert_cli_error(proc, prog, f"{corrupt_model / 'model.safetensors'} is corrupt")
    assert TEXT not in proc.stdout and "nan" not in proc.stdout.lower()


def test_config_missing_keys_are_named(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A config.json written without some keys (and a manifest that matches it, so only the
    keys can be wrong): hat-generate names the file and the keys."""
    model = Path(shutil.copytree(tiny_run / "model", tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    del config["decoder"], config["max_seq_bytes"]
    (model / "config.json").write_text(json.dumps(config))
    write_manifest(model)
    with pytest.raises(SystemExit) as exit_:
        generate.main([str(model), "--prompt", "Hi"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"hat-generate: error: {model / 'config.json'}") and err.count("\n") == 1
    assert "keys missing: ['decoder', 'max_seq_bytes']" in err


# ---- checkpoints as model directories ----------------------------------------------------------
def test_a_checkpoint_loads_as_the_model_of_its_step(tiny_run: Path) -> None:
    checkpoint = hat.load_pretrained(tiny_run / "checkpoints" / "step_00000010")
    export = hat.load_pretrained(tiny_run / "exports" / "step_00000010")  # the same step
    final = hat.load_pretrained(tiny_run / "model")
    logits = checkpoint.byte_logprobs(TEXT)
    assert torch.equal(logits, export.byte_logprobs(TEXT))
    assert not torch.equal(logits, final.byte_logprobs(TEXT))  # really step 10's weights


@pytest.mark.slow
def test_hat_eval_scores_a_checkpoint_as_its_export(tiny_run: Path, tmp_path: Path) -> None:
    checkpoint, export = tiny_run / "checkpoints" / "step_00000020", tiny_run / "model"
    out = tmp_path / "eval.json"
    args = [f"models=[{checkpoint},{export}]", "max_docs=3", f"output={out}"]
    check(run_cli(cli(*args, module="hat.cli.evaluate"), cwd=tmp_path))
    rows = json.loads(out.read_text())["models"]
    assert rows[str(checkpoint)]["bits_per_byte"] == rows[str(export)]["bits_per_byte"]


@pytest.mark.slow
def test_init_from_a_checkpoint_directory(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "continued"
    settings = tiny("trainer.steps=2", "trainer.checkpoint_interval=0", "schedule.warmup_steps=1")
    init = tiny_run / "checkpoints" / "step_00000020"
    check(run_cli(cli(*settings, f"init_from={init}", f"trainer.output_dir={out}")))
    fresh, continued = read_metrics(tiny_run)[0]["loss"], read_metrics(out)[0]["loss"]
    assert continued < fresh - 1.0  # starts from the checkpoint's weights, not a new init
