"""Robustness to noisy input: how much each model loses when its input is perturbed.

    from hat.robustness import evaluate_robustness, prepare_documents
    result = evaluate_robustness(
        {"hat": hat_model, "bpe": twin},
        perturbations=["permute", "replace", "delete", "uppercase"],
        tasks={"hyperbaton": load_task("hyperbaton.json", limit=500)},
        documents={"held_out": prepare_documents(texts, max_bytes=100_000)},
        rate=0.1, seed=0,
    )
    result.write("out/")          # robustness.csv, robustness.json, robustness.png
    print(result.markdown())

Two measurements, each clean vs perturbed, for every model x perturbation (``hat-robustness``
is the command line):

1. **Task accuracy** (the HAT paper's protocol): the perturbation is applied to each
   question; every choice is scored by its log-likelihood given the (perturbed) question, as
   ``hat.evaluation.multiple_choice`` does. Measures ``accuracy`` and
   ``accuracy_byte_normalised`` (log-likelihood per byte of the choice).
2. **Bits per byte** on documents, with no labels: ``bpb_clean_given_perturbed`` scores each
   document's clean second half given its perturbed first half (the halves meet at a
   whitespace, so the second half starts a word); ``bpb_perturbed`` is the bits per byte of
   the whole perturbed document itself.

For each, ``degradation`` is the relative loss, positive when the perturbed input does worse:
``(clean - perturbed) / clean`` for accuracies, ``(perturbed - clean) / clean`` for bits per
byte. Its confidence interval is a seeded percentile bootstrap over the examples or documents:
every resample draws n of the n items with replacement and recomputes the clean and the
perturbed value on the *same* items (paired), and from them the degradation. The interval
narrows like 1 / sqrt(n) and has zero width when every item degrades alike (e.g. every
question answered right clean and wrong perturbed). All models and perturbations share the
resamples, so ``ratio`` (this model's degradation / the reference model's, by default the first
model) gets its interval the same way: "HAT loses k x less than its twin" with an error bar.

Everything is scored through ``model.score`` in batches (HAT and the BPE twin alike), long
documents in rolling windows of the same size for every model; a progress bar runs over
models x perturbations x batches.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hat.evaluation import MultipleChoiceExample, choices_correct, shared_window
from hat.modeling import PreTrainedLM
from hat.perturb import PAPER, WHOLE_TEXT, check, perturb_texts

# measure -> higher is better?
MEASURES = {
    "accuracy": True,
    "accuracy_byte_normalised": True,
    "bpb_clean_given_perturbed": False,
    "bpb_perturbed": False,
}
CSV_COLUMNS = [
    "model",  # the name given (hat-robustness: the model directory)
    "model_type",  # hat or bpe
    "params",  # parameter count
    "dataset",  # task name or document set
    "measure",  # one of MEASURES
    "perturbation",
    "rate",  # fraction of eligible characters changed (empty: whole-text perturbation)
    "seed",
    "n",  # examples or documents
    "clean",  # the measure on clean input
    "perturbed",  # the measure on perturbed input
    "degradation",  # relative loss, > 0 when worse: (clean - perturbed) / clean for accuracy
    "degradation_low",  # bootstrap confidence interval of the degradation
    "degradation_high",
    "ratio",  # degradation / the reference model's (empty for the reference itself)
    "ratio_low",  # bootstrap confidence interval of the ratio
    "ratio_high",
]


@dataclass
class RobustnessRow:
    """One model x dataset x measure x perturbation (the columns of ``CSV_COLUMNS``)."""

    model: str
    model_type: str
    params: int
    dataset: str
    measure: str
    perturbation: str
    rate: float | None
    seed: int
    n: int
    clean: float
    perturbed: float
    degradation: float
    degradation_low: float
    degradation_high: float
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None


@dataclass
class RobustnessResult:
    """The rows, and how they were made (``settings``)."""

    rows: list[RobustnessRow]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "columns": CSV_COLUMNS,
            "rows": [_finite(dataclasses.asdict(r)) for r in self.rows],
        }

    @classmethod
    def load(cls, path: str | Path) -> RobustnessResult:
        """Read a ``robustness.json`` back (e.g. to plot it again)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        reference = data["settings"].get("reference")
        for row in data["rows"]:
            # null stands for NaN (``_finite``) except in two places where None is meant: the
            # rate of a whole-text perturbation and the reference model's own ratio
            for key, value in row.items():
                meant = key == "rate" or (key.startswith("ratio") and row["model"] == reference)
                if value is None and not meant:
                    row[key] = math.nan
        return cls([RobustnessRow(**row) for row in data["rows"]], data["settings"])

    def write(self, output_dir: str | Path, plot: bool = True) -> list[Path]:
        """``robustness.csv``, ``robustness.json`` and (``plot``) ``robustness.png``."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / "robustness.csv", out / "robustness.json"
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in self.to_dict()["rows"]:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        written = [csv_path, json_path]
        if plot:
            written.append(plot_degradation(self, out / "robustness.png"))
        return written

    def markdown(self) -> str:
        """A markdown table: one line per row, degradation in % with its interval."""
        ref = self.settings.get("reference")
        lines = [
            f"| dataset | measure | perturbation | model | clean | perturbed | degradation "
            f"[{self.settings.get('confidence', 0.95):.0%} CI] | x {_short(ref) if ref else 'ref'} |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            ratio = (
                "" if r.ratio is None else f"{r.ratio:.2f} [{_f(r.ratio_low)}, {_f(r.ratio_high)}]"
            )
            lines.append(
                f"| {r.dataset} | {r.measure} | {r.perturbation} | {_short(r.model)} | "
                f"{r.clean:.4f} | {r.perturbed:.4f} | {_pct(r.degradation)} "
                f"[{_pct(r.degradation_low)}, {_pct(r.degradation_high)}] | {ratio} |"
            )
        return "\n".join(lines)


def _f(x: float | None) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{100 * x:+.1f} %"


def _short(name: str) -> str:
    """outputs/small/model -> small/model: the run names the model."""
    path = Path(name)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities become None (JSON null, an empty CSV cell)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


# ---- documents -------------------------------------------------------------------------------


def prepare_documents(
    texts: Iterable[str],
    max_bytes: int | None = 100_000,
    doc_bytes: int = 1024,
    min_bytes: int = 64,
) -> list[str]:
    """Cut texts into documents of at most ``doc_bytes`` UTF-8 bytes (at a whitespace where
    there is one in the second half of the piece, never inside a character), drop pieces under
    ``min_bytes`` (too short to halve), and stop after ``max_bytes`` bytes in all (None: all)."""
    docs, total = [], 0
    for text in texts:
        data = text.encode("utf-8")
        start = 0
        while start < len(data):
            end = min(start + doc_bytes, len(data))
            if end < len(data):
                space = max(data.rfind(b" ", start, end), data.rfind(b"\n", start, end))
                end = space if space > start + doc_bytes // 2 else end
                while end > start and (data[end] & 0xC0) == 0x80:  # a continuation byte
                    end -= 1
            piece = data[start:end].decode("utf-8").strip()
            start = end
            if len(piece.encode()) < min_bytes:
                continue
            docs.append(piece)
            total += len(piece.encode())
            if max_bytes is not None and total >= max_bytes:
                return docs
    return docs


def split_halves(doc: str) -> tuple[str, str]:
    """``(first, second)`` with ``first + second == doc``: cut at the whitespace nearest the
    middle (so ``second`` starts with it, as a new word does), else at the middle character."""
    middle = len(doc) // 2
    left = max(doc.rfind(" ", 0, middle + 1), doc.rfind("\n", 0, middle + 1))
    right = min((i for i in (doc.find(" ", middle), doc.find("\n", middle)) if i >= 0), default=-1)
    cuts = [i for i in (left, right) if 0 < i < len(doc)]
    cut = min(cuts, key=lambda i: abs(i - middle)) if cuts else middle
    return doc[:cut], doc[cut:]


# ---- bootstrap -------------------------------------------------------------------------------


@dataclass
class _Values:
    """Per-item numerators and denominators: the measure is sum(num) / sum(den)."""

    num: np.ndarray
    den: np.ndarray

    def value(self) -> float:
        return float(self.num.sum() / self.den.sum())

    def resampled(self, idx: np.ndarray) -> np.ndarray:
        return self.num[idx].sum(axis=1) / self.den[idx].sum(axis=1)


def relative_degradation(clean: Any, perturbed: Any, higher_is_better: bool) -> Any:
    """``(clean - perturbed) / clean`` if higher is better, else ``(perturbed - clean) / clean``
    (NaN where ``clean`` is 0)."""
    clean, perturbed = np.asarray(clean, dtype=float), np.asarray(perturbed, dtype=float)
    loss = clean - perturbed if higher_is_better else perturbed - clean
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(clean != 0, loss / np.where(clean != 0, clean, 1), np.nan)


def bootstrap_indices(n: int, n_bootstrap: int, seed: Any) -> np.ndarray:
    """``[n_bootstrap, n]`` item indices drawn with replacement (seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of the finite samples (NaN, NaN if none)."""
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return math.nan, math.nan
    tail = 50 * (1 - confidence)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


# ---- scoring ---------------------------------------------------------------------------------


def _num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def _score(
    model: PreTrainedLM,
    texts: Sequence[str],
    contexts: Sequence[str] | None,
    batch_size: int,
    window: int,
    bar: tqdm,
) -> np.ndarray:
    """``model.score`` (rolling windows of ``window`` bytes) in batches of similar length,
    one progress step per batch; scores in the input order."""
    contexts = contexts if contexts is not None else [""] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]) - len(contexts[i]))
    scores = np.zeros(len(texts))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        values = model.score(
            [texts[i] for i in chunk],
            [contexts[i] for i in chunk],
            batch_size=batch_size,
            rolling=True,
            window_bytes=window,
        )
        scores[chunk] = values
        bar.update(1)
    return scores


def _utf8_len(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(t.encode("utf-8")) for t in texts], dtype=float)


def _task_values(
    model: PreTrainedLM,
    examples: Sequence[MultipleChoiceExample],
    inputs: Sequence[str],
    separator: str,
    batch_size: int,
    window: int,
    bar: tqdm,
) -> dict[str, _Values]:
    texts = [separator + c for ex in examples for c in ex.choices]
    contexts = [inp for inp, ex in zip(inputs, examples) for _ in ex.choices]
    scores = _score(model, texts, contexts, batch_size, window, bar).tolist()
    correct, correct_norm = choices_correct(examples, scores, separator)
    ones = np.ones(len(examples))
    return {
        "accuracy": _Values(np.array(correct, dtype=float), ones),
        "accuracy_byte_normalised": _Values(np.array(correct_norm, dtype=float), ones),
    }


def _document_values(
    model: PreTrainedLM,
    firsts: Sequence[str],
    seconds: Sequence[str],
    docs: Sequence[str],
    batch_size: int,
    window: int,
    bar: tqdm,
) -> dict[str, _Values]:
    """bits of the clean second halves given ``firsts``; bits of ``docs`` themselves."""
    given = _score(model, seconds, firsts, batch_size, window, bar)
    whole = _score(model, docs, None, batch_size, window, bar)
    return {
        "bpb_clean_given_perturbed": _Values(-given / math.log(2), _utf8_len(seconds)),
        "bpb_perturbed": _Values(-whole / math.log(2), _utf8_len(docs)),
    }


# ---- the evaluation ---------------------------------------------------------------------------


def evaluate_robustness(
    models: Mapping[str, PreTrainedLM],
    perturbations: Sequence[str] = PAPER,
    *,
    tasks: Mapping[str, Sequence[MultipleChoiceExample]] | None = None,
    documents: Mapping[str, Sequence[str]] | None = None,
    rate: float = 0.1,
    seed: int = 0,
    batch_size: int = 16,
    window_bytes: int | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    reference: str | None = None,
    separator: str = " ",
    progress: bool = True,
) -> RobustnessResult:
    """Every model on every task and document set, clean and under every perturbation (see
    the module's docstring for the measures). Perturbed inputs are made once, seeded by
    ``(seed, dataset, item)``, and shared by all models; ``documents`` are used as given (cut
    long texts first, e.g. with ``prepare_documents``). ``reference`` (default: the first
    model) is what ``ratio`` divides by. ``window_bytes``: the rolling window for every model
    (default: the smallest context among them)."""
    tasks, documents = dict(tasks or {}), dict(documents or {})
    _validate(models, perturbations, tasks, documents, rate, seed, n_bootstrap, confidence)
    reference = reference if reference is not None else next(iter(models))
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models: {', '.join(models)}")
    window = shared_window(models, window_bytes)

    # perturbed inputs, made once for all models
    halves = {name: [split_halves(d) for d in docs] for name, docs in documents.items()}
    task_inputs: dict[str, dict[str, list[str]]] = {}
    doc_inputs: dict[str, dict[str, tuple[list[str], list[str]]]] = {}
    for k, (name, examples) in enumerate(tasks.items()):
        clean = [ex.input for ex in examples]
        task_inputs[name] = {"clean": clean}
        for p in perturbations:
            task_inputs[name][p] = perturb_texts(clean, p, rate, (seed, k))
    for k, (name, docs) in enumerate(documents.items(), start=len(tasks)):
        firsts = [first for first, _ in halves[name]]
        doc_inputs[name] = {"clean": (firsts, list(docs))}
        for p in perturbations:
            doc_inputs[name][p] = (
                perturb_texts(firsts, p, rate, (seed, k, 0)),
                perturb_texts(list(docs), p, rate, (seed, k, 1)),
            )

    steps_per_condition = sum(
        _num_batches(sum(len(ex.choices) for ex in examples), batch_size)
        for examples in tasks.values()
    ) + sum(2 * _num_batches(len(docs), batch_size) for docs in documents.values())
    total = len(models) * (1 + len(perturbations)) * steps_per_condition
    values: dict[tuple[str, str, str], dict[str, _Values]] = {}  # (model, dataset, cond) -> ...
    with tqdm(total=total, desc="robustness", unit="batch", disable=not progress) as bar:
        for model_name, model in models.items():
            for condition in ("clean", *perturbations):
                bar.set_postfix_str(f"{_short(model_name)} {condition}")
                for name, examples in tasks.items():
                    values[model_name, name, condition] = _task_values(
                        model,
                        examples,
                        task_inputs[name][condition],
                        separator,
                        batch_size,
                        window,
                        bar,
                    )
                for name in documents:
                    firsts, docs = doc_inputs[name][condition]
                    seconds = [second for _, second in halves[name]]
                    values[model_name, name, condition] = _document_values(
                        model, firsts, seconds, docs, batch_size, window, bar
                    )

    rows = []
    datasets = {
        **{n: len(e) for n, e in tasks.items()},
        **{n: len(d) for n, d in documents.items()},
    }
    for k, (dataset, n) in enumerate(datasets.items()):
        idx = bootstrap_indices(n, n_bootstrap, (seed, k))
        for measure in values[reference, dataset, "clean"]:
            better_high = MEASURES[measure]
            for p in perturbations:
                samples: dict[str, np.ndarray] = {}
                for model_name in models:
                    clean = values[model_name, dataset, "clean"][measure]
                    perturbed = values[model_name, dataset, p][measure]
                    degradation = float(
                        relative_degradation(clean.value(), perturbed.value(), better_high)
                    )
                    samples[model_name] = relative_degradation(
                        clean.resampled(idx), perturbed.resampled(idx), better_high
                    )
                    low, high = percentile_interval(samples[model_name], confidence)
                    rows.append(
                        RobustnessRow(
                            model=model_name,
                            model_type=models[model_name].config.model_type,
                            params=models[model_name].num_parameters(),
                            dataset=dataset,
                            measure=measure,
                            perturbation=p,
                            rate=None if p in WHOLE_TEXT else rate,
                            seed=seed,
                            n=n,
                            clean=clean.value(),
                            perturbed=perturbed.value(),
                            degradation=degradation,
                            degradation_low=low,
                            degradation_high=high,
                        )
                    )
                _add_ratios(rows[-len(models) :], samples, reference, confidence)

    settings = {
        "models": {m: models[m].config.model_type for m in models},
        "perturbations": list(perturbations),
        "rate": rate,
        "seed": seed,
        "tasks": {n: len(e) for n, e in tasks.items()},
        "documents": {
            n: {"documents": len(d), "bytes": int(_utf8_len(d).sum())} for n, d in documents.items()
        },
        "window_bytes": window,
        "batch_size": batch_size,
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "reference": reference,
        "separator": separator,
    }
    return RobustnessResult(rows, settings)


def _add_ratios(
    rows: list[RobustnessRow], samples: dict[str, np.ndarray], reference: str, confidence: float
) -> None:
    """Each model's degradation over the reference's, on the same resamples."""
    ref = next(r for r in rows if r.model == reference)
    for row in rows:
        if row.model == reference:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            row.ratio = row.degradation / ref.degradation if ref.degradation else math.nan
            ratios = samples[row.model] / samples[reference]
        row.ratio_low, row.ratio_high = percentile_interval(ratios, confidence)


def _validate(
    models: Mapping[str, PreTrainedLM],
    perturbations: Sequence[str],
    tasks: dict[str, Sequence[MultipleChoiceExample]],
    documents: dict[str, Sequence[str]],
    rate: float,
    seed: int,
    n_bootstrap: int,
    confidence: float,
) -> None:
    if not models:
        raise ValueError("no models: give at least one")
    if isinstance(perturbations, str) or not perturbations:
        raise ValueError(f"perturbations must be a non-empty list of names, got {perturbations!r}")
    for p in perturbations:
        check(p, rate)
    if len(set(perturbations)) != len(perturbations):
        raise ValueError(f"perturbations lists a name twice: {list(perturbations)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if not tasks and not documents:
        raise ValueError("nothing to evaluate: give tasks and/or documents")
    if set(tasks) & set(documents):
        raise ValueError(f"a task and a document set share a name: {set(tasks) & set(documents)}")
    for name, examples in tasks.items():
        if not examples:
            raise ValueError(f"task {name!r} has no examples")
        for i, ex in enumerate(examples):
            if not ex.choices or not 0 <= ex.answer < len(ex.choices):
                raise ValueError(f"task {name!r} example {i} needs choices and a valid answer")
    for name, docs in documents.items():
        if not docs or not all(d.strip() for d in docs):
            raise ValueError(f"document set {name!r} is empty or holds an empty document")
    if n_bootstrap < 1 or not 0 < confidence < 1:
        raise ValueError("n_bootstrap must be >= 1 and confidence in (0, 1)")


# ---- figure ----------------------------------------------------------------------------------


def degradation_figure(result: RobustnessResult):  # -> matplotlib.figure.Figure
    """Relative degradation (%) with its confidence interval: one panel per dataset x
    measure, perturbations along x, one bar per model. A bare ``Figure`` (no pyplot state,
    no backend change): a notebook shows it, ``plot_degradation`` saves it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "the figure needs matplotlib: pip install 'hat-lm[plot]' (or plot=false)"
        ) from None

    panels = list(dict.fromkeys((r.dataset, r.measure) for r in result.rows))
    models = list(dict.fromkeys(r.model for r in result.rows))
    perturbations = list(dict.fromkeys(r.perturbation for r in result.rows))
    cols = min(2, len(panels))
    rows_n = -(-len(panels) // cols)
    fig = Figure(figsize=(5.5 * cols, 3.4 * rows_n + 0.4), constrained_layout=True)
    axes = fig.subplots(rows_n, cols, squeeze=False)
    width = 0.8 / len(models)
    by_key = {(r.dataset, r.measure, r.perturbation, r.model): r for r in result.rows}
    for ax, (dataset, measure) in zip(axes.flat, panels):
        for m, model in enumerate(models):
            picked = [by_key[dataset, measure, p, model] for p in perturbations]
            y = np.array([100 * r.degradation for r in picked], dtype=float)
            low = np.array([100 * r.degradation_low for r in picked], dtype=float)
            high = np.array([100 * r.degradation_high for r in picked], dtype=float)
            err = np.nan_to_num(np.stack([y - low, high - y]).clip(min=0))
            x = np.arange(len(perturbations)) + (m - (len(models) - 1) / 2) * width
            label = f"{_short(model)} ({picked[0].model_type})"
            ax.bar(x, y, width, yerr=err, capsize=3, label=label)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(np.arange(len(perturbations)), perturbations, rotation=20)
        ax.set_title(f"{dataset}: {measure}", fontsize=10)
        ax.set_ylabel("degradation (%)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    settings = result.settings
    fig.suptitle(
        f"relative degradation, perturbed vs clean (rate {settings.get('rate')}, "
        f"{settings.get('confidence', 0.95):.0%} bootstrap CI; > 0: worse)",
        fontsize=11,
    )
    return fig


def plot_degradation(result: RobustnessResult, path: str | Path) -> Path:
    """Save ``degradation_figure(result)`` (PNG, or whatever the suffix says)."""
    path = Path(path)
    degradation_figure(result).savefig(path, dpi=110)
    return path
