"""Pretraining: one loop for HAT and its BPE twin, on CPU, one GPU, DDP or FSDP2 (accelerate).

``hat-train`` fills a ``TrainConfig`` from hydra and calls ``train``; Python users can call
``train(TrainConfig(...))`` or ``Trainer(cfg).fit()``. A step is:

    global batch (trainer.global_rows rows of trainer.row_bytes bytes of text, the same for any
    world size; a twin's row holds the tokens of that many bytes)
      -> this rank's rows, split into trainer.grad_accum micro-batches
      -> forward + backward of each, loss = sum_nll * world_size / global target count
      -> clip, AdamW, schedule

so the gradient is that of the mean loss over every target of the global batch, whatever the
number of ranks or micro-batches. The trainer never asks which kind of model it trains: it asks
the model (``data_format``, ``units_per_row``, ``backbone_positions``) and its kind
(``hat.registry``).

Output directory (``trainer.output_dir``)::

    metrics.jsonl                  one JSON line per log step and per evaluation
    checkpoints/step_00000100/     accelerate state + trainer_state.json + manifest.json
    model/                         save_pretrained export of the final model (tokenizer for BPE),
                                   with training.json: the data and peak lr it was trained with
    exports/step_00000100/         periodic exports (trainer.export_interval)
    tokenizer.model                BPE only: the tokenizer trained at start (if none was given)
    .hydra/, train.log             hydra's record of the run (rank 0 only)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hat.auto import load_pretrained
from hat.batching import IGNORE, pad_word_slots
from hat.block import reserve_positions
from hat.compiling import compile_unavailable
from hat.data import build_eval_batches, build_train_loader, iter_documents
from hat.errors import HatError
from hat.modeling import PreTrainedLM, bits_per_byte
from hat.registry import kind_of
from hat.tokenizer import TOKENIZER_FILE, BPETokenizer
from hat.training.checkpoint import (
    ABANDONED,
    CHECKPOINT_PREFIX,
    CheckpointError,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
    set_aside_later,
)
from hat.training.config import TrainConfig, TrainerConfig, resolve_config
from hat.training.metrics import (
    METRICS_FILE,
    DataWaitAdvice,
    MetricsLog,
    Throughput,
    mfu,
    peak_flops,
)
from hat.training.optim import build_optimizer, build_scheduler, lr_multiplier, peak_lr
from hat.training.record import portable_data, write_training_record
from hat.training.resume import RunLock, apply_optimizer_settings, compare_settings, log_changes
from hat.training.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

EXPORT_DIR = "model"
MEASURE_BYTES = 1_000_000  # training text read to measure a twin's tokens per row


class NonFiniteLossError(HatError):
    """The loss or gradient became NaN/inf and ``trainer.skip_nan_batches`` is off."""


# ---- set-up ----------------------------------------------------------------------------------
def prepare_tokenizer(
    cfg: TrainConfig, accelerator: Accelerator, out_dir: Path
) -> BPETokenizer | None:
    """The twin's tokenizer: ``tokenizer.path``, or one trained now on the training data
    (rank 0 trains it, the others read the file). None for kinds without one, and with
    ``init_from`` (the saved model brings its own)."""
    if not kind_of(cfg.model).uses_tokenizer or cfg.init_from:
        return None
    if cfg.tokenizer.path:
        return BPETokenizer(cfg.tokenizer.path)
    path = out_dir / TOKENIZER_FILE
    with accelerator.main_process_first():
        if not path.is_file():
            vocab = cfg.model.vocab_size
            logger.info(f"training a {vocab}-token BPE tokenizer on the training data -> {path}")
            train_tokenizer(cfg.data, vocab, path, cfg.tokenizer.train_bytes)
    return BPETokenizer(path)


def build_model(cfg: TrainConfig, tokenizer: BPETokenizer | None) -> PreTrainedLM:
    """A fresh model of ``cfg.model``, or the ``init_from`` model with its saved architecture."""
    if not cfg.init_from:
        return kind_of(cfg.model).build(cfg.model, tokenizer)
    model = load_pretrained(cfg.init_from).train()
    saved, chosen = model.config, cfg.model
    if kind_of(saved) is not kind_of(chosen):
        raise ValueError(
            f"init_from={cfg.init_from} holds a {saved.model_type!r} model but model= is a "
            f"{chosen.model_type!r} preset; choose a matching model= preset"
        )
    differ = sorted(
        k for k, v in chosen.to_dict().items() if k != "name" and saved.to_dict().get(k) != v
    )
    if differ:
        logger.warning(
            f"init_from: using the saved architecture; model.* settings ignored: {differ}"
        )
    return model


def world_size() -> int:
    """The number of training processes (torchrun / accelerate launch), known before the
    Accelerator. ``cpu=True`` without a GPU: accelerate's process-wide state, once made
    without it, would take a CPU process group for a single process."""
    return PartialState(cpu=not torch.cuda.is_available()).num_processes


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """CPU when no GPU is present; bf16 autocast on GPU by default; trackers on rank 0."""
    precision = cfg.trainer.precision
    if precision == "auto":
        # native bf16 only: below compute capability 8 it is emulated (slow)
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        precision = "bf16" if bf16 else "fp32"
    # accelerate keeps its settings (mixed precision, ...) in a process-wide singleton that
    # refuses a second Accelerator with other settings; each run starts from its own config
    # (as transformers' Trainer does). The distributed state (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.trainer.compile and (why := compile_unavailable(device_type)):
        logger.warning(f"trainer.compile=true but {why}: training runs eager")
        cfg.trainer.compile = False
    if cfg.trainer.compile:
        logger.info(
            f"training step on {device_type}: torch.compile (inductor), trainer.compile=true"
        )
    else:
        why = (
            "on a CPU compiling takes minutes and pays only in long runs"
            if device_type == "cpu"
            else "not yet measured on a GPU"
        )
        logger.info(
            f"training step on {device_type}: eager (trainer.compile=false: {why};"
            " see BENCHMARKS.md)"
        )
    if device_type == "cpu" and sys.platform == "linux" and not preloaded_allocator():
        logger.info(
            "CPU training with glibc's malloc: preloading tcmalloc made HAT's step ~10 % faster"
            " (LD_PRELOAD=libtcmalloc_minimal.so.4; see docs/training.md)"
        )
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="no" if precision == "fp32" else precision,
        log_with="wandb" if cfg.logger.name == "wandb" else None,
        project_dir=cfg.trainer.output_dir,
        # we step the scheduler once per optimizer step ourselves; accelerate would otherwise
        # step it world_size times per step, which changes the schedule with the world size
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if cfg.trainer.compile else None,
    )


def preloaded_allocator() -> str | None:
    """The malloc replacement preloaded into this process (``LD_PRELOAD``), or None.

    glibc's malloc returns freed blocks of a few MB to the system, so every step on a CPU
    faults in fresh pages for its largest activations; tcmalloc keeps them for reuse.
    """
    for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        for name in ("tcmalloc", "jemalloc", "mimalloc"):
            if name in Path(lib).name:
                return name
    return None


def unwrap(accelerator: Accelerator, model: torch.nn.Module) -> PreTrainedLM:
    """The model itself, without DDP/FSDP wrappers and without torch.compile's wrapper
    (``trainer.compile=true``): what save_pretrained, generate and score run on."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def measure_sample(cfg: TrainConfig) -> Iterator[str]:
    """The first ``MEASURE_BYTES`` of training text (to fit a twin's rows to ``row_bytes``)."""
    seen = 0
    for text in iter_documents(cfg.data, "train"):
        yield text
        seen += len(text.encode("utf-8"))
        if seen >= MEASURE_BYTES:
            return


# ---- one step and evaluation -----------------------------------------------------------------
@dataclass
class StepStats:
    """Global sums over one optimizer step (all ranks and micro-batches)."""

    sum_nll: float  # nats over every target
    n_targets: float  # target units: bytes (HAT) or tokens (BPE)
    text_nll: float  # nats over the targets that are text (not document ends)
    n_bytes: float  # bytes of text those targets spell
    n_positions: float  # backbone positions: HAT words, twin tokens
    grad_norm: float
    data_s: float = 0.0  # seconds this rank waited for the batch (not summed over ranks)

    @property
    def loss(self) -> float:
        return self.sum_nll / max(self.n_targets, 1.0)

    @property
    def bpb(self) -> float:
        return bits_per_byte(self.text_nll, self.n_bytes)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.sum_nll) and math.isfinite(self.grad_norm)


def split_rows(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into ``parts`` micro-batches of consecutive rows."""
    chunks = {k: v.tensor_split(parts) for k, v in batch.items()}
    return [{k: v[i] for k, v in chunks.items()} for i in range(parts)]


def _sums(out: Any) -> torch.Tensor:
    return torch.stack(
        [out.sum_nll.float(), out.n_targets.float(), out.text_nll.float(), out.text_bytes.float()]
    )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU from pinned memory, so that the copy does not hold up
    this thread, which goes on queueing the step's kernels behind it."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def forward_backward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    accelerator: Accelerator,
    trainer: TrainerConfig,
    grad_clip: float,
    positions: int,
    frozen: Sequence[torch.Tensor] = (),
) -> StepStats:
    """Forward and backward over this rank's rows (``positions``: backbone positions in
    them, for throughput); gradients are left for the optimizer, except those of ``frozen``
    (parameters a wrapped model reduces but that do not train this step), dropped before
    clipping."""
    micro_batches = split_rows(batch, trainer.grad_accum)
    # normalise by the global target count: each rank's gradients are averaged by DDP (hence
    # * world_size), and micro-batches with more targets weigh more, as one big batch would
    local_targets = torch.tensor(
        float((batch["labels"] != IGNORE).sum()), device=accelerator.device
    )
    global_targets = accelerator.reduce(local_targets, "sum").clamp_min(1.0)
    scale = accelerator.num_processes / global_targets
    totals = torch.zeros(4, device=accelerator.device)
    for i, micro in enumerate(micro_batches):
        micro = model_inputs(micro, accelerator.device, trainer.compile)
        last = i == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):  # all-reduce gradients once
            out = model(**micro)
            accelerator.backward(out.sum_nll * scale)
        totals += _sums(out).detach()
    for p in frozen:
        p.grad = None
    max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    counted = torch.tensor([float(positions)], device=accelerator.device)
    sums = accelerator.reduce(torch.cat([totals, counted]), "sum").tolist()
    norm = float(grad_norm) if grad_norm is not None else 0.0
    return StepStats(*sums, grad_norm=norm)


@dataclass
class EvalResult:
    loss: float  # nats per target unit
    bpb: float  # bits per byte of text
    n_bytes: int


def model_inputs(batch: dict[str, Any], device: torch.device, compiled: bool) -> dict[str, Any]:
    """A loader's batch as the model takes it: on ``device``; for a compiled model its word
    slots padded to a multiple of 128 (one graph, not one per batch's word count)."""
    batch = {k: to_device(v, device) for k, v in batch.items()}
    if compiled and "word_lengths" in batch:
        batch["word_lengths"] = pad_word_slots(batch["word_lengths"])
    return batch


@torch.no_grad()
def held_out_loss(
    model: torch.nn.Module, batches: Any, accelerator: Accelerator, compiled: bool = False
) -> EvalResult:
    """Loss and bits per byte over held-out batches (each rank its own rows, summed).
    ``compiled``: the model runs under torch.compile, so word slots are padded as in training
    (one graph, not one per batch's word count).

    Ranks may run out of held-out rows at different batches; a rank that has run out
    evaluates an all-padding batch (no targets) so that every rank runs the same forwards
    (FSDP gathers weights inside forward).
    """
    model.eval()
    totals = torch.zeros(4, device=accelerator.device)
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if accelerator.num_processes > 1:
            remaining = accelerator.reduce(
                torch.tensor(float(batch is not None), device=accelerator.device), "sum"
            )
            if remaining.item() == 0:
                break
            batch = batches.empty_batch() if batch is None else batch
        elif batch is None:
            break
        totals += _sums(model(**model_inputs(batch, accelerator.device, compiled)))
    model.train()
    sum_nll, n_targets, text_nll, n_bytes = accelerator.reduce(totals, "sum").tolist()
    return EvalResult(sum_nll / max(n_targets, 1.0), bits_per_byte(text_nll, n_bytes), int(n_bytes))


# ---- export and sample -----------------------------------------------------------------------
def export_model(accelerator: Accelerator, model: torch.nn.Module, directory: Path) -> None:
    """save_pretrained of the full (unsharded) model, written to a temp dir and renamed."""
    # torch.compile's wrapper (outermost) would prefix every weight name with "_orig_mod."
    sharded = getattr(model, "_orig_mod", model)
    state = accelerator.get_state_dict(sharded)  # gathers FSDP shards; every rank must call it
    if accelerator.is_main_process:
        shell = unwrap(accelerator, model).empty_copy()
        shell.load_state_dict(state, assign=True)  # no copy: the shell uses the state's tensors
        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shell.save_pretrained(tmp)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    accelerator.wait_for_everyone()


def generate_sample(model: PreTrainedLM, prompt: str, max_new_tokens: int, seed: int) -> str | None:
    """A short sampled continuation of ``prompt`` (None if ``max_new_tokens`` is 0)."""
    if max_new_tokens <= 0:
        return None
    try:
        return model.generate(
            prompt,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            seed=seed,
        )
    except Exception as err:  # generation is a bonus here; never fail a finished run over it
        logger.warning(f"no sample: generate() failed ({type(err).__name__}: {err})")
        return None


# ---- the loop --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    eval_bpb: float
    export_dir: Path
    output_dir: Path


class Trainer:
    """One training run: ``Trainer(cfg).fit()``. Set-up (model, data, resume) happens here.

    ``model``: a model to train instead of building one from ``cfg.model`` / ``cfg.init_from``
    (``hat-continue`` passes the one it loaded; ``cfg.model`` must be its config)."""

    def __init__(self, cfg: TrainConfig | DictConfig, model: PreTrainedLM | None = None) -> None:
        self.cfg = cfg = resolve_config(cfg, world_size())
        self.accelerator = accelerator = make_accelerator(cfg)
        t = cfg.trainer
        if not accelerator.is_main_process:
            logging.getLogger("hat").setLevel(logging.WARNING)  # progress messages from rank 0 only
        self.out_dir = Path(t.output_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.lock = RunLock(self.out_dir)
        if accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()  # one live run per directory (released by fit)
        try:
            self._set_up(model)
        except BaseException:  # no lock left behind by a run that never started
            self.lock.release()
            raise

    def _set_up(self, model: PreTrainedLM | None) -> None:
        cfg, t, accelerator = self.cfg, self.cfg.trainer, self.accelerator
        self.config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
        resume_from = find_resume_checkpoint(t, self.ckpt_root, accelerator)
        if resume_from is not None:  # another run's directory: say so before any work
            saved = read_trainer_state(resume_from)["config"]
            changes = compare_settings(saved, self.config_dict, resume_from)
        set_seed(t.seed, deterministic=t.deterministic)  # the same seed on every rank: same init
        if model is None:
            model = build_model(cfg, prepare_tokenizer(cfg, accelerator, self.out_dir))
        self.model_cfg, self.kind = model.config, kind_of(model)
        self.backbone_positions = model.backbone_positions
        self.seq_len = model.units_per_row(t.row_bytes, measure_sample(cfg))
        fmt = model.data_format()
        self.peak_lr = peak_lr(cfg.optim, model.config)
        optimizer = build_optimizer(model, cfg.optim, self.peak_lr)
        if t.compile:  # compiled code reads the RoPE tables (positions are within a row)
            reserve_positions(model, self.seq_len + 1)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(
            model, optimizer, build_scheduler(optimizer, t.steps, cfg.schedule)
        )
        shard = dict(rank=accelerator.process_index, world_size=accelerator.num_processes)
        # held-out data: the training mixture, and with several sources each one on its own
        # (weight-0 sources included: evaluated, never trained on)
        self.eval_sets = {"": cfg.data, **cfg.data.eval_sets()}
        self.eval_batches = lambda data: build_eval_batches(
            data, fmt, self.seq_len, t.global_rows, max_batches=t.eval_batches, **shard
        )
        device = accelerator.device.type
        # processes on this machine: torchrun (and accelerate launch) say so
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        workers = cfg.data.workers_for(device, local)
        if cfg.data.num_workers is None:
            logger.info(f"data.num_workers=null: {workers} loader workers per process on {device}")
        train_data = dataclasses.replace(cfg.data, num_workers=workers)
        self.loader = build_train_loader(train_data, fmt, self.seq_len, t.global_rows, **shard)
        self.metrics = MetricsLog(self.out_dir / METRICS_FILE, accelerator)
        self.step, self.bytes_seen = 0, 0.0
        self.data_advice = DataWaitAdvice(device, self.loader.num_workers)
        if resume_from is not None:
            self.resume(resume_from, changes)
        accelerator.init_trackers(
            cfg.logger.project, config=self.config_dict, init_kwargs=_tracker_kwargs(cfg)
        )

    def resume(self, path: Path, changes: list[tuple[str, Any, Any]]) -> None:
        """Continue from a checkpoint of this run (``compare_settings`` checked that it is):
        the current optimizer and schedule settings applied, and the ``changes`` logged."""
        state = load_checkpoint(self.accelerator, path)
        try:
            self.loader.load_state_dict(state["data"])
        except ValueError as err:
            raise CheckpointError(
                f"{path}: {err}; resume with the same data and batch settings"
            ) from None
        self.step, self.bytes_seen = state["step"], state["bytes_seen"]
        o, t = self.cfg.optim, self.cfg.trainer
        apply_optimizer_settings(
            self.optimizer,
            self.scheduler.scheduler,  # accelerate's wrapper holds the LambdaLR
            peak_lr(o, self.model_cfg),
            o.betas,
            o.eps,
            o.weight_decay,
            self.step,
            lr_multiplier(self.step, t.steps, self.cfg.schedule),
        )
        log_changes(changes, self.cfg.schedule)
        # a rollback (an explicit checkpoint) sets the abandoned future aside, its checkpoints
        # and metric lines; a killed run's lines after its checkpoint are written again
        aside = None
        if t.resume != "auto":
            set_aside_later(self.ckpt_root, self.step, self.accelerator)
            aside = self.ckpt_root / ABANDONED / "metrics.jsonl"
        self.metrics.truncate_after(self.step, aside)
        logger.info(f"resumed from {path} at step {self.step}")

    def fit(self) -> TrainResult:
        """Train to trainer.steps; evaluate, checkpoint and export on the way and at the end."""
        try:
            return self._fit()
        finally:
            self.lock.release()

    def _fit(self) -> TrainResult:
        t, accelerator = self.cfg.trainer, self.accelerator
        console = _console_loggers()
        n_params = sum(p.numel() for p in self.plain_model.parameters())
        precision = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
        logger.info(
            f"{self.kind.name} model {self.model_cfg.name} ({n_params / 1e6:.1f} M parameters) on "
            f"{accelerator.num_processes} x {accelerator.device} ({precision}); {t.steps} steps of "
            f"{t.global_rows} x {self.seq_len} {self.kind.unit} (~{t.row_bytes} bytes of text "
            f"per row); output {self.out_dir}"
        )
        last_eval = None
        throughput = Throughput()
        bar = tqdm(
            total=t.steps, initial=self.step, disable=not accelerator.is_main_process, unit="step"
        )
        with logging_redirect_tqdm(console), bar:
            while self.step < t.steps:
                stats, lr = self.train_step()
                throughput.add(stats.n_bytes, stats.n_positions, stats.data_s)
                bar.update(1)
                if self.step % t.log_interval == 0 or self.step == t.steps:
                    self.log(stats, lr, throughput)
                    self.data_advice.check(throughput.data_share())
                    bar.set_postfix(
                        loss=f"{stats.loss:.3f}",
                        bpb=f"{stats.bpb:.3f}",
                        bytes_s=f"{throughput.rates()[0]:.0f}",
                    )
                    throughput = Throughput()
                done = self.step == t.steps
                paused_at = time.perf_counter()  # evaluating and saving are not training time
                if due(self.step, t.eval_interval) or done:
                    last_eval = self.evaluate()
                if due(self.step, t.checkpoint_interval) or done:
                    self.save_checkpoint()
                if due(self.step, t.export_interval) and not done:
                    self.export(self.out_dir / "exports" / f"{CHECKPOINT_PREFIX}{self.step:08d}")
                throughput.start += time.perf_counter() - paused_at
        if last_eval is None:  # resumed from the final checkpoint: nothing left to train
            logger.info(
                f"the checkpoint is at trainer.steps={t.steps}: nothing to train (raise trainer.steps to go on)"
            )
            last_eval = self.evaluate()
        return self.finish(last_eval)

    @property
    def plain_model(self) -> PreTrainedLM:
        return unwrap(self.accelerator, self.model)

    def frozen_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters whose gradients are dropped this step (none here; see ``Freezer``)."""
        return []

    def train_step(self) -> tuple[StepStats, float]:
        """One optimizer step on the next global batch; NaN/inf stops the run or skips the batch."""
        t = self.cfg.trainer
        waiting = time.perf_counter()
        batch = next(self.loader)
        waited = time.perf_counter() - waiting
        stats = forward_backward(
            self.model,
            batch,
            self.accelerator,
            t,
            self.cfg.optim.grad_clip,
            self.backbone_positions(batch),
            self.frozen_parameters(),
        )
        stats.data_s = waited
        if stats.finite:
            self.optimizer.step()
        elif t.skip_nan_batches:
            logger.warning(
                f"step {self.step + 1}: loss {stats.loss}, gradient norm {stats.grad_norm}; batch skipped"
            )
        else:
            good = list_checkpoints(self.ckpt_root)
            raise NonFiniteLossError(
                f"loss is {stats.loss} (gradient norm {stats.grad_norm}) at step {self.step + 1}; stopped before "
                f"updating the weights. Last good checkpoint: {good[-1] if good else 'none'}. Lower optim.lr, "
                "or set trainer.skip_nan_batches=true to skip such batches"
            )
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()  # also after a skipped batch: the schedule follows the step count
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.bytes_seen += stats.n_bytes
        return stats, lr

    def log(self, stats: StepStats, lr: float, throughput: Throughput) -> None:
        """One line of metrics.jsonl (and wandb): the step's global loss, rates since the last log."""
        bytes_per_s, positions_per_s = throughput.rates()
        record = {
            "step": self.step,
            "kind": "train",
            "loss": stats.loss,
            "bpb": stats.bpb,
            "lr": lr,
            "grad_norm": stats.grad_norm,
            "bytes_per_s": bytes_per_s,
            f"{self.kind.position}s_per_s": positions_per_s,
            "bytes_seen": self.bytes_seen,
            "data_wait": throughput.data_share(),  # share of the time spent waiting for batches
        }
        utilisation = mfu(
            self.model_cfg,
            self.cfg.trainer.row_bytes,
            throughput.n_bytes,
            throughput.n_units,
            bytes_per_s,
            peak_flops(self.accelerator),
        )
        if utilisation is not None:
            record["mfu"] = utilisation
        self.metrics.write(record)

    def evaluate(self) -> EvalResult:
        """Held-out loss and bits per byte of the mixture (``eval_bpb``) and, with several
        sources, of each (``eval_bpb/<source>``); returns the mixture's."""
        record: dict[str, Any] = {"step": self.step, "kind": "eval"}
        results, by_config = {}, {}  # a set that is the mixture itself is evaluated once
        for name, data in self.eval_sets.items():
            if id(data) not in by_config:
                batches = self.eval_batches(data)
                by_config[id(data)] = held_out_loss(
                    self.model, batches, self.accelerator, self.cfg.trainer.compile
                )
            result = by_config[id(data)]
            where = f" on {name}" if name else ""
            if result.n_bytes == 0:
                logger.warning(f"step {self.step}: no held-out documents{where}: nothing evaluated")
                continue
            results[name] = result
            suffix = f"/{name}" if name else ""
            record.update({f"eval_loss{suffix}": result.loss, f"eval_bpb{suffix}": result.bpb})
            logger.info(
                f"step {self.step}: held-out{where} loss {result.loss:.4f}, {result.bpb:.4f} bits per byte ({result.n_bytes:,} bytes)"
            )
        self.metrics.write(record)
        return results.get("", EvalResult(math.nan, math.nan, 0))

    def save_checkpoint(self) -> Path:
        state = {"step": self.step, "data": self.loader.state_dict(), "bytes_seen": self.bytes_seen}
        state.update(world_size=self.accelerator.num_processes, config=self.config_dict)
        path = save_checkpoint(
            self.accelerator,
            self.ckpt_root,
            self.step,
            state,
            self.cfg.trainer.keep_last,
            self.plain_model.save_config,
        )
        logger.info(f"step {self.step}: checkpoint {path}")
        return path

    def export(self, directory: Path) -> None:
        export_model(self.accelerator, self.model, directory)
        if self.accelerator.is_main_process:
            write_training_record(directory, self.training_record())
        logger.info(
            f"exported the model to {directory} (load it with hat.load_pretrained or "
            f"{type(self.plain_model).__name__}.from_pretrained)"
        )

    def training_record(self) -> dict[str, Any]:
        """What ``training.json`` beside an export records (``hat.training.record``)."""
        t = self.cfg.trainer
        return {
            "model_type": self.kind.name,
            "step": self.step,
            "bytes_seen": self.bytes_seen,
            "peak_lr": self.peak_lr,
            "data": portable_data(self.cfg.data),
            "schedule": dataclasses.asdict(self.cfg.schedule),
            "trainer": {"steps": t.steps, "row_bytes": t.row_bytes, "global_rows": t.global_rows},
            "units_per_row": self.seq_len,
        }

    def finish(self, last_eval: EvalResult) -> TrainResult:
        """Export, show a sample, report the held-out bits per byte."""
        t, accelerator = self.cfg.trainer, self.accelerator
        export_dir = self.out_dir / EXPORT_DIR
        self.export(export_dir)
        if accelerator.is_main_process and accelerator.distributed_type != DistributedType.FSDP:
            sample = generate_sample(self.plain_model, t.sample_prompt, t.sample_new_tokens, t.seed)
            if sample is not None:
                logger.info(f"sample: {t.sample_prompt!r} -> {sample!r}")
        if last_eval.n_bytes:
            logger.info(f"final held-out bits per byte: {last_eval.bpb:.4f} (step {self.step})")
        accelerator.end_training()
        return TrainResult(self.step, last_eval.bpb, export_dir, self.out_dir)


def train(cfg: TrainConfig | DictConfig) -> TrainResult:
    """Train (or continue training) a model as configured; returns where things ended up."""
    return Trainer(cfg).fit()


def _console_loggers() -> list[logging.Logger]:
    """The loggers whose console output tqdm must route around its progress bar. When nothing
    has configured logging (a plain script or notebook; hydra configures the root logger for
    ``hat-train``), the ``hat`` logger gets a stderr handler so progress messages show."""
    hat_logger = logging.getLogger("hat")
    if not hat_logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s] %(message)s"))
        hat_logger.addHandler(handler)
        if hat_logger.level == logging.NOTSET:
            hat_logger.setLevel(logging.INFO)
    return [
        lg
        for lg in (logging.getLogger(), hat_logger)
        if any(isinstance(h, logging.StreamHandler) for h in lg.handlers)
    ]


def due(step: int, interval: int) -> bool:
    """Whether an every-``interval``-steps event falls on ``step`` (interval 0: never)."""
    return interval > 0 and step % interval == 0


def _tracker_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """wandb.init arguments; its files go beside the checkpoints unless WANDB_DIR says otherwise."""
    if cfg.logger.name != "wandb":
        return {}
    log = cfg.logger
    run = {"mode": log.mode, "name": log.run_name, "entity": log.entity, "tags": list(log.tags)}
    run["dir"] = os.environ.get("WANDB_DIR", cfg.trainer.output_dir)
    return {"wandb": run}


__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "TrainResult",
    "build_model",
    "export_model",
    "forward_backward",
    "held_out_loss",
    "train",
    "unwrap",
]
