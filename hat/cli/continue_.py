"""``hat-continue``: continued pretraining on new data, e.g. a new language
(``hat.training.continued``).

    hat-continue init_from=outputs/small/model                  # on the built-in Spanish sample,
                                                                # 5 % replay of the recorded data
    hat-continue init_from=runs/en/model data=local data.sources.0.path='/data/de/*.txt' \\
        replay.fraction=0.05 trainer.steps=2000 trainer.output_dir=runs/en-de
    hat-continue init_from=runs/en/checkpoints/step_00002000 optimizer_state=init_from
    hat-continue init_from=runs/en/model freeze.modules=[backbone] freeze.steps=200
    hat-continue --help                                         # config groups and every setting
    hat-continue -m init_from=runs/en/model replay.fraction=0,0.05  # a sweep: job N in <output_dir>/N

The config groups are ``hat-train``'s (data, optim, schedule, trainer, logger); the model's
architecture and kind (HAT or BPE twin, with its tokenizer) come from ``init_from``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
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
from hat.training.continued import ContinueConfig, ContinueTrainer

register_configs()
ConfigStore.instance().store(name="continue_schema", node=ContinueConfig)


@hydra.main(config_path=config_dir(), config_name="continue", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with cli_errors("hat-continue"):
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:  # each job its own directory, never a sibling's
            cfg.trainer.output_dir = hydra_cfg.runtime.output_dir
        trainer = ContinueTrainer(cfg)  # from here this run holds the directory (or it stopped)
        if is_rank_zero():
            save_hydra_record(cfg, Path(cfg.trainer.output_dir))
        trainer.fit()


def main() -> None:
    """Console script ``hat-continue``."""
    _main()


if __name__ == "__main__":
    main()
