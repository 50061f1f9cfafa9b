"""``hat-robustness``: how much each model loses under noisy input (``hat.robustness``).

    hat-robustness models='[outputs/small/model,outputs/bpe_small/model]' texts='[book.txt]' \\
        tasks='[hyperbaton.json]' perturbations='[permute,replace,delete,uppercase]' \\
        rate=0.1 seed=0 output_dir=OUT
    hat-robustness models='[m1,m2]' data=sample perturbations='[keyboard,misspell]'

Task accuracy with perturbed questions; bits per byte of clean second halves given perturbed
first halves and of perturbed documents; relative degradation with bootstrap intervals, and
each model's degradation over the first model's. Writes ``OUT/robustness.csv``, ``.json`` and
``.png`` and prints a markdown table. Bad input is a one-line error and exit code 1.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from hat.auto import load_pretrained
from hat.cli.common import (
    cli_errors,
    config_dir,
    read_text_file,
    register_configs,
    resolve_device,
)
from hat.config_keys import check_known_keys
from hat.data import DataConfig, iter_documents
from hat.evaluation import MultipleChoiceExample, load_task
from hat.hub import is_hub_id
from hat.perturb import PAPER, check
from hat.robustness import RobustnessResult, evaluate_robustness, prepare_documents

logger = logging.getLogger(__name__)


@dataclass
class RobustnessJob:
    """What ``hat-robustness`` evaluates (``configs/robustness.yaml``)."""

    models: list[str] = MISSING  # saved models, training checkpoints or Hub ids
    texts: list[str] = field(default_factory=list)  # UTF-8 text files
    data: DataConfig | None = None  # also the held-out split of this data config
    tasks: list[str] = field(default_factory=list)  # BIG-bench .json or .jsonl tasks
    perturbations: list[str] = field(default_factory=lambda: list(PAPER))
    rate: float = 0.1
    seed: int = 0
    max_examples: int | None = 500  # per task
    max_bytes: int | None = 100_000  # per text source
    doc_bytes: int = 1024
    window_bytes: int | None = None
    batch_size: int = 16
    n_bootstrap: int = 1000
    confidence: float = 0.95
    reference: str | None = None  # default: the first model
    device: str = "auto"
    output_dir: str = "robustness"
    plot: bool = True

    def validate(self) -> RobustnessJob:
        """Fail before loading anything, naming the setting to change."""
        if not self.models:
            raise ValueError(
                "models is empty: give save_pretrained directories, models='[DIR,...]'"
            )
        for m in self.models:
            if not (Path(m).is_dir() or is_hub_id(m)):
                raise FileNotFoundError(
                    f"model {m} not found (neither a directory nor a Hub id): check models=[...]"
                )
        if not self.perturbations:
            raise ValueError("perturbations is empty: e.g. perturbations='[permute,uppercase]'")
        for p in self.perturbations:
            check(p, self.rate)
        if not (self.texts or self.tasks or self.data):
            raise ValueError(
                "nothing to evaluate: give texts='[FILE,...]', tasks='[FILE,...]' or data=sample"
            )
        for name, value in (("max_examples", self.max_examples), ("max_bytes", self.max_bytes)):
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1 (or null for no limit)")
        if self.doc_bytes < 64 or self.batch_size < 1 or self.seed < 0:
            raise ValueError("doc_bytes must be >= 64, batch_size >= 1 and seed >= 0")
        if self.reference is not None and self.reference not in self.models:
            raise ValueError(f"reference={self.reference} must be one of models")
        if self.n_bootstrap < 1 or not 0 < self.confidence < 1:  # else found after loading
            raise ValueError("n_bootstrap must be >= 1 and confidence in (0, 1)")
        return self


register_configs()  # the data group's schema
ConfigStore.instance().store(name="robustness_schema", node=RobustnessJob)


def load_inputs(job: RobustnessJob) -> tuple[dict, dict]:
    """``(tasks, documents)`` as ``evaluate_robustness`` takes them, within the budgets."""
    tasks: dict[str, list[MultipleChoiceExample]] = {}
    for path in job.tasks:
        examples = load_task(path)
        if job.max_examples is not None and len(examples) > job.max_examples:
            keep = sorted(random.Random(job.seed).sample(range(len(examples)), job.max_examples))
            examples = [examples[i] for i in keep]
        tasks[_new_name(Path(path).stem, tasks, path)] = examples
    documents: dict[str, list[str]] = {}
    if job.data is not None:
        held_out = iter_documents(job.data, "eval")
        documents["held_out"] = prepare_documents(held_out, job.max_bytes, job.doc_bytes)
    for path in job.texts:
        docs = prepare_documents([read_text_file(path, "texts")], job.max_bytes, job.doc_bytes)
        if not docs:
            raise ValueError(f"text file {path} holds no document of 64 bytes or more")
        documents[_new_name(Path(path).name, {**tasks, **documents}, path)] = docs
    return tasks, documents


def _new_name(name: str, taken: dict, path: str) -> str:
    """A dataset's name, if no earlier one has it: two files called book.txt would otherwise
    be one dataset, the first one's results silently overwritten."""
    if name in taken:
        raise ValueError(
            f"two inputs are both named {name!r} ({path} is the second): the results are keyed "
            "by file name, so rename or copy one; no file may be given twice"
        )
    return name


def run(job: RobustnessJob) -> RobustnessResult:
    """Load models and inputs, evaluate, write the files; return the result."""
    job.validate()
    device = resolve_device(job.device, "device")
    tasks, documents = load_inputs(job)
    models = {m: load_pretrained(m, device=device) for m in job.models}
    logger.info(
        f"{len(models)} model(s) x {len(job.perturbations)} perturbation(s); "
        f"{len(tasks)} task(s), {sum(map(len, tasks.values()))} examples; "
        f"{sum(map(len, documents.values()))} documents; device {device}"
    )
    result = evaluate_robustness(
        models,
        job.perturbations,
        tasks=tasks,
        documents=documents,
        rate=job.rate,
        seed=job.seed,
        batch_size=job.batch_size,
        window_bytes=job.window_bytes,
        n_bootstrap=job.n_bootstrap,
        confidence=job.confidence,
        reference=job.reference,
    )
    for path in result.write(job.output_dir, plot=job.plot):
        logger.info(f"wrote {path}")
    return result


@hydra.main(config_path=config_dir(), config_name="robustness", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with cli_errors("hat-robustness"):
        check_known_keys(cfg)
        job: RobustnessJob = OmegaConf.to_object(cfg)
        result = run(job)
    print(result.markdown())


def main() -> None:
    """Console script ``hat-robustness``."""
    _main()


if __name__ == "__main__":
    main()
