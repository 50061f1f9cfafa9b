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

Output directory (``trainer.output_dir``)::

    metrics.jsonl                  one JSON line per log step and per evaluation
    checkpoints/step_00000100/     accelerate state + trainer_state.json + manifest.json
    model/                         save_pretrained export of the final model (tokenizer for BPE)
    exports/step_00000100/         periodic exports (trainer.export_interval)
    tokenizer.model                BPE only: the tokenizer trained at start (if none was given)
    .hydra/, train.log             hydra's record of the run (rank 0 only)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hat.batching import IGNORE
from hat.bpe import BPEForCausalLM
from hat.config import BPEConfig, HATConfig
from hat.data import DataConfig, build_eval_batches, build_train_loader, iter_documents
from hat.model import HATForCausalLM
from hat.modeling import PreTrainedLM
from hat.splitter import PAD
from hat.tokenizer import TOKENIZER_FILE, BPETokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
MANIFEST_FILE = "manifest.json"
TRAINER_STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "model"
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "wsd", "linear", "constant")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


# ---- configuration ---------------------------------------------------------------------------
@dataclass
class HATModelConfig(HATConfig):
    """A HAT architecture (``configs/model/<preset>.yaml``) plus how to initialise it."""

    init_from: str | None = None  # a save_pretrained directory: continue from its weights

    @classmethod
    def preset(cls, name: str) -> HATModelConfig:
        """A named preset of hat.presets (tiny, small, 1b, ...) as a trainer model config."""
        return _preset_as(cls, HATConfig.from_name(name))


@dataclass
class BPEModelConfig(BPEConfig):
    """A BPE twin architecture plus its tokenizer and how to initialise it."""

    init_from: str | None = None  # a save_pretrained directory (its tokenizer comes along)
    tokenizer: str | None = None  # a tokenizer.model; None: train one on the training data
    tokenizer_train_bytes: int = 100_000_000  # text read to train that tokenizer

    @classmethod
    def preset(cls, name: str) -> BPEModelConfig:
        """A named preset of hat.presets (bpe_tiny, bpe_small, ...) as a trainer model config."""
        return _preset_as(cls, BPEConfig.from_name(name))


def _preset_as(schema: type, preset: HATConfig | BPEConfig) -> Any:
    return schema(**{f.name: getattr(preset, f.name) for f in dataclasses.fields(preset)})


@dataclass
class OptimConfig:
    """AdamW as in the HAT paper: betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0."""

    lr: float | None = None  # None: the paper's rule, 3e-4 * 32 / model.backbone.n_heads
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # on Linear weights only: not on norms, embeddings, queries
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping


@dataclass
class ScheduleConfig:
    """Learning-rate multiplier over the run: linear warmup, then the named decay."""

    name: str = "cosine"  # cosine | wsd (warmup-stable-decay) | linear | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = optim.lr * min_lr_ratio (paper: cosine to 10 %)
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly


@dataclass
class TrainerConfig:
    """Steps, batch, intervals, precision, checkpoints."""

    steps: int = 400
    seq_len: int = 512  # units per row: bytes (HAT) or tokens (BPE)
    global_rows: int = 8  # rows per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1  # micro-batches per step on each rank
    log_interval: int = 10
    eval_interval: int = 0  # 0: evaluate only at the end
    eval_batches: int | None = 50  # held-out global batches per evaluation; None: the whole split
    checkpoint_interval: int = 200  # 0: checkpoint only at the end
    export_interval: int = 0  # 0: export (save_pretrained) only at the end
    keep_last: int = 2  # checkpoints kept (older ones are deleted)
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    seed: int = 0
    output_dir: str = "outputs/${model.name}"
    resume: str = "auto"  # auto: newest checkpoint in output_dir, if any | none | a checkpoint dir
    skip_nan_batches: bool = False  # skip a step whose loss or gradient is NaN/inf (else stop)
    compile: bool = False  # torch.compile the model (accelerate's dynamo backend "inductor")
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    sample_prompt: str = "It is a truth universally acknowledged"
    sample_new_tokens: int = 120  # generated at the end (bytes for HAT, tokens for BPE); 0: none


@dataclass
class LoggerConfig:
    """Experiment tracking; metrics.jsonl is always written."""

    name: str = "none"  # none | wandb
    project: str = "hat"
    run_name: str | None = None
    entity: str | None = None
    mode: str = "online"  # wandb: online | offline | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Everything ``hat-train`` needs; hydra's config groups fill one field each."""

    # HATModelConfig or BPEModelConfig (typed by the model group's schema in hydra)
    model: Any = field(default_factory=lambda: HATModelConfig.preset("small"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def resolve_config(cfg: TrainConfig | DictConfig) -> TrainConfig:
    """A hydra DictConfig or a (possibly interpolated) TrainConfig -> a plain, resolved TrainConfig."""
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    out = OmegaConf.to_object(conf)
    if isinstance(out.model, dict):  # an untyped model node: pick the schema by model_type
        kind = out.model.get("model_type", "hat")
        out.model = (BPEModelConfig if kind == "bpe" else HATModelConfig)(**out.model)
    return out


def architecture(model_cfg: HATModelConfig | BPEModelConfig) -> HATConfig | BPEConfig:
    """The model config proper: the preset's fields without init_from / tokenizer settings."""
    base = BPEConfig if model_cfg.model_type == "bpe" else HATConfig
    names = {f.name for f in dataclasses.fields(base)}
    return base(**{k: v for k, v in dataclasses.asdict(model_cfg).items() if k in names}).validate()


def peak_lr(cfg: TrainConfig) -> float:
    """optim.lr, or the HAT paper's rule lr = 3e-4 * 32 / backbone heads."""
    return cfg.optim.lr if cfg.optim.lr is not None else 3e-4 * 32 / cfg.model.backbone.n_heads


class ConfigError(ValueError):
    """A setting is invalid; the message names it and says what to change."""


def validate_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Fail before any work, saying which setting to change (raises ConfigError)."""
    try:
        _validate(cfg, world_size)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _validate(cfg: TrainConfig, world_size: int) -> None:
    t, s, o = cfg.trainer, cfg.schedule, cfg.optim
    if cfg.model.model_type not in ("hat", "bpe"):
        raise ValueError(f"model.model_type must be 'hat' or 'bpe', got {cfg.model.model_type!r}")
    architecture(cfg.model)  # the model's own checks
    cfg.data.validate()
    for key in ("steps", "seq_len", "global_rows", "grad_accum", "log_interval"):
        if getattr(t, key) < 1:
            raise ValueError(f"trainer.{key} must be >= 1, got {getattr(t, key)}")
    counts = (
        "eval_interval",
        "checkpoint_interval",
        "export_interval",
        "keep_last",
        "sample_new_tokens",
    )
    for key in counts:
        if getattr(t, key) < 0:
            raise ValueError(f"trainer.{key} must be >= 0, got {getattr(t, key)}")
    if t.eval_batches is not None and t.eval_batches < 1:
        raise ValueError(
            f"trainer.eval_batches must be >= 1 or null (the whole held-out split), got {t.eval_batches}"
        )
    if t.global_rows % (world_size * t.grad_accum):
        per_step = world_size * t.grad_accum
        raise ValueError(
            f"trainer.global_rows={t.global_rows} must be divisible by world size ({world_size}) x "
            f"trainer.grad_accum ({t.grad_accum}); e.g. trainer.global_rows={per_step * max(1, t.global_rows // per_step)}"
        )
    if cfg.model.model_type == "hat" and t.seq_len < cfg.model.max_word_bytes:
        raise ValueError(
            f"trainer.seq_len={t.seq_len} is shorter than model.max_word_bytes={cfg.model.max_word_bytes}; "
            "raise trainer.seq_len (a row must hold the longest word)"
        )
    _check_choice("trainer.precision", t.precision, PRECISIONS)
    _check_choice("schedule.name", s.name, SCHEDULES)
    _check_choice("logger.name", cfg.logger.name, LOGGERS)
    _check_choice("logger.mode", cfg.logger.mode, WANDB_MODES)
    if not 0 <= s.warmup_steps < t.steps:
        raise ValueError(
            f"schedule.warmup_steps={s.warmup_steps} must be in [0, trainer.steps={t.steps}); "
            f"e.g. schedule.warmup_steps={max(t.steps // 10, 0)}"
        )
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {s.min_lr_ratio}")
    if not 0.0 < s.decay_fraction <= 1.0:
        raise ValueError(f"schedule.decay_fraction must be in (0, 1], got {s.decay_fraction}")
    if o.lr is not None and not o.lr > 0:
        raise ValueError(f"optim.lr must be > 0 (or null for the paper's rule), got {o.lr}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if o.weight_decay < 0 or o.grad_clip < 0 or o.eps <= 0:
        raise ValueError("optim.weight_decay and optim.grad_clip must be >= 0, optim.eps > 0")
    if t.resume not in ("auto", "none") and not Path(t.resume).is_dir():
        raise ValueError(
            f"trainer.resume={t.resume!r}: use auto, none, or an existing checkpoint directory"
        )
    init_from = cfg.model.init_from
    if init_from and not (Path(init_from) / "config.json").is_file():
        raise ValueError(
            f"model.init_from={init_from!r} has no config.json: pass a directory written by save_pretrained"
        )
    tokenizer = getattr(cfg.model, "tokenizer", None)
    if tokenizer and not Path(tokenizer).is_file():
        raise ValueError(
            f"model.tokenizer={tokenizer!r} does not exist; train one with hat-tokenizer, or leave it unset"
        )
    if cfg.logger.name == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError(
                "logger=wandb needs the wandb package: pip install 'hat-lm[wandb]'"
            ) from None


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {choices}")


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
    cls = BPEForCausalLM if arch.model_type == "bpe" else HATForCausalLM
    if not model_cfg.init_from:
        return cls(arch, tokenizer) if arch.model_type == "bpe" else cls(arch)
    saved = json.loads((Path(model_cfg.init_from) / "config.json").read_text())
    if saved.get("model_type") != arch.model_type:
        raise ValueError(
            f"model.init_from={model_cfg.init_from} holds a {saved.get('model_type')!r} model but the selected "
            f"model config is {arch.model_type!r}; choose a matching model= preset"
        )
    model = cls.from_pretrained(model_cfg.init_from)
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


# ---- checkpoints -----------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and what to do."""


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. In-progress saves live in ``.tmp`` dirs and never match."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[5:].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(directory: Path) -> None:
    """Record every file's size and checksum, so a damaged checkpoint is caught by name."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in files
    }
    _write_json(directory / MANIFEST_FILE, manifest)


def verify_checkpoint(directory: Path, previous: Path | None = None) -> None:
    """Raise CheckpointError naming the first missing, truncated or corrupt file."""
    hint = (
        f" The previous checkpoint {previous} is intact: resume from it with trainer.resume={previous}, "
        f"or delete {directory}."
        if previous is not None
        else f" Delete {directory} to start over."
    )
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{manifest_path} is missing or unreadable ({err}).{hint}") from None
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing.{hint}")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint file {path} is truncated or damaged ({size} bytes, expected {expected['bytes']}).{hint}"
            )
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint file {path} is corrupt (checksum mismatch).{hint}")


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    accelerator: Accelerator, root: Path, step: int, state: dict[str, Any], keep_last: int
) -> Path:
    """accelerate's save_state into a temp dir, then trainer state, manifest, and an atomic rename.

    A kill at any point leaves either the previous checkpoints only, or a complete new one.
    """
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, scheduler, RNG states (all ranks)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / TRAINER_STATE_FILE, state)
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep_last] if keep_last else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_resume_checkpoint(cfg: TrainerConfig, root: Path, accelerator: Accelerator) -> Path | None:
    """The checkpoint to resume from (verified on rank 0), or None to start fresh."""
    checkpoints = list_checkpoints(root)
    if cfg.resume == "none":
        if checkpoints:
            raise CheckpointError(
                f"trainer.output_dir={cfg.output_dir} already holds checkpoints (newest: {checkpoints[-1].name}); "
                "continue it with trainer.resume=auto, or choose another trainer.output_dir"
            )
        return None
    if cfg.resume == "auto":
        if not checkpoints:
            return None
        path, previous = checkpoints[-1], (checkpoints[-2] if len(checkpoints) > 1 else None)
    else:
        path, previous = Path(cfg.resume), None
    error = [None]
    if accelerator.is_main_process:
        try:
            verify_checkpoint(path, previous)
        except CheckpointError as err:
            error = [str(err)]
    broadcast_object_list(error)  # every rank stops with the same message
    if error[0] is not None:
        raise CheckpointError(error[0])
    return path


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state."""
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text())
        accelerator.load_state(str(path))
    except Exception as err:
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    if state["world_size"] != accelerator.num_processes:
        logger.warning(
            f"{path} was written by {state['world_size']} processes, resuming on {accelerator.num_processes}; "
            "the data order is unchanged (global batches do not depend on the world size)"
        )
    return state


# ---- metrics ---------------------------------------------------------------------------------
class MetricsLog:
    """metrics.jsonl on rank 0, plus accelerate's trackers (wandb) when configured."""

    def __init__(self, path: Path, accelerator: Accelerator) -> None:
        self.path, self.accelerator = path, accelerator

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after ``step`` (written by a run killed after its last checkpoint)."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log(
            {k: v for k, v in record.items() if k not in ("step", "kind")}, step=record["step"]
        )


# peak dense bf16 FLOP/s per device, for MFU (by substring of torch.cuda.get_device_name())
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
}


def peak_flops(accelerator: Accelerator) -> float | None:
    if accelerator.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(accelerator.device)
    per_device = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return per_device * accelerator.num_processes if per_device else None


def mfu(
    model_cfg: HATConfig | BPEConfig,
    seq_len: int,
    n_bytes: float,
    n_units: float,
    bytes_per_s: float,
    peak: float | None,
) -> float | None:
    """Model FLOPs utilisation from hat.flops (None off GPU, or if hat.flops is missing)."""
    if peak is None or n_units <= 0:
        return None
    try:
        from hat.flops import mfu as flops_mfu
    except ImportError:
        return None
    bytes_per_unit = n_bytes / n_units
    seq_bytes = seq_len if model_cfg.model_type == "hat" else round(seq_len * bytes_per_unit)
    return flops_mfu(model_cfg, bytes_per_unit, bytes_per_s, peak, seq_len=seq_bytes)


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
    state = accelerator.get_state_dict(model)  # gathers FSDP shards; every rank must call it
    if accelerator.is_main_process:
        shell = new_model_like(accelerator.unwrap_model(model))
        shell.load_state_dict(state, assign=True)  # no copy: the shell uses the state's tensors
        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shell.save_pretrained(tmp)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    accelerator.wait_for_everyone()


def generate_sample(model: PreTrainedLM, prompt: str, max_new_tokens: int, seed: int) -> str | None:
    """A short sampled continuation of ``prompt`` if the model can generate, else None."""
    generate = getattr(model, "generate", None)
    if generate is None or max_new_tokens <= 0:
        return None
    try:
        out = generate(
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
    if isinstance(out, list | tuple):
        out = out[0] if out else ""
    if isinstance(out, bytes):
        out = out.decode("utf-8", errors="replace")
    return out if isinstance(out, str) else None


# ---- the loop --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    eval_bpb: float
    export_dir: Path
    output_dir: Path


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf and ``trainer.skip_nan_batches`` is off."""


@dataclass
class Throughput:
    """Bytes and backbone units (HAT words, BPE tokens) per second of training time."""

    n_bytes: float = 0.0
    n_units: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, stats: StepStats) -> None:
        self.n_bytes += stats.n_bytes
        self.n_units += stats.n_words

    def rates(self) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.n_bytes / elapsed, self.n_units / elapsed


class Trainer:
    """One training run: ``Trainer(cfg).fit()``. Set-up (model, data, resume) happens here."""

    def __init__(self, cfg: TrainConfig | DictConfig) -> None:
        self.cfg = cfg = resolve_config(cfg)
        t = cfg.trainer
        self.accelerator = accelerator = make_accelerator(cfg)
        validate_config(cfg, accelerator.num_processes)
        if not accelerator.is_main_process:
            logger.setLevel(logging.WARNING)  # one copy of the progress messages, from rank 0
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
        self.eval_batches = lambda: build_eval_batches(
            cfg.data, self.kind, t.seq_len, t.global_rows, max_batches=t.eval_batches, **loader_args
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
        with logging_redirect_tqdm(), bar:
            while self.step < t.steps:
                stats, lr = self.train_step()
                throughput.add(stats)
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
        return self.accelerator.unwrap_model(self.model)

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
        result = evaluate(self.model, self.eval_batches(), self.accelerator)
        self.metrics.write(
            {"step": self.step, "kind": "eval", "eval_loss": result.loss, "eval_bpb": result.bpb}
        )
        logger.info(
            f"step {self.step}: held-out loss {result.loss:.4f}, {result.bpb:.4f} bits per byte ({result.n_bytes:,} bytes)"
        )
        return result

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
        logger.info(f"final held-out bits per byte: {last_eval.bpb:.4f} (step {self.step})")
        accelerator.end_training()
        return TrainResult(self.step, last_eval.bpb, export_dir, self.out_dir)


def train(cfg: TrainConfig | DictConfig) -> TrainResult:
    """Train (or continue training) a model as configured; returns where things ended up."""
    return Trainer(cfg).fit()


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
