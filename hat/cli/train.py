"""``hat-train``: hydra entry point of the trainer (``hat.train.train``).

    hat-train                                   # small HAT on the built-in sample, a few CPU minutes
    hat-train model=bpe_small                   # its BPE twin, same data
    hat-train model=small model.backbone.n_layers=8 trainer.steps=2000 optim.lr=1e-3
    accelerate launch --config_file configs/accelerate/ddp.yaml -m hat.cli.train trainer=gpu
    hat-train --help                            # config groups and every setting

Configs are the YAML files of ``configs/`` (installed as the package ``hat.conf``), typed by the
dataclasses in ``hat.train_config`` registered in hydra's ConfigStore, so a misspelt key fails at once.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from hat.checkpoint import CheckpointError
from hat.presets import BPE_PRESETS, HAT_PRESETS
from hat.train import NonFiniteLossError, train
from hat.train_config import BPEModelConfig, ConfigError, HATModelConfig, TrainConfig


def config_dir() -> str:
    """The YAML configs: the installed ``hat.conf`` package, else the source checkout's configs/."""
    try:
        installed = resources.files("hat.conf")
        if installed.joinpath("train.yaml").is_file():
            return str(installed)
    except ModuleNotFoundError:
        pass
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if (checkout / "train.yaml").is_file():
        return str(checkout)
    raise FileNotFoundError("hat's configs are missing: reinstall hat-lm (pip install hat-lm)")


def is_rank_zero() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a single process); hydra runs before any
    process group exists, so ask the launcher's environment."""
    return int(os.environ.get("RANK", "0")) == 0


def register_configs() -> None:
    """The typed schema of the whole config, and the model presets of ``hat.presets`` as the
    options of the ``model`` group (one source of truth; configs/model/ adds custom ones)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig(model=MISSING))  # the model group fills it
    store.store(group="model", name="base_hat", node=HATModelConfig)
    store.store(group="model", name="base_bpe", node=BPEModelConfig)
    for name in HAT_PRESETS:
        store.store(group="model", name=name, node=HATModelConfig.preset(name))
    for name in BPE_PRESETS:
        if name.startswith("bpe_"):  # BPE_PRESETS also maps the bare sizes, which are HAT's here
            store.store(group="model", name=name, node=BPEModelConfig.preset(name))
    if not OmegaConf.has_resolver("hat.if_rank_zero"):
        # hydra writes .hydra/ and train.log on rank 0 only: `${hat.if_rank_zero:a,b}` is a there, b elsewhere
        OmegaConf.register_new_resolver(
            "hat.if_rank_zero", lambda a, b=None: a if is_rank_zero() else b
        )


register_configs()


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except (ConfigError, CheckpointError, NonFiniteLossError) as err:
        # the message says what is wrong and what to do: a traceback would only bury it
        if is_rank_zero():
            print(f"hat-train: error: {err}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    """Console script ``hat-train``."""
    _main()


if __name__ == "__main__":
    main()
