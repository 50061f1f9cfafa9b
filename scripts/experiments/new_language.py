"""The HAT paper's new-language experiment in miniature (arXiv 2501.10322, "new language").

Pretrain HAT and its BPE twin on the old language at equal training FLOPs; continue both on
the new language with the ``hat-continue`` recipe (re-warm, re-decay, replay of the old data;
the twin keeps its old-language tokenizer); train both on the new language from scratch as the
reference (the scratch twin gets a tokenizer trained on the new language), again at equal FLOPs.
Then write a report: a markdown table, a matplotlib figure and the numbers as JSON.

    python scripts/experiments/new_language.py --out runs/new_language \\
        --old /data/en/austen.txt /data/en/shakespeare.txt --new /data/de/*.txt

Sources are anything ``data.sources.N.path`` takes (files, globs, ``builtin:`` corpora, hub
names). Each language's sources are first cut into documents of about ``--doc-bytes`` bytes
(at line ends), shuffled together and written to ``<out>/data/<label>.txt`` (at most
``--max-bytes``), so every file of a language is sampled from the start and each language's
held-out split (every 100th document) is one random sample of it.

Equal FLOPs: ``hat.flops`` gives each model's training FLOPs per byte from its bytes per backbone
position (words for HAT, tokens for the twin), measured on the run's data before it starts; HAT
runs ``--pretrain-steps`` / ``--continue-steps`` steps and the twin as many as the same FLOPs
buy. The FLOPs reported are counted per run afterwards, from what it trained (``metrics.jsonl``:
bytes per step and bytes per position of every logged interval).

Resumable: every run lives in ``<out>/runs/<name>``; a complete run (its export records the
planned step) is skipped, an interrupted one resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import re
import sys
from pathlib import Path
from typing import Any

import torch

from hat.config import preset
from hat.data import DataConfig, SourceConfig, iter_documents
from hat.flops import training_flops_per_byte
from hat.registry import kind_of, load_config
from hat.tokenizer import BPETokenizer
from hat.training import (
    OptimConfig,
    ScheduleConfig,
    TokenizerConfig,
    TrainConfig,
    TrainerConfig,
    train,
    train_tokenizer,
)
from hat.training.continued import (
    ContinueConfig,
    ReplayConfig,
    continue_training,
    positions_per_byte,
)
from hat.training.record import read_training_record

logger = logging.getLogger("new_language")

RUNS = (
    "pretrain_hat",
    "pretrain_twin",
    "continue_hat",
    "continue_twin",
    "scratch_hat",
    "scratch_twin",
)


# ---- data ------------------------------------------------------------------------------------
def prepare_language(
    paths: list[str], out_file: Path, max_bytes: int, doc_bytes: int, seed: int
) -> Path:
    """Documents of about ``doc_bytes`` (whole lines) from every source, shuffled together,
    written as blank-line separated paragraphs (at most ``max_bytes``)."""
    if out_file.is_file():
        return out_file
    docs: list[str] = []
    for path in paths:
        data = DataConfig([SourceConfig(path, sample_by="paragraph")], eval_every=0)
        lines = (
            line.strip() for text in iter_documents(data, "train") for line in text.splitlines()
        )
        chunk: list[str] = []
        size = 0
        for line in lines:
            if not re.search(r"\w", line):  # blank lines, separators such as fortune's "%"
                continue
            chunk.append(line)
            size += len(line.encode("utf-8")) + 1
            if size >= doc_bytes:
                docs.append("\n".join(chunk))
                chunk, size = [], 0
        if chunk:
            docs.append("\n".join(chunk))
    random.Random(seed).shuffle(docs)
    kept, total = [], 0
    for doc in docs:
        total += len(doc.encode("utf-8")) + 2
        if total > max_bytes:
            break
        kept.append(doc)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    tmp.replace(out_file)
    logger.info(f"{out_file}: {len(kept)} documents, {total / 1e6:.2f} MB from {paths}")
    return out_file


def source(path: Path, label: str, weight: float = 1.0) -> SourceConfig:
    return SourceConfig(str(path), weight=weight, label=label, sample_by="paragraph")


# ---- FLOPs -----------------------------------------------------------------------------------
def flops_per_step(model: Any, data: DataConfig, row_bytes: int, rows: int) -> float:
    """Planned training FLOPs of one step of ``rows`` x ``row_bytes`` bytes of ``data``."""
    # measured on every other document (positions_per_byte reads the held-out split)
    per_byte = positions_per_byte(model, dataclasses.replace(data, eval_every=2))
    return training_flops_per_byte(model.config, 1.0 / per_byte, row_bytes) * row_bytes * rows


def counted_flops(run: Path) -> dict[int, float]:
    """Cumulative training FLOPs at every logged step, counted from what the run trained."""
    config = load_config(run / "model" / "config.json")
    row_bytes = read_training_record(run / "model")["trainer"]["row_bytes"]
    position = f"{kind_of(config).position}s_per_s"
    flops, seen, total = {0: 0.0}, 0.0, 0.0
    for r in read_metrics(run, "train"):
        bytes_per_unit = r["bytes_per_s"] / r[position]
        total += (r["bytes_seen"] - seen) * training_flops_per_byte(
            config, bytes_per_unit, row_bytes
        )
        seen = r["bytes_seen"]
        flops[r["step"]] = total
    return flops


def read_metrics(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return sorted((r for r in map(json.loads, lines) if r["kind"] == kind), key=lambda r: r["step"])


def curve(run: Path, label: str) -> list[tuple[float, float]]:
    """(training FLOPs, held-out bits per byte of ``label``) at every evaluation of a run."""
    flops = counted_flops(run)
    steps = sorted(flops)
    points = []
    for r in read_metrics(run, "eval"):
        if f"eval_bpb/{label}" in r:
            at = max(s for s in steps if s <= r["step"])
            points.append((flops[at], r[f"eval_bpb/{label}"]))
    return points


def flops_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """FLOPs at which a curve first reaches ``target`` bits per byte (linear between evaluations)."""
    for i, (flops, bpb) in enumerate(points):
        if bpb <= target:
            if i == 0:
                return flops
            f0, b0 = points[i - 1]
            return f0 + (flops - f0) * (b0 - target) / (b0 - bpb)
    return None


# ---- runs ------------------------------------------------------------------------------------
class Experiment:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.runs = self.out / "runs"
        a = args
        self.old = prepare_language(
            a.old, self.out / "data" / f"{a.old_label}.txt", a.max_bytes, a.doc_bytes, a.seed
        )
        self.new = prepare_language(
            a.new, self.out / "data" / f"{a.new_label}.txt", a.max_bytes, a.doc_bytes, a.seed
        )
        self.old_src, self.new_src = source(self.old, a.old_label), source(self.new, a.new_label)
        # pretraining also evaluates the new language (weight 0): where each model starts
        self.pretrain_data = DataConfig([self.old_src, dataclasses.replace(self.new_src, weight=0)])
        self.scratch_data = DataConfig([self.new_src, dataclasses.replace(self.old_src, weight=0)])
        self.new_data = DataConfig([self.new_src])
        self.tokenizers = {
            lang: self.tokenizer(lang, data)
            for lang, data in ((a.old_label, self.pretrain_data), (a.new_label, self.scratch_data))
        }
        self.plan: dict[str, dict[str, Any]] = {}

    def tokenizer(self, lang: str, data: DataConfig) -> Path:
        path = self.out / "tokenizers" / f"{lang}-{self.args.twin_vocab}.model"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            train_tokenizer(data, self.args.twin_vocab, path, self.args.tokenizer_bytes)
        return path

    def model_config(self, kind: str) -> Any:
        if kind == "hat":
            return preset(self.args.hat)
        return dataclasses.replace(preset(self.args.twin), vocab_size=self.args.twin_vocab)

    def trainer(self, name: str, steps: int, eval_interval: int) -> TrainerConfig:
        a = self.args
        return TrainerConfig(
            steps=steps,
            row_bytes=a.row_bytes,
            global_rows=a.rows,
            log_interval=a.log_interval,
            eval_interval=eval_interval,
            eval_batches=a.eval_batches,
            checkpoint_interval=a.checkpoint_interval,
            keep_last=1,
            seed=a.seed,
            output_dir=str(self.runs / name),
            sample_new_tokens=0,
        )

    def steps_for(self, budget: float, model: Any, data: DataConfig) -> int:
        per_step = flops_per_step(model, data, self.args.row_bytes, self.args.rows)
        return max(2, round(budget / per_step))

    def done(self, name: str, steps: int) -> bool:
        record = (
            read_training_record(self.runs / name / "model")
            if (self.runs / name / "model").is_dir()
            else None
        )
        return record is not None and record.get("step") == steps

    def run_all(self) -> None:
        a = self.args
        import hat

        hat_model = hat.HATForCausalLM(self.model_config("hat"))
        en_twin = hat.BPEForCausalLM(
            self.model_config("bpe"), BPETokenizer(self.tokenizers[a.old_label])
        )
        de_twin = hat.BPEForCausalLM(
            self.model_config("bpe"), BPETokenizer(self.tokenizers[a.new_label])
        )
        old_only, new_only = DataConfig([self.old_src]), self.new_data
        pretrain_budget = a.pretrain_steps * flops_per_step(
            hat_model, old_only, a.row_bytes, a.rows
        )
        continue_budget = a.continue_steps * flops_per_step(
            hat_model, new_only, a.row_bytes, a.rows
        )
        steps = {
            "pretrain_hat": a.pretrain_steps,
            "pretrain_twin": self.steps_for(pretrain_budget, en_twin, old_only),
            "continue_hat": a.continue_steps,
            "continue_twin": self.steps_for(continue_budget, en_twin, new_only),
            "scratch_hat": a.continue_steps,
            "scratch_twin": self.steps_for(continue_budget, de_twin, new_only),
        }
        budgets = {
            "pretrain": pretrain_budget,
            "continue": continue_budget,
            "scratch": continue_budget,
        }
        self.plan = {
            name: {"steps": n, "planned_flops": budgets[name.split("_")[0]]}
            for name, n in steps.items()
        }
        logger.info(f"plan (steps at equal FLOPs): {json.dumps(steps)}")
        pretrain_schedule = ScheduleConfig("cosine", warmup_steps=max(1, a.pretrain_steps // 10))
        for name in ("pretrain_hat", "pretrain_twin", "scratch_hat", "scratch_twin"):
            if self.done(name, steps[name]):
                logger.info(f"{name}: complete, skipped")
                continue
            kind = "hat" if name.endswith("hat") else "bpe"
            lang = a.old_label if name.startswith("pretrain") else a.new_label
            schedule = dataclasses.replace(
                pretrain_schedule, warmup_steps=max(1, steps[name] // 10)
            )
            cfg = TrainConfig(
                model=self.model_config(kind),
                tokenizer=TokenizerConfig(str(self.tokenizers[lang]) if kind == "bpe" else None),
                data=self.pretrain_data if name.startswith("pretrain") else self.scratch_data,
                optim=OptimConfig(lr=a.lr),
                schedule=schedule,
                trainer=self.trainer(name, steps[name], a.eval_interval),
            )
            logger.info(f"{name}: {steps[name]} steps")
            train(cfg)
        for name in ("continue_hat", "continue_twin"):
            if self.done(name, steps[name]):
                logger.info(f"{name}: complete, skipped")
                continue
            init = self.runs / f"pretrain_{name.split('_')[1]}" / "model"
            cfg = ContinueConfig(
                init_from=str(init),
                data=self.new_data,
                replay=ReplayConfig(fraction=a.replay),  # the recorded data: the old language
                optim=OptimConfig(lr=a.lr),
                schedule=ScheduleConfig(
                    "wsd", warmup_steps=max(1, steps[name] // 10), min_lr_ratio=0.0
                ),
                trainer=self.trainer(name, steps[name], a.eval_interval),
            )
            logger.info(f"{name}: {steps[name]} steps")
            continue_training(cfg)

    # ---- report ----------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        a = self.args
        import hat

        new, old = a.new_label, a.old_label
        out: dict[str, Any] = {"plan": self.plan, "runs": {}}
        for name in RUNS:
            run = self.runs / name
            flops = counted_flops(run)
            last = read_metrics(run, "eval")[-1]
            model = hat.load_pretrained(run / "model")
            out["runs"][name] = {
                "kind": kind_of(model).name,
                "steps": max(flops),
                "bytes_trained": read_metrics(run, "train")[-1]["bytes_seen"],
                "flops": flops[max(flops)],
                f"bpb_{new}": last.get(f"eval_bpb/{new}"),
                f"bpb_{old}": last.get(f"eval_bpb/{old}"),
                f"positions_per_byte_{new}": positions_per_byte(model, DataConfig([self.new_src])),
                f"positions_per_byte_{old}": positions_per_byte(model, DataConfig([self.old_src])),
                "curve": {lang: curve(run, lang) for lang in (new, old)},
            }
        runs = out["runs"]
        target = runs["continue_twin"][f"bpb_{new}"]
        reach = {
            n: flops_to_reach(runs[n]["curve"][new], target)
            for n in ("continue_hat", "continue_twin")
        }
        out["target"] = {"bpb": target, "flops_to_reach": reach}
        if reach["continue_hat"] and reach["continue_twin"]:
            out["target"]["twin_over_hat"] = reach["continue_twin"] / reach["continue_hat"]
        return out

    def report(self, command: str) -> Path:
        a, res = self.args, self.results()
        new, old = a.new_label, a.old_label
        (self.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        figure = self.figure(res)
        runs = res["runs"]
        lines = [
            f"# New language ({old} -> {new}): HAT and its BPE twin",
            "",
            f"Command: `{command}`",
            "",
            f"Models: HAT `{a.hat}`, twin `{a.twin}` with a {a.twin_vocab}-token BPE; rows of "
            f"{a.rows} x {a.row_bytes} bytes; continued runs: `hat-continue` recipe, "
            f"{a.replay:.0%} replay of {old}, wsd re-warm/re-decay; pretraining and scratch runs: "
            "cosine. Bits per byte on each language's held-out split (every 100th document).",
            "",
            f"| run | model | steps | bytes trained | training FLOPs | {new} bits/byte | {old} bits/byte |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in runs.items():
            lines.append(
                f"| {name} | {r['kind']} | {r['steps']} | {r['bytes_trained']:,.0f} | "
                f"{r['flops']:.2e} | {fmt(r[f'bpb_{new}'])} | {fmt(r[f'bpb_{old}'])} |"
            )
        t = res["target"]
        reach = t["flops_to_reach"]
        lines += [
            "",
            f"FLOPs each continued run needs to reach the continued twin's final {new} bits per "
            f"byte ({t['bpb']:.4f}):",
            "",
            "| run | FLOPs to reach it |",
            "|---|---:|",
            *(
                f"| {name} | {reached(reach[name], runs[name][f'bpb_{new}'])} |"
                for name in ("continue_hat", "continue_twin")
            ),
            f"| ratio twin / HAT | {fmt(t.get('twin_over_hat'), '.2f')} |",
            "",
            "Backbone positions per byte (words per byte for HAT, tokens per byte for the twin) on "
            "held-out text:",
            "",
            f"| model | {new} | {old} |",
            "|---|---:|---:|",
        ]
        for name, label in (
            ("continue_hat", "HAT (splitter: no vocabulary)"),
            ("continue_twin", f"twin, {old} tokenizer"),
            ("scratch_twin", f"twin, {new} tokenizer"),
        ):
            r, unit = runs[name], "word" if name.endswith("hat") else "token"
            cells = [per_byte(r[f"positions_per_byte_{lang}"], unit) for lang in (new, old)]
            lines.append(f"| {label} | {' | '.join(cells)} |")
        lines += ["", f"![bits per byte against training FLOPs]({figure.name})", ""]
        path = self.out / "report.md"
        path.write_text("\n".join(lines))
        logger.info(f"report: {path}")
        return path

    def figure(self, res: dict[str, Any]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a = self.args
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        colors = {"hat": "C0", "bpe": "C1"}  # HAT blue, twin orange
        lines = {"continue": "-", "scratch": ":"}  # continued solid, from scratch dotted
        for ax, lang in zip(axes, (a.new_label, a.old_label)):
            for name in RUNS[2:]:
                r = res["runs"][name]
                points = r["curve"][lang]
                if points:
                    xs, ys = zip(*points)
                    style = dict(color=colors[r["kind"]], ls=lines[name.split("_")[0]])
                    ax.plot(xs, ys, marker="o", ms=3, label=name, **style)
            ax.set(
                xlabel="training FLOPs of the run", ylabel="bits per byte", title=f"held-out {lang}"
            )
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        path = self.out / "bpb_vs_flops.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def reached(flops: float | None, final_bpb: float) -> str:
    return f"{flops:.2e}" if flops is not None else f"not reached ({final_bpb:.4f} at the end)"


def per_byte(value: float | None, unit: str) -> str:
    return "—" if not value else f"{value:.3f} ({1 / value:.2f} bytes/{unit})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (runs, data, report)")
    p.add_argument("--old", nargs="+", default=["builtin:sample"], help="old-language sources")
    p.add_argument("--new", nargs="+", default=["builtin:sample_es"], help="new-language sources")
    p.add_argument("--old-label", default="en")
    p.add_argument("--new-label", default="es")
    p.add_argument("--hat", default="tiny", help="HAT preset")
    p.add_argument("--twin", default="bpe_tiny", help="twin preset (its backbone is HAT's)")
    p.add_argument("--twin-vocab", type=int, default=2048, help="the twin's BPE vocabulary")
    p.add_argument("--pretrain-steps", type=int, default=400, help="HAT steps; twin: equal FLOPs")
    p.add_argument("--continue-steps", type=int, default=250, help="HAT steps; twin: equal FLOPs")
    p.add_argument("--row-bytes", type=int, default=512)
    p.add_argument("--rows", type=int, default=8, help="rows per step")
    p.add_argument("--replay", type=float, default=0.05, help="replay fraction of trained bytes")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: the paper's rule)")
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--checkpoint-interval", type=int, default=100)
    p.add_argument("--max-bytes", type=int, default=4_000_000, help="per language")
    p.add_argument("--doc-bytes", type=int, default=600, help="about this many bytes per document")
    p.add_argument("--tokenizer-bytes", type=int, default=2_000_000, help="text to train BPE on")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(asctime)s][%(name)s] %(message)s", level=logging.INFO)
    command = " ".join(["python scripts/experiments/new_language.py", *(argv or sys.argv[1:])])
    experiment = Experiment(args)
    experiment.run_all()
    return experiment.report(command)


if __name__ == "__main__":
    main()
