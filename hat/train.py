"""Pretraining: one loop for HAT and its BPE twin, on CPU, one GPU, DDP or FSDP2 (accelerate).

``hat-train`` (``hat.cli.train``) fills a ``TrainConfig`` from hydra and calls ``train``; Python
users can call ``train(TrainConfig(...))`` directly. A step is:

    global batch (trainer.global_rows rows of trainer.seq_len units, the same for any world size)
      -> this rank's rows, split into trainer.grad_accum micro-batches
      -> forward + backward of each, loss = sum_nll * world_size / global target count
      -> clip, AdamW, schedule

so the gradient is that of the mean loss over every target of the global batch, whatever the
number of ranks or micro-batches. Checkpoints are written atomically (temp dir, then rename) with
a manifest of file sizes and checksums; ``trainer.resume=auto`` continues from the newest one.
The settings are in ``hat.train_config``, checkpoints in ``hat.checkpoint``, metrics (JSONL,
wandb, MFU) in ``hat.metrics``.

Output directory (``trainer.output_dir``)::

    metrics.jsonl                  one JSON line per log step and per evaluation
    checkpoints/step_00000100/     accelerate state + trainer_state.json + manifest.json
    model/                         save_pretrained export of the final model (tokenizer for BPE)
    exports/step_00000100/         periodic exports (trainer.export_interval)
    tokenizer.model                BPE only: the tokenizer trained at start (if none was given)
    .hydra/, train.log             hydra's record of the run (rank 0 only)
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hat.auto import load_pretrained
from hat.batching import IGNORE
from hat.bpe import BPEForCausalLM
from hat.checkpoint import (
    CHECKPOINT_PREFIX,
    CheckpointError,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from hat.data import DataConfig, build_eval_batches, build_train_loader, iter_documents
from hat.metrics import METRICS_FILE, MetricsLog, Throughput, mfu, peak_flops
from hat.model import HATForCausalLM
from hat.modeling import PreTrainedLM
from hat.splitter import PAD
from hat.tokenizer import TOKENIZER_FILE, BPETokenizer
from hat.train_config import (  # noqa: F401 - the config classes are part of this module's API
    BPEModelConfig,
    ConfigError,
    HATModelConfig,
    LoggerConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    TrainerConfig,
    architecture,
    peak_lr,
    resolve_config,
    validate_config,
)

logger = logging.getLogger(__name__)


EXPORT_DIR = "model"


# ---- model, tokenizer, optimizer, schedule ---------------------------------------------------
def train_tokenizer(
    data_cfg: DataConfig, vocab_size: int, output_file: str | Path, max_bytes: int
) -> BPETokenizer:
    """Train the twin's sentencepiece BPE on the first ``max_bytes`` of the training documents.

    Written to a temporary file and renamed, so an interrupted run leaves no half tokenizer.
    """

    def documents() -> Iterator[str]:
        seen = 0
        for text in iter_documents(data_cfg, "train"):
            yield text
            seen += len(text.encode("utf-8"))
            if seen >= max_bytes:
                return

    output_file = Path(output_file)
    tmp = output_file.with_name(output_file.name + ".tmp")
    BPETokenizer.train(documents(), vocab_size=vocab_size, output_file=tmp)
    os.replace(tmp, output_file)
    return BPETokenizer(output_file)


def prepare_tokenizer(
    cfg: TrainConfig, accelerator: Accelerator, out_dir: Path
) -> BPETokenizer | None:
    """The BPE twin's tokenizer: model.tokenizer, the init_from model's, or one trained now."""
    model_cfg = cfg.model
    if model_cfg.model_type != "bpe":
        return None
    if model_cfg.init_from:
        return None  # from_pretrained loads the saved model's own tokenizer
    if model_cfg.tokenizer:
        return BPETokenizer(model_cfg.tokenizer)
    path = out_dir / TOKENIZER_FILE
    with accelerator.main_process_first():  # rank 0 trains it, the others then read the file
        if not path.is_file():
            logger.info(
                f"training a {model_cfg.vocab_size}-token BPE tokenizer on the training data -> {path}"
            )
            train_tokenizer(cfg.data, model_cfg.vocab_size, path, model_cfg.tokenizer_train_bytes)
    return BPETokenizer(path)


def build_model(
    model_cfg: HATModelConfig | BPEModelConfig, tokenizer: BPETokenizer | None
) -> PreTrainedLM:
    """A fresh model of the configured architecture, or the ``init_from`` model."""
    arch = architecture(model_cfg)
    if not model_cfg.init_from:
        return BPEForCausalLM(arch, tokenizer) if arch.model_type == "bpe" else HATForCausalLM(arch)
    model = load_pretrained(model_cfg.init_from).train()
    if model.config.model_type != arch.model_type:
        raise ValueError(
            f"model.init_from={model_cfg.init_from} holds a {model.config.model_type!r} model but the "
            f"selected model config is {arch.model_type!r}; choose a matching model= preset"
        )
    differ = sorted(
        k for k, v in arch.to_dict().items() if k != "name" and model.config.to_dict().get(k) != v
    )
    if differ:
        logger.warning(
            f"model.init_from: using the saved architecture; these model.* settings are ignored: {differ}"
        )
    if arch.model_type == "bpe" and model.tokenizer is None:
        raise ValueError(f"model.init_from={model_cfg.init_from} has no {TOKENIZER_FILE}")
    return model


def unwrap(accelerator: Accelerator, model: torch.nn.Module) -> PreTrainedLM:
    """The model itself, without DDP/FSDP wrappers and without torch.compile's wrapper
    (``trainer.compile=true``): what save_pretrained, generate and score run on."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def new_model_like(model: PreTrainedLM) -> PreTrainedLM:
    """An empty (meta-device) model of the same class, config and tokenizer."""
    with torch.device("meta"):
        if isinstance(model, BPEForCausalLM):
            return BPEForCausalLM(model.config, model.tokenizer)
        return type(model)(model.config)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on Linear weights only (norms, embeddings, queries, biases: none)."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    no_decay_types = (torch.nn.Embedding,)
    no_decay = {
        id(p) for m in model.modules() if isinstance(m, no_decay_types) for p in m.parameters()
    }
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())  # tied once
    groups = [
        {
            "params": [p for p in params if id(p) in decay and id(p) not in no_decay],
            "weight_decay": cfg.optim.weight_decay,
        },
        {
            "params": [p for p in params if id(p) not in decay or id(p) in no_decay],
            "weight_decay": 0.0,
        },
    ]
    return torch.optim.AdamW(
        groups,
        lr=peak_lr(cfg),
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        fused=torch.cuda.is_available() or None,
    )


def lr_multiplier(step: int, steps: int, cfg: ScheduleConfig) -> float:
    """The factor on the peak lr used by optimizer step ``step`` (0-based) of ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "wsd":
        decay_start = steps - max(1, round(cfg.decay_fraction * steps))
        if step < max(decay_start, cfg.warmup_steps):
            return 1.0
        progress = (step - decay_start + 1) / (steps - decay_start)
        return 1.0 - (1.0 - floor) * min(progress, 1.0)
    progress = min((step - cfg.warmup_steps + 1) / max(steps - cfg.warmup_steps, 1), 1.0)
    if cfg.name == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    steps, schedule = cfg.trainer.steps, cfg.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, steps, schedule)
    )


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """CPU when no GPU is present; bf16 autocast on GPU by default; trackers on rank 0."""
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = (
            "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        )
    # accelerate keeps its settings (mixed precision, ...) in a process-wide singleton that
    # refuses a second Accelerator with other settings; each run starts from its own config
    # (as transformers' Trainer does). The distributed state (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
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


# ---- one step and evaluation -----------------------------------------------------------------
@dataclass
class StepStats:
    """Global sums over one optimizer step (all ranks and micro-batches)."""

    sum_nll: float
    n_targets: float  # target units: bytes (HAT) or tokens (BPE)
    n_bytes: float  # bytes those targets spell
    n_words: float  # HAT: words processed by the backbone; BPE: tokens
    grad_norm: float

    @property
    def loss(self) -> float:
        return self.sum_nll / max(self.n_targets, 1.0)

    @property
    def bpb(self) -> float:
        return self.sum_nll / math.log(2) / max(self.n_bytes, 1.0)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.sum_nll) and math.isfinite(self.grad_norm)


def split_rows(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into ``parts`` micro-batches of consecutive rows."""
    chunks = {k: v.tensor_split(parts) for k, v in batch.items()}
    return [{k: v[i] for k, v in chunks.items()} for i in range(parts)]


def count_units(batch: dict[str, torch.Tensor]) -> int:
    """Backbone positions of a batch: HAT words (without the padding word) or BPE targets."""
    if "word_lengths" in batch:
        padding_words = (batch["input_ids"][:, -1] == PAD).sum()  # one padding word per padded row
        return int((batch["word_lengths"] > 0).sum() - padding_words)
    return int((batch["labels"] != IGNORE).sum())


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    accelerator: Accelerator,
    cfg: TrainerConfig,
    grad_clip: float,
) -> StepStats:
    """Forward and backward over this rank's rows; gradients left for the optimizer."""
    micro_batches = split_rows(batch, cfg.grad_accum)
    # normalise by the global target count: each rank's gradients are averaged by DDP (hence
    # * world_size), and micro-batches with more targets weigh more, as one big batch would
    local_targets = torch.tensor(
        float((batch["labels"] != IGNORE).sum()), device=accelerator.device
    )
    global_targets = accelerator.reduce(local_targets, "sum").clamp_min(1.0)
    scale = accelerator.num_processes / global_targets
    totals = torch.zeros(3, device=accelerator.device)  # sum_nll, n_targets, n_bytes
    for i, micro in enumerate(micro_batches):
        micro = {k: v.to(accelerator.device, non_blocking=True) for k, v in micro.items()}
        last = i == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):  # all-reduce gradients once
            out = model(**micro)
            accelerator.backward(out.sum_nll * scale)
        totals += torch.stack(
            [out.sum_nll.detach().float(), out.n_targets.float(), out.n_target_bytes.float()]
        )
    max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    words = torch.tensor(float(count_units(batch)), device=accelerator.device)
    sums = accelerator.reduce(torch.cat([totals, words[None]]), "sum").tolist()
    norm = float(grad_norm) if grad_norm is not None else 0.0
    return StepStats(sums[0], sums[1], sums[2], sums[3], norm)


@dataclass
class EvalResult:
    loss: float  # nats per target unit
    bpb: float
    n_bytes: int


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Any, accelerator: Accelerator) -> EvalResult:
    """Bits per byte over held-out batches (each rank its own rows, summed over ranks).

    Ranks may run out of held-out rows at different batches; a rank that has run out
    evaluates an all-padding batch (no targets) so that every rank runs the same forwards
    (FSDP gathers weights inside forward).
    """
    model.eval()
    totals = torch.zeros(3, device=accelerator.device)
    iterator, previous = iter(batches), None
    while True:
        batch = next(iterator, None)
        if accelerator.num_processes > 1:
            remaining = accelerator.reduce(
                torch.tensor(float(batch is not None), device=accelerator.device), "sum"
            )
            if remaining.item() == 0:
                break
            if batch is None:
                batch = padding_batch(previous, batches)
        elif batch is None:
            break
        previous = batch
        out = model(**{k: v.to(accelerator.device) for k, v in batch.items()})
        totals += torch.stack(
            [out.sum_nll.float(), out.n_targets.float(), out.n_target_bytes.float()]
        )
    model.train()
    sum_nll, n_targets, n_bytes = accelerator.reduce(totals, "sum").tolist()
    return EvalResult(
        sum_nll / max(n_targets, 1.0), sum_nll / math.log(2) / max(n_bytes, 1.0), int(n_bytes)
    )


def padding_batch(previous: dict[str, torch.Tensor] | None, loader: Any) -> dict[str, torch.Tensor]:
    """A batch shaped like this rank's batches that has no targets."""
    if previous is None:  # this rank had no held-out rows at all
        rows = len(loader.lanes)
        return loader.fmt.collate([loader.fmt.empty_row(loader.seq_len)] * rows)
    return {**previous, "labels": torch.full_like(previous["labels"], IGNORE)}


# ---- export and sample -----------------------------------------------------------------------
def export_model(accelerator: Accelerator, model: torch.nn.Module, directory: Path) -> None:
    """save_pretrained of the full (unsharded) model, written to a temp dir and renamed."""
    # torch.compile's wrapper (outermost) would prefix every weight name with "_orig_mod."
    sharded = getattr(model, "_orig_mod", model)
    state = accelerator.get_state_dict(sharded)  # gathers FSDP shards; every rank must call it
    if accelerator.is_main_process:
        shell = new_model_like(unwrap(accelerator, model))
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


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf and ``trainer.skip_nan_batches`` is off."""


class Trainer:
    """One training run: ``Trainer(cfg).fit()``. Set-up (model, data, resume) happens here."""

    def __init__(self, cfg: TrainConfig | DictConfig) -> None:
        self.cfg = cfg = resolve_config(cfg)
        t = cfg.trainer
        self.accelerator = accelerator = make_accelerator(cfg)
        validate_config(cfg, accelerator.num_processes)
        if not accelerator.is_main_process:
            logging.getLogger("hat").setLevel(logging.WARNING)  # progress messages from rank 0 only
        self.out_dir = Path(t.output_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        if accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        set_seed(t.seed, deterministic=t.deterministic)  # the same seed on every rank: same init

        resume_from = find_resume_checkpoint(t, self.ckpt_root, accelerator)
        model = build_model(cfg.model, prepare_tokenizer(cfg, accelerator, self.out_dir))
        self.model_cfg, self.kind = model.config, model.config.model_type
        loader_args = dict(
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            splitter=getattr(model, "splitter", None),
            tokenizer=getattr(model, "tokenizer", None),
        )
        optimizer = build_optimizer(model, cfg)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(
            model, optimizer, build_scheduler(optimizer, cfg)
        )
        # held-out data: the training mixture, and with several sources each one on its own
        # (weight-0 sources included: evaluated, never trained on)
        self.eval_sets = {"": cfg.data, **cfg.data.eval_sets()}
        self.eval_batches = lambda data: build_eval_batches(
            data, self.kind, t.seq_len, t.global_rows, max_batches=t.eval_batches, **loader_args
        )
        self.loader = build_train_loader(
            cfg.data, self.kind, t.seq_len, t.global_rows, **loader_args
        )
        self.metrics = MetricsLog(self.out_dir / METRICS_FILE, accelerator)
        self.config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
        self.step, self.bytes_seen = 0, 0.0
        if resume_from is not None:
            self.resume(resume_from)
        accelerator.init_trackers(
            cfg.logger.project, config=self.config_dict, init_kwargs=_tracker_kwargs(cfg)
        )

    def resume(self, path: Path) -> None:
        state = load_checkpoint(self.accelerator, path)
        try:
            self.loader.load_state_dict(state["data"])
        except ValueError as err:
            raise CheckpointError(
                f"{path}: {err}; resume with the same data and batch settings"
            ) from None
        self.step, self.bytes_seen = state["step"], state["bytes_seen"]
        self.metrics.truncate_after(self.step)
        logger.info(f"resumed from {path} at step {self.step}")

    def fit(self) -> TrainResult:
        """Train to trainer.steps; evaluate, checkpoint and export on the way and at the end."""
        t, accelerator = self.cfg.trainer, self.accelerator
        console = _console_loggers()
        n_params = sum(p.numel() for p in self.plain_model.parameters())
        unit = "bytes" if self.kind == "hat" else "tokens"
        precision = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
        logger.info(
            f"{self.kind} model {self.model_cfg.name} ({n_params / 1e6:.1f} M parameters) on "
            f"{accelerator.num_processes} x {accelerator.device} ({precision}); "
            f"{t.steps} steps of {t.global_rows} x {t.seq_len} {unit}; output {self.out_dir}"
        )
        last_eval = None
        throughput = Throughput()
        bar = tqdm(
            total=t.steps, initial=self.step, disable=not accelerator.is_main_process, unit="step"
        )
        with logging_redirect_tqdm(console), bar:
            while self.step < t.steps:
                stats, lr = self.train_step()
                throughput.add(stats.n_bytes, stats.n_words)
                bar.update(1)
                if self.step % t.log_interval == 0 or self.step == t.steps:
                    self.log(stats, lr, throughput)
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

    def train_step(self) -> tuple[StepStats, float]:
        """One optimizer step on the next global batch; NaN/inf stops the run or skips the batch."""
        t = self.cfg.trainer
        stats = train_step(
            self.model, next(self.loader), self.accelerator, t, self.cfg.optim.grad_clip
        )
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
        bytes_per_s, units_per_s = throughput.rates()
        record = {
            "step": self.step,
            "kind": "train",
            "loss": stats.loss,
            "bpb": stats.bpb,
            "lr": lr,
            "grad_norm": stats.grad_norm,
            "bytes_per_s": bytes_per_s,
            "words_per_s" if self.kind == "hat" else "tokens_per_s": units_per_s,
            "bytes_seen": self.bytes_seen,
        }
        seq_len, peak = self.cfg.trainer.seq_len, peak_flops(self.accelerator)
        utilisation = mfu(
            self.model_cfg, seq_len, throughput.n_bytes, throughput.n_units, bytes_per_s, peak
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
                by_config[id(data)] = evaluate(
                    self.model, self.eval_batches(data), self.accelerator
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
            self.accelerator, self.ckpt_root, self.step, state, self.cfg.trainer.keep_last
        )
        logger.info(f"step {self.step}: checkpoint {path}")
        return path

    def export(self, directory: Path) -> None:
        export_model(self.accelerator, self.model, directory)
        logger.info(
            f"exported the model to {directory} (load it with {type(self.plain_model).__name__}.from_pretrained)"
        )

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
