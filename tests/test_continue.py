"""hat-continue: continued pretraining of a saved HAT and twin on the built-in Spanish sample with
replay of their (recorded) English data, through the real CLI on tiny settings; the replay share
counted from the data pipeline; the twin's tokenizer kept; freezing; errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

import hat
from hat.batching import IGNORE
from hat.data import DataConfig, SourceConfig, build_train_loader
from hat.training import ScheduleConfig, lr_multiplier
from hat.training.config import ConfigError
from hat.training.continued import (
    ContinueConfig,
    FreezeConfig,
    Freezer,
    ReplayConfig,
    continue_training,
    replay_mixture,
    resolve_continue_config,
    trained_units_by_source,
)
from hat.training.record import data_from_record, read_training_record
from hat.training.resume import RunLock
from tests.helpers import losses
from tests.test_train import check, read_metrics, run_cli

SMALL = [  # tiny rows, no sample, deterministic: seconds per run
    "trainer.row_bytes=256",
    "trainer.global_rows=4",
    "trainer.log_interval=1",
    "trainer.eval_batches=2",
    "trainer.sample_new_tokens=0",
    "trainer.deterministic=true",
]


def train_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hat.cli.train", *SMALL, *args]


def continue_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hat.cli.continue_", *SMALL, *args]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: hat.BPETokenizer) -> dict:
    """A tiny HAT and a tiny twin pretrained for a few steps on the English sample (hat-train)."""
    root = tmp_path_factory.mktemp("pretrained")
    common = ["trainer.steps=4", "schedule.warmup_steps=1", "trainer.checkpoint_interval=0"]
    hat_run, twin_run = root / "hat", root / "twin"
    check(run_cli(train_cli("model=tiny", *common, f"trainer.output_dir={hat_run}")))
    twin_args = ["model=bpe_tiny", f"tokenizer.path={tiny_tokenizer.model_file}", *common]
    check(run_cli(train_cli(*twin_args, f"trainer.output_dir={twin_run}")))
    return {"hat": hat_run, "twin": twin_run}


def replay_share(out: Path, batches: int) -> float:
    """The replay share of the trained units in the first ``batches`` global batches of the
    run's data pipeline (its mixture as exported in training.json), counted per unit."""
    record = read_training_record(out / "model")
    data = data_from_record(record["data"])
    model = hat.load_pretrained(out / "model")
    rows, seq_len = record["trainer"]["global_rows"], record["units_per_row"]
    counts = trained_units_by_source(data, model.data_format(), seq_len, rows, batches)
    new = len(record["continued_from"]["new"])
    return sum(counts[new:]) / sum(counts)


# ---- through the CLI ---------------------------------------------------------------------------
def continue_hat_args(init: Path, out: Path) -> list[str]:
    schedule = ["schedule.warmup_steps=3", "schedule.decay_fraction=0.5"]
    args = [f"init_from={init}", "replay.fraction=0.25", "trainer.steps=8", *schedule]
    args += ["trainer.eval_interval=4", "trainer.checkpoint_interval=2", "trainer.keep_last=10"]
    return [*args, "freeze.modules=[backbone]", "freeze.steps=4", f"trainer.output_dir={out}"]


@pytest.fixture(scope="module")
def continued_hat(pretrained: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """hat-continue of the tiny HAT on Spanish with English replay, the backbone frozen for the
    first 4 of 8 steps -> (its init, its run directory, its log)."""
    init, out = pretrained["hat"] / "model", tmp_path_factory.mktemp("continued") / "es"
    proc = run_cli(continue_cli(*continue_hat_args(init, out)))
    check(proc)
    return init, out, proc.stdout + proc.stderr


def assert_backbone_frozen_then_trained(init: Path, out: Path) -> None:
    """The backbone does not change while frozen (steps 1-4) and does after."""
    init_weights = load_file(str(init / "model.safetensors"))
    checkpoints = out / "checkpoints"
    backbone = [k for k in init_weights if k.startswith("backbone.")]
    for step in (2, 4):
        state = load_file(str(checkpoints / f"step_{step:08d}" / "model.safetensors"))
        assert backbone and all((state[k] == init_weights[k]).all() for k in backbone)
        assert any((state[k] != init_weights[k]).any() for k in state if k.startswith("encoder."))
    final = load_file(str(out / "model" / "model.safetensors"))
    assert any((final[k] != init_weights[k]).any() for k in backbone)


@pytest.mark.slow
def test_continue_hat_replays_rewarms_evaluates_and_freezes(continued_hat: tuple) -> None:
    init, out, log = continued_hat
    # hydra's record, written by hat-continue once the run held the directory
    assert f"init_from: {init}" in (out / ".hydra" / "config.yaml").read_text()
    assert "freeze.steps=4" in (out / ".hydra" / "overrides.yaml").read_text()

    # held-out bits per byte of the new language and of the replayed English, at 0 and on the way
    evals = {r["step"]: r for r in read_metrics(out, "eval")}
    assert sorted(evals) == [0, 4, 8]
    for record in evals.values():
        assert {"eval_bpb", "eval_bpb/sample_es", "eval_bpb/sample"} <= set(record)
    assert evals[8]["eval_bpb/sample_es"] < evals[0]["eval_bpb/sample_es"]

    # the learning rate re-warms to the recorded pretraining peak and re-decays (wsd)
    peak = read_training_record(init)["peak_lr"]
    schedule_cfg = ScheduleConfig(name="wsd", warmup_steps=3, decay_fraction=0.5, min_lr_ratio=0)
    lrs = {r["step"]: r["lr"] for r in read_metrics(out)}
    assert sorted(lrs) == list(range(1, 9))
    for step, lr in lrs.items():
        assert lr == pytest.approx(peak * lr_multiplier(step - 1, 8, schedule_cfg), rel=1e-5)
    assert lrs[1] < lrs[3] == pytest.approx(peak) and lrs[8] < lrs[5]

    # positions per byte of both languages, in the log and in metrics.jsonl
    (data,) = read_metrics(out, "data")
    assert 0.1 < data["positions_per_byte/sample_es"] < 0.4
    assert 0.1 < data["positions_per_byte/sample"] < 0.4
    assert "words per byte of held-out text" in log and "sample_es" in log

    assert_backbone_frozen_then_trained(init, out)

    # the export records its mixture and where it came from; a continuation can continue again
    record = read_training_record(out / "model")
    assert record["continued_from"]["replay"] == ["sample"]
    assert [s["label"] for s in record["data"]["sources"]] == ["sample_es", "sample"]

    # the replay share of the trained bytes, counted from the data pipeline: over the batches a
    # longer run trains (sampling noise ~1.5 %), and as logged over this run's 8 batches
    assert replay_share(out, 400) == pytest.approx(0.25, abs=0.05)
    assert data["replay_share"] == pytest.approx(replay_share(out, 8), abs=1e-6)


@pytest.mark.slow
def test_two_processes_continue_and_freeze_as_one(continued_hat: tuple, tmp_path: Path) -> None:
    """Under DDP the frozen backbone's gradients are reduced and dropped (its parameters keep
    requiring gradients: DDP reduces what it was wrapped with); one process stops computing
    them. The same losses either way, and the backbone stays as it was while frozen."""
    init, reference, _ = continued_hat
    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args += ["-m", "hat.cli.continue_", *SMALL, *continue_hat_args(init, out)]
    proc = run_cli(args, env={"OMP_NUM_THREADS": "1"})
    check(proc)
    assert "on 2 x cpu" in proc.stdout + proc.stderr  # really two ranks
    got, want = losses(out), losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    assert_backbone_frozen_then_trained(init, out)


@pytest.mark.slow
def test_continue_twin_keeps_its_tokenizer(pretrained: dict, tmp_path: Path) -> None:
    init = pretrained["twin"] / "model"
    out = tmp_path / "es-twin"
    args = [f"init_from={init}", "replay.fraction=0.25", "trainer.steps=3"]
    proc = run_cli(continue_cli(*args, "schedule.warmup_steps=1", f"trainer.output_dir={out}"))
    check(proc)
    tokenizer = (init / "tokenizer.model").read_bytes()
    assert (out / "model" / "tokenizer.model").read_bytes() == tokenizer
    assert (out / "tokenizer.model").read_bytes() == tokenizer
    before, after = hat.load_pretrained(init), hat.load_pretrained(out / "model")
    text = "Y dijo Dios: Sea la luz: y fué la luz."
    assert after.tokenizer.encode(text) == before.tokenizer.encode(text)

    (data,) = read_metrics(out, "data")
    es, en = data["positions_per_byte/sample_es"], data["positions_per_byte/sample"]
    assert es > en > 0  # an English tokenizer spends more tokens on Spanish bytes
    assert "tokens per byte of held-out text" in proc.stdout + proc.stderr
    evals = read_metrics(out, "eval")
    assert [r["step"] for r in evals] == [0, 3]
    assert all({"eval_bpb/sample_es", "eval_bpb/sample"} <= set(r) for r in evals)
    assert replay_share(out, 300) == pytest.approx(0.25, abs=0.05)  # of the trained tokens


@pytest.mark.slow
def test_continue_from_checkpoint_with_its_optimizer_state(
    pretrained: dict, tmp_path: Path
) -> None:
    checkpoint = pretrained["hat"] / "checkpoints" / "step_00000004"
    out = tmp_path / "from-checkpoint"
    args = [f"init_from={checkpoint}", "optimizer_state=init_from", "trainer.steps=2"]
    proc = run_cli(continue_cli(*args, "schedule.warmup_steps=1", f"trainer.output_dir={out}"))
    check(proc)
    assert "AdamW moments loaded" in proc.stdout + proc.stderr
    # AdamW counts steps per parameter: 4 of pretraining + 2 here
    import torch

    state = torch.load(out / "checkpoints" / "step_00000002" / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in state["state"].values()} == {6.0}
    # the replayed data is the checkpoint's recorded data
    assert read_training_record(out / "model")["continued_from"]["replay"] == ["sample"]


CLI_ERRORS = {  # case: (settings, what the one-line message must say)
    "init_from missing": ([], "init_from is required"),
    "not a model": (["init_from={run}"], "is not a model"),
    "a checkpoint of the other kind": (
        ["init_from={hat}", "optimizer_state={twin_checkpoint}"],
        "is a checkpoint of a 'bpe' model; init_from holds a 'hat' model",
    ),
    "replay fraction 1": (["init_from={hat}", "replay.fraction=1.0"], "must be in [0, 1)"),
    "empty replay source": (
        ["init_from={hat}", "replay.sources=[{{path: {empty}}}]"],
        "replay.sources[0] ({empty}) is empty",
    ),
    "a misspelt setting": (
        ["init_from={hat}", "+replay.fractoin=0.5"],
        "unknown setting replay.fractoin; did you mean replay.fraction?",
    ),
    "freeze target": (
        ["init_from={hat}", "freeze.modules=[backbon]", "freeze.steps=2"],
        "'backbon' names no module of this hat model; its modules are ['encoder', 'pooler', "
        "'backbone', 'decoder']",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_errors_are_one_line(case: str, pretrained: dict, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    paths = {
        "run": pretrained["hat"],
        "hat": pretrained["hat"] / "model",
        "twin_checkpoint": pretrained["twin"] / "checkpoints" / "step_00000004",
        "empty": empty,
    }
    settings, message = CLI_ERRORS[case]
    out = tmp_path / "out"
    args = [s.format(**paths) for s in settings]
    proc = run_cli(continue_cli(*args, f"trainer.output_dir={out}"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hat-continue: error: ") and message.format(**paths) in last, last
    assert not (out / "metrics.jsonl").exists()  # nothing started


@pytest.mark.slow
def test_multirun_jobs_continue_in_their_own_directories(pretrained: dict, tmp_path: Path) -> None:
    """``-m``: job N runs in <output_dir>/N; sharing one directory, job 1 resumed job 0's run."""
    out = tmp_path / "sweep"
    args = [f"init_from={pretrained['hat'] / 'model'}", "trainer.steps=1,2"]
    cli = continue_cli(*args, "schedule.warmup_steps=0", f"trainer.output_dir={out}")
    proc = run_cli([*cli[:3], "--multirun", *cli[3:]])
    check(proc)
    assert "resumed from" not in proc.stdout + proc.stderr
    for job, steps in enumerate((1, 2)):
        assert sorted(losses(out / str(job))) == list(range(1, steps + 1))
        assert (out / str(job) / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_help_lists_the_config_groups() -> None:
    help_text = run_cli([sys.executable, "-m", "hat.cli.continue_", "--help"]).stdout
    for group in ("data:", "optim:", "schedule:", "trainer:", "logger:"):
        assert group in help_text
    assert "init_from" in help_text and "replay" in help_text


# ---- more errors (in-process: they come before any training) ---------------------------------------
def error_of(pretrained: dict, tmp_path: Path, **settings: object) -> str:
    settings.setdefault("init_from", str(pretrained["hat"] / "model"))
    cfg = ContinueConfig(**settings)
    cfg.trainer.output_dir = str(tmp_path / "never")
    with pytest.raises(ValueError) as info:
        continue_training(cfg)
    return str(info.value)


@pytest.mark.slow
def test_errors_say_what_to_change(pretrained: dict, tmp_path: Path) -> None:
    assert "does not exist" in error_of(pretrained, tmp_path, init_from=str(tmp_path / "nope"))
    run_dir = error_of(pretrained, tmp_path, init_from=str(pretrained["hat"]))
    assert f"did you mean init_from={pretrained['hat'] / 'model'}?" in run_dir
    for fraction in (-0.1, float("nan")):
        too_small = error_of(pretrained, tmp_path, replay=ReplayConfig(fraction=fraction))
        assert "replay.fraction must be in [0, 1)" in too_small
    other_kind = error_of(pretrained, tmp_path, model=hat.preset("bpe_tiny"))
    assert "holds a 'hat' model but model= is a 'bpe' model" in other_kind
    missing = error_of(pretrained, tmp_path, replay=ReplayConfig([SourceConfig("/no/*.txt")], 0.1))
    assert "replay.sources[0] (/no/*.txt)" in missing and "no file matches" in missing
    assert "needs init_from to be a training checkpoint" in error_of(
        pretrained, tmp_path, optimizer_state="init_from"
    )
    assert "freeze.steps >= 1" in error_of(pretrained, tmp_path, freeze=FreezeConfig(["encoder"]))
    # a run directory as optimizer_state: the message names optimizer_state and a checkpoint
    run_as_state = error_of(pretrained, tmp_path, optimizer_state=str(pretrained["hat"]))
    checkpoint = pretrained["hat"] / "checkpoints" / "step_00000004"
    assert run_as_state.startswith(f"optimizer_state={str(pretrained['hat'])!r} is not a model")
    assert f"did you mean optimizer_state={checkpoint}?" in run_as_state
    assert not (tmp_path / "never").exists()  # nothing started


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["load_optimizer_moments", "report_data"])
def test_a_run_that_fails_after_taking_its_directory_releases_it(
    failing: str, pretrained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after the trainer took the run's lock (loading AdamW's moments, the step-0
    report) releases it: retrying in the same process (a notebook) is not told the directory
    "is in use"."""
    import hat.training.continued as continued

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected")

    target = continued if failing == "load_optimizer_moments" else continued.ContinueTrainer
    monkeypatch.setattr(target, failing, fail)
    cfg = ContinueConfig(
        init_from=str(pretrained["hat"] / "checkpoints" / "step_00000004"),
        optimizer_state="init_from",
        replay=ReplayConfig(fraction=0.0),
    )
    cfg.trainer.output_dir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="injected"):
        continue_training(cfg)
    assert not (tmp_path / "run" / ".lock").exists()
    lock = RunLock(tmp_path / "run")
    lock.acquire()  # raised "is in use" while the failed run's lock was left open
    lock.release()


def test_unknown_settings_are_errors() -> None:
    """hydra's ``+key=value`` adds keys the schema lacks; they must not be dropped unread."""
    for key, hint in [
        ("replay.fractoin", "replay.fraction"),
        ("trainer.stpes", "trainer.steps"),
        ("freeze.step", "freeze.steps"),
    ]:
        conf = OmegaConf.structured(ContinueConfig(init_from="somewhere"))
        group, name = key.split(".")
        with open_dict(conf[group]):  # what +key=value does
            conf[group][name] = 3
        with pytest.raises(ConfigError, match=f"unknown setting {key}; did you mean {hint}"):
            resolve_continue_config(conf)


# ---- pieces --------------------------------------------------------------------------------------
def test_replay_weights_give_the_asked_share_of_units() -> None:
    fmt = hat.HATForCausalLM.from_name("tiny").data_format()
    new, english = DataConfig([SourceConfig("builtin:sample_es")]), SourceConfig("builtin:sample")
    mixture = replay_mixture(new, [english], 0.1, fmt)
    assert (mixture.new, mixture.replay) == (["sample_es"], ["sample"])
    counts = trained_units_by_source(mixture.data, fmt, 512, 8, 200)
    assert counts[1] / sum(counts) == pytest.approx(0.1, abs=0.03)

    # fraction 0: the replay source is evaluated, never trained on; a weight-0 new source that
    # is also a replay source is listed once
    eval_only = DataConfig(
        [SourceConfig("builtin:sample_es"), SourceConfig(english.path, weight=0)]
    )
    mixture = replay_mixture(eval_only, [english], 0.0, fmt)
    assert [(s.label, s.weight) for s in mixture.data.sources] == [
        ("sample_es", 1.0),
        ("sample", 0.0),
    ]
    assert set(mixture.data.eval_sets()) == {"sample_es", "sample"}


def test_a_recorded_absolute_path_is_the_same_source_as_a_relative_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_text: str
) -> None:
    """training.json records local paths absolute; the new language named relative (here
    evaluated only while pretraining) is still one source, evaluated once."""
    (tmp_path / "en.txt").write_text(sample_text[:60_000])
    (tmp_path / "de.txt").write_text(sample_text[60_000:120_000])
    monkeypatch.chdir(tmp_path)
    fmt = hat.HATForCausalLM.from_name("tiny").data_format()
    recorded = [
        SourceConfig(str(tmp_path / "en.txt")),
        SourceConfig(str(tmp_path / "de.txt"), weight=0),
    ]
    mixture = replay_mixture(DataConfig([SourceConfig("de.txt")]), recorded, 0.1, fmt)
    assert [s.label for s in mixture.data.sources] == ["de", "en"]


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_units_by_source_follow_the_real_loader(
    kind: str, tiny_tokenizer: hat.BPETokenizer
) -> None:
    if kind == "hat":
        model = hat.HATForCausalLM.from_name("tiny")
    else:
        model = hat.BPEForCausalLM(hat.BPEConfig.from_name("bpe_tiny"), tiny_tokenizer)
    fmt = model.data_format()
    data = replay_mixture(
        DataConfig([SourceConfig("builtin:sample_es")]), [SourceConfig("builtin:sample")], 0.3, fmt
    ).data
    loader = build_train_loader(data, fmt, 128, 4)
    for batches in (1, 2, 3):  # the counted units are exactly the loader's targets
        targets = int((next(loader)["labels"] != IGNORE).sum())
        before = sum(trained_units_by_source(data, fmt, 128, 4, batches - 1))
        assert sum(trained_units_by_source(data, fmt, 128, 4, batches)) - before == targets


def test_freezer_freezes_then_releases() -> None:
    model = hat.HATForCausalLM.from_name("tiny")
    freezer = Freezer(model, ["backbone", "decoder.transformer.layers.0"], steps=3)
    freezer.update(0, model)
    frozen = {id(p) for p in freezer.parameters(model)}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters() if id(p) not in frozen)
    assert freezer.frozen_parameters(model) == []  # one process: nothing to drop
    freezer.update(3, model)
    assert all(p.requires_grad for p in model.parameters())

    wrapped = Freezer(model, ["backbone"], steps=3)
    wrapped.wrapped = True  # as under DDP / FSDP: gradients dropped, requires_grad untouched
    wrapped.update(0, model)
    assert all(p.requires_grad for p in model.parameters())
    assert {id(p) for p in wrapped.frozen_parameters(model)} == {
        id(p) for p in model.backbone.parameters()
    }
    wrapped.update(3, model)
    assert wrapped.frozen_parameters(model) == []
    with pytest.raises(ValueError, match="freezes every parameter"):
        Freezer(model, [name for name, _ in model.named_children()], 1)
