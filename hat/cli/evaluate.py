"""``hat-eval``: several saved models on the same held-out documents, files and tasks.

    hat-eval models='[outputs/small/model,outputs/bpe_small/model]'        # HAT vs its twin
    hat-eval models='[runs/a/model]' data=local data.sources.0.path='/data/de/*.txt'
    hat-eval models='[m1,m2]' texts='[book.txt]' bigbench='[hyperbaton.json]' output=eval.json
    hat-eval models='[org/hat-small,org/hat-small@v1]'                     # from the Hub

Bits per byte on the held-out split of a data config (the mixture and, with several sources,
each source; every document scored whole, long ones in rolling windows of the same size for
every model) and on text files; accuracy on BIG-bench style multiple-choice tasks. Built on
``hat.evaluation.compare_models`` (which Python users can call directly).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

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
from hat.evaluation import compare_models, load_bigbench

logger = logging.getLogger(__name__)


@dataclass
class EvalJob:
    """What ``hat-eval`` evaluates (``configs/eval.yaml``)."""

    models: list[str] = MISSING  # save_pretrained directories or Hub ids (org/name[@revision])
    data: DataConfig = field(default_factory=DataConfig)
    max_docs: int | None = 200  # held-out documents per source; None: all
    texts: list[str] = field(default_factory=list)  # files, each one document
    bigbench: list[str] = field(default_factory=list)  # BIG-bench JSON task files
    bigbench_limit: int | None = 500
    window_bytes: int | None = None  # None: the smallest context among the models
    batch_size: int = 16
    device: str = "auto"
    output: str | None = None  # JSON results file


register_configs()  # the data group's schema
ConfigStore.instance().store(name="eval_schema", node=EvalJob)


def held_out_documents(data: DataConfig, max_docs: int | None) -> dict[str, list[str]]:
    """``held_out`` (the mixture) and ``held_out/<source>`` for each source when there are several."""
    if max_docs == 0:
        return {}
    sets = {"held_out": data, **{f"held_out/{k}": v for k, v in data.eval_sets().items()}}
    read: dict[int, list[str]] = {}  # a source that is the whole mixture is read once
    for cfg in sets.values():
        if id(cfg) not in read:
            read[id(cfg)] = list(itertools.islice(iter_documents(cfg, "eval"), max_docs))
    return {name: read[id(cfg)] for name, cfg in sets.items()}


def unique_names(
    paths: list[str], short: Callable[[str], str], taken: Collection[str] = ()
) -> list[str]:
    """Each file's row name: ``short(path)`` (its name), or the path as given where two files
    share that name (``en/test.txt`` and ``de/test.txt``; BIG-bench's ``<task>/task.json``)."""
    shorts = [short(p) for p in paths]
    return [s if shorts.count(s) == 1 and s not in taken else p for p, s in zip(paths, shorts)]


def run(job: EvalJob) -> dict:
    """Load the models and data, evaluate, return ``compare_models``' results."""
    if not job.models:
        raise ValueError("models is empty: give at least one save_pretrained directory")
    # checked before the models load: islice() would fail on a negative max_docs without
    # naming it; a negative bigbench_limit would slice examples off the end, 0 leave none
    if job.max_docs is not None and job.max_docs < 0:
        raise ValueError(
            f"max_docs must be >= 0 (0: no held-out documents) or null, got {job.max_docs}"
        )
    if job.bigbench_limit is not None and job.bigbench_limit < 1:
        raise ValueError(f"bigbench_limit must be >= 1 or null (all), got {job.bigbench_limit}")
    device = resolve_device(job.device, "device")
    models = {m: load_pretrained(m, device=device) for m in job.models}
    documents = held_out_documents(job.data, job.max_docs)
    text_names = unique_names(job.texts, lambda p: Path(p).name, taken=set(documents))
    for path, name in zip(job.texts, text_names):
        text = read_text_file(path, "texts")
        if not text:
            raise ValueError(f"texts: {path} is empty; give files that hold some text")
        documents[name] = [text]
    task_names = unique_names(job.bigbench, lambda p: Path(p).stem)
    tasks = {
        name: load_bigbench(p, job.bigbench_limit) for p, name in zip(job.bigbench, task_names)
    }
    logger.info(
        f"{len(models)} model(s); {sum(map(len, documents.values()))} documents in "
        f"{len(documents)} set(s); {len(tasks)} task(s); device {device}"
    )
    return compare_models(models, documents, tasks, job.window_bytes, job.batch_size, progress=True)


def print_table(results: dict) -> None:
    models = results["models"]
    table = Table(title=f"hat-eval (rolling window {results['window_bytes']} bytes)")
    table.add_column("evaluation")
    for name, row in models.items():
        path = Path(name)  # outputs/small/model -> small/model: the run names the model
        short = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        table.add_column(
            f"{short}\n({row['model_type']}, {row['params'] / 1e6:.1f} M)", justify="right"
        )
    first = next(iter(models.values()))
    for key in first["bits_per_byte"]:
        table.add_row(
            f"{key} (bits/byte)", *(f"{r['bits_per_byte'][key]:.4f}" for r in models.values())
        )
    for task in first["tasks"]:
        cells = (
            f"{r['tasks'][task]['accuracy']:.3f} / {r['tasks'][task]['accuracy_byte_normalised']:.3f}"
            for r in models.values()
        )
        table.add_row(f"{task} (acc / byte-norm. acc)", *cells)
    Console().print(table)


@hydra.main(config_path=config_dir(), config_name="eval", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with cli_errors("hat-eval"):
        check_known_keys(cfg)
        job: EvalJob = OmegaConf.to_object(cfg)
        if job.output:  # a place for the results before the evaluation, not a traceback after
            if Path(job.output).is_dir():
                raise ValueError(f"output: {job.output} is a directory; name a JSON file")
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        results = run(job)
    print_table(results)
    if job.output:
        with cli_errors("hat-eval"):
            Path(job.output).write_text(json.dumps(results, indent=2) + "\n")
        logger.info(f"wrote {job.output}")


def main() -> None:
    """Console script ``hat-eval``."""
    _main()


if __name__ == "__main__":
    main()
