"""``hat-train``: hydra entry point of the trainer (``hat.training.train``).

    hat-train                                   # small HAT on the built-in sample, a few CPU minutes
    hat-train model=bpe_small                   # its BPE twin, reading the same text per step
    hat-train model=small model.backbone.n_layers=8 trainer.steps=2000 optim.lr=1e-3
    accelerate launch --config_file configs/accelerate/ddp.yaml -m hat.cli.train trainer=gpu
    hat-train --help                            # config groups and every setting
    hat-train -m trainer.steps=200,400          # a sweep: job N in <trainer.output_dir>/N

Configs are the YAML files of ``configs/`` (installed as the package ``hat.conf``), typed by the
dataclasses in ``hat.training.config`` and ``hat.config`` registered in hydra's ConfigStore.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hat.cli.common import (
    cli_errors,
    config_dir,
    is_rank_zero,
    register_configs,
    save_hydra_record,
)
from hat.training import Trainer

register_configs()


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with cli_errors("hat-train"):
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # each job its own directory, never a sibling's
            cfg.trainer.output_dir = hydra_cfg.runtime.output_dir
        trainer = Trainer(cfg)  # from here this run holds the directory (or it stopped)
        if is_rank_zero():
            save_hydra_record(cfg, Path(cfg.trainer.output_dir))
        trainer.fit()


def main() -> None:
    """Console script ``hat-train``."""
    _main()


if __name__ == "__main__":
    main()
