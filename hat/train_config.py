"""The trainer's configuration: typed dataclasses that hydra's YAML (``configs/``) fills.

``TrainConfig`` holds one dataclass per config group (model, data, optim, schedule, trainer,
logger). ``validate_config`` checks every value before any work is done and says which setting
to change; hydra itself rejects unknown keys and wrong types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hat.config import BPEConfig, HATConfig
from hat.data import DataConfig

PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "wsd", "linear", "constant")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


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
