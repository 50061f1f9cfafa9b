"""The trainer's configuration: typed dataclasses that hydra's YAML (``configs/``) fills.

``TrainConfig`` holds one field per config group (model, data, optim, schedule, trainer,
logger) plus what is not architecture: ``init_from`` (start from saved weights) and
``tokenizer`` (the twin's). ``resolve_config`` turns hydra's node (or a ``TrainConfig`` built in
Python) into plain dataclasses and validates every value once, before any work, with a message
that says which setting to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hat.config import preset
from hat.config_keys import check_known_keys
from hat.data import DataConfig
from hat.hub import is_hub_id
from hat.registry import kind_of

PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "wsd", "linear", "constant")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


class ConfigError(ValueError):
    """A setting is invalid; the message names it and says what to change."""


@dataclass
class TokenizerConfig:
    """The BPE twin's tokenizer (HAT needs none)."""

    path: str | None = None  # a tokenizer.model (hat-tokenizer); None: train one at start
    train_bytes: int = 100_000_000  # training text read to train that tokenizer


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
    # bytes of text per row, for every model kind: a HAT row is row_bytes bytes; a twin's row
    # holds as many tokens as its tokenizer needs for row_bytes bytes on this data (measured at
    # start), so HAT and its twin read the same text per step
    row_bytes: int = 512
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

    model: Any = field(default_factory=lambda: preset("small"))  # HATConfig | BPEConfig
    init_from: str | None = None  # a saved model, a checkpoint or a Hub id: start from its weights
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def resolve_config(cfg: TrainConfig | DictConfig, world_size: int = 1) -> TrainConfig:
    """Plain, interpolation-free, validated dataclasses from a hydra node or a ``TrainConfig``.

    A ``model`` given as a plain mapping (a YAML file without a preset to extend) is typed by
    its ``model_type`` (default HAT).
    """
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    try:
        check_known_keys(conf)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out = OmegaConf.to_object(conf)
    if isinstance(out.model, dict):
        kind = kind_of(out.model.get("model_type", "hat"))
        try:
            out.model = kind.config_class(**out.model)
        except TypeError as err:
            raise ConfigError(f"model: {err}") from None
    try:
        _validate(out, world_size)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return out


def _validate(cfg: TrainConfig, world_size: int) -> None:
    t, s, o = cfg.trainer, cfg.schedule, cfg.optim
    cfg.model.validate()
    cfg.data.validate()
    for key in ("steps", "row_bytes", "global_rows", "grad_accum", "log_interval"):
        _at_least(f"trainer.{key}", getattr(t, key), 1)
    for key in ("eval_interval", "checkpoint_interval", "export_interval", "keep_last"):
        _at_least(f"trainer.{key}", getattr(t, key), 0)
    _at_least("trainer.sample_new_tokens", t.sample_new_tokens, 0)
    if t.eval_batches is not None:
        _at_least("trainer.eval_batches (or null: the whole held-out split)", t.eval_batches, 1)
    per_step = world_size * t.grad_accum
    if t.global_rows % per_step:
        raise ValueError(
            f"trainer.global_rows={t.global_rows} must be divisible by world size ({world_size}) x "
            f"trainer.grad_accum ({t.grad_accum}); e.g. "
            f"trainer.global_rows={per_step * max(1, t.global_rows // per_step)}"
        )
    if t.row_bytes < cfg.model.min_row_bytes():
        raise ValueError(
            f"trainer.row_bytes={t.row_bytes} is shorter than the model's longest word "
            f"({cfg.model.min_row_bytes()} bytes); raise trainer.row_bytes"
        )
    _check_choice("trainer.precision", t.precision, PRECISIONS)
    _check_choice("schedule.name", s.name, SCHEDULES)
    _check_choice("logger.name", cfg.logger.name, LOGGERS)
    _check_choice("logger.mode", cfg.logger.mode, WANDB_MODES)
    if not 0 <= s.warmup_steps < t.steps:
        raise ValueError(
            f"schedule.warmup_steps={s.warmup_steps} must be in [0, trainer.steps={t.steps}); "
            f"e.g. schedule.warmup_steps={t.steps // 10}"
        )
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {s.min_lr_ratio}")
    if not 0.0 < s.decay_fraction <= 1.0:
        raise ValueError(f"schedule.decay_fraction must be in (0, 1], got {s.decay_fraction}")
    if o.lr is not None and not (math.isfinite(o.lr) and o.lr > 0):
        raise ValueError(f"optim.lr must be > 0 (or null for the paper's rule), got {o.lr}")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if o.weight_decay < 0 or o.grad_clip < 0 or o.eps <= 0:
        raise ValueError("optim.weight_decay and optim.grad_clip must be >= 0, optim.eps > 0")
    if t.resume not in ("auto", "none") and not Path(t.resume).is_dir():
        raise ValueError(
            f"trainer.resume={t.resume!r}: use auto, none, or an existing checkpoint directory"
        )
    local = cfg.init_from and Path(cfg.init_from).exists()
    if cfg.init_from and not (local or is_hub_id(cfg.init_from)):
        raise ValueError(
            f"init_from={cfg.init_from!r} does not exist: pass a directory written by "
            "save_pretrained (a run's model/ or exports/step_N/), a training checkpoint "
            "(checkpoints/step_N/) or a Hub id (org/name)"
        )
    if local and not (Path(cfg.init_from) / "config.json").is_file():
        raise ValueError(
            f"init_from={cfg.init_from!r} has no config.json: pass a directory written by "
            "save_pretrained (a run's model/ or exports/step_N/) or a training checkpoint "
            "(checkpoints/step_N/)"
        )
    if cfg.tokenizer.path and not Path(cfg.tokenizer.path).is_file():
        raise ValueError(
            f"tokenizer.path={cfg.tokenizer.path!r} does not exist; train one with hat-tokenizer, "
            "or leave it unset to train one at start"
        )
    _at_least("tokenizer.train_bytes", cfg.tokenizer.train_bytes, 1)
    if cfg.logger.name == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError(
                "logger=wandb needs the wandb package: pip install 'hat-lm[wandb]'"
            ) from None


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{key} must be >= {low}, got {value}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {choices}")
