"""Training: the loop (``trainer``), its settings (``config``), optimizer and schedules
(``optim``), checkpoints (``checkpoint``), metrics (``metrics``) and the twin's tokenizer
(``tokenizer``). ``hat-train`` is ``train(cfg)`` behind hydra."""

from hat.training.checkpoint import CheckpointError
from hat.training.config import (
    ConfigError,
    LoggerConfig,
    OptimConfig,
    ScheduleConfig,
    TokenizerConfig,
    TrainConfig,
    TrainerConfig,
    resolve_config,
)
from hat.training.optim import build_optimizer, build_scheduler, lr_multiplier, peak_lr
from hat.training.tokenizer import train_tokenizer
from hat.training.trainer import NonFiniteLossError, Trainer, TrainResult, export_model, train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LoggerConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "ScheduleConfig",
    "TokenizerConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "build_optimizer",
    "build_scheduler",
    "export_model",
    "lr_multiplier",
    "peak_lr",
    "resolve_config",
    "train",
    "train_tokenizer",
]
