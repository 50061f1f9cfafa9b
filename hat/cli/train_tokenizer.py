"""``hat-tokenizer``: train the BPE twin's tokenizer on a data config's training documents.

    hat-tokenizer                                         # 4k vocabulary on the built-in sample
    hat-tokenizer model=bpe_1b data=fineweb_edu output=tok/fineweb-64k.model
    hat-train model=bpe_1b tokenizer.path=tok/fineweb-64k.model data=fineweb_edu

The data and model config groups are hat-train's (configs/data, the presets); the vocabulary
size defaults to the chosen model's. ``hat-train`` trains one by itself when a twin has no
``tokenizer.path``; this command is for training it once, on more text, ahead of the runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from hat.cli.common import cli_errors, config_dir, register_configs
from hat.config_keys import check_known_keys
from hat.data import DataConfig
from hat.training.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class TokenizerJob:
    model: Any = MISSING  # a BPE preset; only its vocab_size is used
    data: DataConfig = field(default_factory=DataConfig)
    vocab_size: int = MISSING
    output: str = "tokenizer.model"
    max_bytes: int = 100_000_000  # training text read from the start of the train split


register_configs()  # the model presets
ConfigStore.instance().store(name="tokenizer_schema", node=TokenizerJob)


@hydra.main(config_path=config_dir(), config_name="tokenizer", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with cli_errors("hat-tokenizer"):
        check_known_keys(cfg)
        if OmegaConf.is_interpolation(cfg, "vocab_size") and "vocab_size" not in cfg.model:
            raise ValueError(  # the default vocab_size is ${model.vocab_size}
                f"model={cfg.model.get('name')} has no vocabulary (a HAT preset?); choose a BPE "
                "preset (model=bpe_small) or set vocab_size="
            )
        job: TokenizerJob = OmegaConf.to_object(cfg)
        if job.vocab_size < 260 or job.max_bytes < 1:
            raise ValueError("vocab_size must be >= 260 (byte fallback) and max_bytes >= 1")
        logger.info(
            f"training a {job.vocab_size}-token BPE on up to {job.max_bytes:,} bytes of training text"
        )
        tokenizer = train_tokenizer(job.data, job.vocab_size, job.output, job.max_bytes)
    logger.info(
        f"wrote {tokenizer.model_file} ({len(tokenizer)} tokens); use it with "
        f"tokenizer.path={tokenizer.model_file}"
    )


def main() -> None:
    """Console script ``hat-tokenizer``."""
    _main()


if __name__ == "__main__":
    main()
