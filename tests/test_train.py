"""The trainer: real CLI runs on tiny settings (loss falls, checkpoints, export, resume after a
kill, two processes = one, BPE twin, wandb offline) plus fast checks of configs and schedules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hat
from hat.data import DataConfig, SourceConfig, build_eval_batches
from hat.modeling import bits_per_byte
from hat.training import (
    ConfigError,
    NonFiniteLossError,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TrainerConfig,
    build_optimizer,
    lr_multiplier,
    resolve_config,
    train,
)
from hat.training.checkpoint import (
    CheckpointError,
    list_checkpoints,
    save_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from hat.training.metrics import DataWaitAdvice
from tests.helpers import TINY, check, cli, losses, read_metrics, run_cli


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run that several tests compare against."""
    out = tmp_path_factory.mktemp("reference") / "run"
    check(run_cli(cli(*TINY, f"trainer.output_dir={out}")))
    return out


# ---- end to end through the CLI ----------------------------------------------------------------
@pytest.mark.slow
def test_cli_run_trains_checkpoints_and_exports(reference_run: Path) -> None:
    train_lines = read_metrics(reference_run)
    assert [r["step"] for r in train_lines] == list(range(1, 41))
    first, last = train_lines[0]["loss"], train_lines[-1]["loss"]
    assert last < first - 1.0, (first, last)
    assert {"loss", "bpb", "lr", "grad_norm", "bytes_per_s", "words_per_s"} <= set(train_lines[-1])
    assert all(0 < r["data_wait"] < 1 for r in train_lines)  # share of time waiting for batches
    assert [p.name for p in list_checkpoints(reference_run / "checkpoints")] == [
        "step_00000030",
        "step_00000040",
    ]
    assert not list((reference_run / "checkpoints").glob(".*"))  # no temp dirs left behind
    assert (reference_run / ".hydra" / "config.yaml").is_file()

    # the exported model is the trained one: its held-out bpb on the same packed batches
    # equals the logged evaluation
    model = hat.HATForCausalLM.from_pretrained(reference_run / "model")
    logged = read_metrics(reference_run, "eval")[-1]["eval_bpb"]
    batches = build_eval_batches(DataConfig(), model.data_format(), 256, 4, max_batches=4)
    text_nll = n_bytes = 0.0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            out = model(**batch)
            text_nll, n_bytes = text_nll + float(out.text_nll), n_bytes + float(out.text_bytes)
    assert bits_per_byte(text_nll, n_bytes) == pytest.approx(logged, rel=1e-4)


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = cli(*TINY, f"trainer.output_dir={out}")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_checkpoint = out / "checkpoints" / "step_00000010"
    deadline = time.monotonic() + 240
    while not first_checkpoint.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    still_running = proc.poll() is None
    proc.kill()
    stderr = proc.communicate()[1]
    assert first_checkpoint.is_dir(), stderr[-3000:]
    assert still_running, "the run finished before it could be killed; make it longer"
    killed_at = max(losses(out))
    assert killed_at < 40

    resumed = run_cli(args)
    check(resumed)
    assert "resumed from" in resumed.stdout + resumed.stderr
    got, want = losses(out), losses(reference_run)
    assert sorted(got) == list(
        range(1, 41)
    )  # lines after the checkpoint were rewritten, not doubled
    for step in range(1, 41):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step


@pytest.mark.slow
def test_two_processes_equal_one(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args += [
        "-m",
        "hat.cli.train",
        *TINY,
        f"trainer.output_dir={out}",
        "trainer.checkpoint_interval=0",
    ]
    proc = run_cli(args, env={"OMP_NUM_THREADS": "1"})
    check(proc)
    assert "on 2 x cpu" in proc.stdout + proc.stderr  # really two ranks, not two lone runs
    got, want = losses(out), losses(reference_run)
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4), step
    ddp_eval = read_metrics(out, "eval")[-1]["eval_bpb"]
    assert ddp_eval == pytest.approx(read_metrics(reference_run, "eval")[-1]["eval_bpb"], rel=1e-4)


@pytest.mark.slow
def test_bpe_twin_trains_on_the_same_text_with_the_same_command(
    reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "twin"
    args = [a for a in TINY if not a.startswith(("model=", "trainer.steps", "trainer.checkpoint"))]
    check(run_cli(cli(*args, "model=bpe_tiny", "trainer.steps=20", f"trainer.output_dir={out}")))
    train_lines = read_metrics(out)
    assert train_lines[-1]["loss"] < train_lines[0]["loss"] - 0.5
    assert "tokens_per_s" in train_lines[-1]
    # the same trainer.row_bytes: the twin's rows hold the tokens of as many bytes of text, so
    # after 20 steps both models have read about the same text (rows are cut between words or
    # tokens, hence not exactly)
    hat_bytes = read_metrics(reference_run)[19]["bytes_seen"]
    assert train_lines[-1]["bytes_seen"] == pytest.approx(hat_bytes, rel=0.1)
    model = hat.BPEForCausalLM.from_pretrained(
        out / "model"
    )  # the tokenizer trained at start comes along
    assert model.tokenizer is not None and len(model.tokenizer) == 512
    assert read_metrics(out, "eval")[-1]["eval_bpb"] < 8


@pytest.mark.slow
def test_wrong_key_fails_at_once_with_hydras_message(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = run_cli(cli("trainer.stepz=3", f"trainer.output_dir={tmp_path}"))
    assert proc.returncode != 0
    assert "Could not override 'trainer.stepz'" in proc.stderr, proc.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_wandb_offline_logs_without_network(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    steps = ["trainer.steps=3", "trainer.checkpoint_interval=0", "schedule.warmup_steps=1"]
    check(
        run_cli(
            cli(*TINY, *steps, "logger=wandb", "logger.mode=offline", f"trainer.output_dir={out}"),
            env=env,
        )
    )
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


# ---- in-process: NaN handling -----------------------------------------------------------------
def tiny_config(out: Path, **trainer: object) -> TrainConfig:
    settings = dict(
        steps=8, row_bytes=256, global_rows=2, log_interval=1, checkpoint_interval=2, eval_batches=1
    )
    settings.update(sample_new_tokens=0, output_dir=str(out), **trainer)
    return TrainConfig(
        model=hat.preset("tiny"),
        trainer=TrainerConfig(**settings),
        schedule=ScheduleConfig(warmup_steps=1),
    )


@pytest.fixture
def nan_at_call(monkeypatch: pytest.MonkeyPatch):
    """Make the 5th training forward return a NaN loss (evaluation calls run without grad)."""
    forward = hat.HATForCausalLM.forward
    calls = {"n": 0}

    def patched(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                out.sum_nll = out.sum_nll * float("nan")
        return out

    monkeypatch.setattr(hat.HATForCausalLM, "forward", patched)
    return calls


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step(tmp_path: Path, nan_at_call) -> None:
    with pytest.raises(NonFiniteLossError, match=r"at step 5\b.*step_00000004"):
        train(tiny_config(tmp_path))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step_00000002",
        "step_00000004",
    ]
    assert max(losses(tmp_path)) == 4


@pytest.mark.slow
def test_nan_batches_can_be_skipped(tmp_path: Path, nan_at_call) -> None:
    result = train(tiny_config(tmp_path, skip_nan_batches=True))
    assert result.step == 8 and math.isfinite(result.eval_bpb)
    assert math.isnan(losses(tmp_path)[5]) and math.isfinite(losses(tmp_path)[8])


# ---- fast checks --------------------------------------------------------------------------------
def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from hat.cli.common import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(
    "name", ["tiny", "small", "1b", "3b", "7b", "bpe_tiny", "bpe_small", "bpe_1b", "bpe_7b"]
)
def test_model_group_is_the_presets(name: str) -> None:
    assert resolve_config(compose(f"model={name}")).model == hat.preset(name)


def test_every_config_group_option_composes() -> None:
    for override in [
        "schedule=wsd",
        "schedule=linear",
        "schedule=constant",
        "logger=wandb",
        "model=my_hat",
        "data=fineweb_edu",
        "trainer=gpu",
        "trainer=paper",
    ]:
        resolve_config(compose(override))
    cfg = resolve_config(compose("model=small", "model.backbone.n_layers=8", "trainer.steps=700"))
    assert cfg.model.backbone.n_layers == 8 and cfg.trainer.steps == 700
    assert isinstance(resolve_config(compose("model=bpe_small")).model, hat.BPEConfig)
    assert resolve_config(compose()).trainer == TrainerConfig(output_dir="outputs/small")


def test_config_errors_say_what_to_change() -> None:
    cfg = compose("trainer.global_rows=6", "trainer.grad_accum=4")
    with pytest.raises(ConfigError, match=r"trainer.global_rows=6 .* e\.g\. trainer.global_rows=4"):
        resolve_config(cfg)
    with pytest.raises(ConfigError, match=r"schedule.warmup_steps=100 .* schedule.warmup_steps=5"):
        resolve_config(compose("trainer.steps=50"))
    with pytest.raises(ConfigError, match="raise trainer.row_bytes"):
        resolve_config(compose("model=tiny", "trainer.row_bytes=64"))


def test_loader_workers_are_chosen_for_the_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """data.num_workers=null (the default, and the local data config's): none on a CPU, on a
    GPU the CPUs each local process can spare (one kept for it), at most 8; a number wins."""
    from hat.data import DataConfig
    from hat.data.sources import auto_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_config(compose()).data.num_workers is None
    (tmp_path / "x.txt").write_text("some text\n")
    local = compose("data=local", f"data.sources.0.path={tmp_path / 'x.txt'}")
    assert resolve_config(local).data.num_workers is None
    assert auto_workers("cpu") == 0
    assert auto_workers("cuda") == 8  # 15 to spare, capped
    assert auto_workers("cuda", local_processes=4) == 3
    assert auto_workers("cuda", local_processes=16) == 0
    assert DataConfig().workers_for("cuda") == 8
    assert DataConfig(num_workers=2).workers_for("cuda") == 2
    assert DataConfig(num_workers=0).workers_for("cuda") == 0
    with pytest.raises(ValueError, match="data.num_workers must be >= 0"):
        DataConfig(num_workers=-1).validate()


def test_the_preloaded_allocator_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """LD_PRELOAD's malloc replacement (space or colon separated) is found by library name."""
    from hat.training.trainer import preloaded_allocator

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert preloaded_allocator() is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert preloaded_allocator() == "tcmalloc"
    monkeypatch.setenv("LD_PRELOAD", "/opt/libfoo.so:/usr/lib/libjemalloc.so.2")
    assert preloaded_allocator() == "jemalloc"
    monkeypatch.setenv("LD_PRELOAD", "libfoo.so libbar.so")
    assert preloaded_allocator() is None


def test_waiting_for_data_on_an_accelerator_is_said_once() -> None:
    advice = DataWaitAdvice("cuda", num_workers=0)
    assert advice.check(0.9) is None  # the first interval: workers start
    message = advice.check(0.3)
    assert "30% of the training time" in message and "data.num_workers (now 0)" in message
    assert advice.check(0.5) is None  # once
    busy = DataWaitAdvice("cuda", num_workers=4)
    assert busy.check(0.0) is None and busy.check(0.05) is None  # below 10 %: fine
    assert "in 4 workers" in busy.check(0.2)
    cpu = DataWaitAdvice("cpu", num_workers=0)  # workers would take the training's cores
    assert cpu.check(0.9) is None and cpu.check(0.9) is None


def test_schedules() -> None:
    cosine = ScheduleConfig("cosine", warmup_steps=10, min_lr_ratio=0.1)
    curve = [lr_multiplier(s, 100, cosine) for s in range(100)]
    assert curve[0] == pytest.approx(0.1) and curve[9] == pytest.approx(1.0)
    assert curve[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(curve[9:], curve[10:]))
    wsd = ScheduleConfig("wsd", warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0)
    curve = [lr_multiplier(s, 100, wsd) for s in range(100)]
    assert set(curve[9:80]) == {1.0} and curve[-1] == pytest.approx(0.0)
    linear = ScheduleConfig("linear", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_multiplier(49, 100, linear) == pytest.approx(0.5)


def test_weight_decay_only_on_linear_weights(tiny_bpe: hat.BPEForCausalLM) -> None:
    optimizer = build_optimizer(tiny_bpe, OptimConfig(weight_decay=0.1), lr=1e-3)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    linear = {n for n, m in tiny_bpe.named_modules() if isinstance(m, torch.nn.Linear)}
    names = {id(p): n for n, p in tiny_bpe.named_parameters()}
    assert {names[id(p)].removesuffix(".weight") for p in decay["params"]} == linear
    assert {"embed.weight"} <= {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim == 1 or names[id(p)] == "embed.weight" for p in no_decay["params"])


def test_checkpoints_are_atomic_and_verified(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    (root / ".step_00000003.tmp").mkdir(parents=True)  # a save interrupted by a kill
    (root / "step_00000002").mkdir()
    (root / "step_00000002" / "model.safetensors").write_bytes(b"x" * 10)
    write_manifest(root / "step_00000002")
    assert list_checkpoints(root) == [root / "step_00000002"]
    verify_checkpoint(root / "step_00000002")
    (root / "step_00000002" / "model.safetensors").write_bytes(b"y" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        verify_checkpoint(root / "step_00000002")
    assert callable(save_checkpoint)


@pytest.mark.slow
def test_each_source_is_evaluated_on_its_own(tmp_path: Path, sample_text: str) -> None:
    """With several sources (one of weight 0: evaluated, never trained on) the eval lines carry
    the mixture's bits per byte and each source's."""
    paragraphs = sample_text.split("\n\n")
    for name, part in (("austen_a", paragraphs[:300]), ("austen_b", paragraphs[300:600])):
        (tmp_path / f"{name}.txt").write_text("\n\n".join(part), encoding="utf-8")
    cfg = tiny_config(tmp_path / "run", steps=4, checkpoint_interval=0)
    cfg.data = DataConfig(
        [
            SourceConfig(str(tmp_path / "austen_a.txt")),
            SourceConfig(str(tmp_path / "austen_b.txt"), weight=0.0, label="held"),
        ],
        eval_every=10,
    )
    result = train(cfg)
    (line,) = read_metrics(tmp_path / "run", "eval")
    assert {"eval_bpb", "eval_bpb/austen_a", "eval_bpb/held", "eval_loss/held"} <= set(line)
    assert line["eval_bpb"] == pytest.approx(line["eval_bpb/austen_a"])  # the mixture is source a
    assert line["eval_bpb/held"] != line["eval_bpb"]
    assert result.eval_bpb == pytest.approx(line["eval_bpb"], abs=1e-6)


def test_export_of_a_compiled_model(tiny_hat: hat.HATForCausalLM, tmp_path: Path) -> None:
    """trainer.compile=true wraps the model in torch.compile's OptimizedModule: the export and
    the in-memory model the trainer hands out must be the plain model, with plain weight names."""
    from accelerate import Accelerator

    from hat.training.trainer import export_model, unwrap

    accelerator = Accelerator(cpu=True)
    compiled = torch.compile(tiny_hat)  # lazy: nothing is compiled until a forward
    assert unwrap(accelerator, compiled) is tiny_hat
    export_model(accelerator, compiled, tmp_path / "model")
    loaded = hat.HATForCausalLM.from_pretrained(tmp_path / "model")
    assert loaded.score(["Compiled, exported."]) == tiny_hat.score(["Compiled, exported."])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_bf16_autocast_run(kind: str, tmp_path: Path, tiny_tokenizer) -> None:
    """trainer.precision=bf16 (what GPUs run) end to end on CPU: autocast through training,
    evaluation, checkpoint and export. (The kernel's one-dtype contract under autocast is
    checked in tests/test_model.py: the CPU reference path would accept mixed dtypes.)"""
    cfg = tiny_config(tmp_path / kind, steps=3, precision="bf16", checkpoint_interval=0)
    if kind == "bpe":
        cfg.model = hat.preset("bpe_tiny")
        cfg.tokenizer.path = str(tiny_tokenizer.model_file)
    result = train(cfg)
    assert math.isfinite(result.eval_bpb)
    losses = [r["loss"] for r in read_metrics(tmp_path / kind)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert hat.load_pretrained(result.export_dir).num_parameters() > 0


@pytest.mark.slow
def test_init_from_continues_from_the_exported_weights(tmp_path: Path) -> None:
    """Continued pretraining: init_from starts from the saved weights (not a fresh init),
    with a fresh optimizer and step count; a model of the other kind is refused by name."""
    first = train(tiny_config(tmp_path / "first", steps=30, checkpoint_interval=0))
    cfg = tiny_config(tmp_path / "second", steps=2, checkpoint_interval=0)
    cfg.init_from = str(first.export_dir)
    train(cfg)
    fresh_loss = read_metrics(tmp_path / "first")[0]["loss"]
    continued = read_metrics(tmp_path / "second")
    assert [r["step"] for r in continued] == [1, 2]
    assert continued[0]["loss"] < fresh_loss - 1.0  # starts where the first run ended
    cfg = tiny_config(tmp_path / "third", steps=2)
    cfg.model = hat.preset("bpe_tiny")
    cfg.init_from = str(first.export_dir)
    with pytest.raises(ValueError, match="holds a 'hat' model"):
        train(cfg)


@pytest.mark.parametrize("kind", ["hat", "bpe"])
def test_eval_bpb_is_the_evaluation_bits_per_byte(
    kind: str, tiny_hat, tiny_bpe, tmp_path: Path
) -> None:
    """One definition of bits per byte: the trainer's held-out number on packed rows equals
    ``hat.evaluation.bits_per_byte`` on the same documents (one document per row here, so
    both see the same context)."""
    from accelerate import Accelerator

    from hat.evaluation import bits_per_byte as evaluation_bpb
    from hat.training.trainer import held_out_loss

    model = tiny_hat if kind == "hat" else tiny_bpe
    paragraphs = [f"Paragraph {i}: café, naïve, 日本 {'and so on ' * i}." for i in range(8)]
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    data = DataConfig([SourceConfig(str(path))], eval_every=2)
    held_out = list(hat.data.iter_documents(data, "eval"))
    assert len(held_out) == 4
    batches = build_eval_batches(data, model.data_format(), 512, global_rows=4)
    result = held_out_loss(model, batches, Accelerator(cpu=True))
    assert result.n_bytes == sum(len(d.encode()) for d in held_out)
    assert result.bpb == pytest.approx(evaluation_bpb(model, held_out), rel=1e-5)
    # as a compiled trainer evaluates: word slots padded (one graph), the same numbers
    batches = build_eval_batches(data, model.data_format(), 512, global_rows=4)
    slots = []  # word slots the model was given, per batch (HAT)
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: (
            slots.append(kwargs["word_lengths"].shape[1]) if "word_lengths" in kwargs else None
        ),
        with_kwargs=True,
    )
    try:
        padded = held_out_loss(model, batches, Accelerator(cpu=True), compiled=True)
    finally:
        hook.remove()
    assert padded.bpb == pytest.approx(result.bpb, rel=1e-5) and padded.n_bytes == result.n_bytes
    assert (kind == "bpe") == (not slots) and all(n % 128 == 0 for n in slots)


def test_a_twin_row_holds_the_tokens_of_row_bytes_of_text(tiny_bpe, tiny_hat) -> None:
    texts = ["The same text, measured once. " * 20, "And a second document."]
    n_bytes = sum(len(t.encode()) + 1 for t in texts)  # each with its start marker
    n_tokens = sum(len(tiny_bpe.tokenizer.encode(t)) + 1 for t in texts)
    assert tiny_bpe.units_per_row(1000, texts) == round(1000 * n_tokens / n_bytes)
    assert tiny_hat.units_per_row(1000, texts) == 1000
    with pytest.raises(ValueError, match="some text"):
        tiny_bpe.units_per_row(1000, [])


def test_metrics_keep_seven_significant_digits(tmp_path) -> None:
    """A warm-up's learning rate of 4e-7 is logged as such (rounding to 6 decimals gave 0)."""
    from accelerate import Accelerator

    from hat.training.metrics import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl", Accelerator(cpu=True))
    log.write({"step": 1, "kind": "train", "lr": 4e-7, "loss": 2.718281828})
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["lr"] == 4e-7 and record["loss"] == 2.718282
