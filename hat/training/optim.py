"""AdamW with the paper's parameter groups, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from hat.config import ModelConfig
from hat.training.config import OptimConfig, ScheduleConfig


def peak_lr(optim: OptimConfig, model: ModelConfig) -> float:
    """``optim.lr``, or the HAT paper's rule lr = 3e-4 * 32 / backbone heads."""
    return optim.lr if optim.lr is not None else 3e-4 * 32 / model.backbone.n_heads


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on Linear weights only (norms, embeddings, queries, biases: none)."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())  # tied once
    decayed = [p for p in params if id(p) in decay and id(p) not in embeddings]
    kept = [p for p in params if id(p) not in decay or id(p) in embeddings]
    groups = [
        {"params": decayed, "weight_decay": cfg.weight_decay},
        {"params": kept, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=torch.cuda.is_available() or None
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
    optimizer: torch.optim.Optimizer, steps: int, cfg: ScheduleConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplies each group's lr by ``lr_multiplier``; stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, steps, cfg)
    )
