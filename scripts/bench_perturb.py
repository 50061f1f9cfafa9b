"""Perturbation speed: MB/s on one long text and texts/s on 1 KB documents, for every
perturbation in ``hat.perturb.PERTURBATIONS``, against the speed of scoring the same
documents with the ``small`` HAT (the step perturbations must never slow down). Prints JSON.

    python scripts/bench_perturb.py                    # ~1 MB texts; about a minute on a CPU
    python scripts/bench_perturb.py --mb 4 --repeats 5 --output bench_perturb.json
    python scripts/bench_perturb.py --no-score         # perturbations only

Inputs come from the built-in corpus: ``english`` (Jane Austen, ASCII but for a few
characters) and ``mixed`` (the same text with accented Latin, German, Cyrillic, Japanese and
emoji sentences spliced in every few lines: a third of its bytes are non-ASCII). One thread
(numpy runs these on one core). Throughput counts the UTF-8 bytes of the input.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import hat
from hat.perturb import PERTURBATIONS

CORPUS = Path(hat.__file__).parent / "assets" / "sample_corpus.txt"
FOREIGN = [
    "Über den Wolken muss die Freiheit wohl grenzenlos sein, sagte der Bäcker aus Köln.",
    "Le garçon a mangé une crème brûlée à Noël, déjà très fâché.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "日本語のテキストと漢字、ひらがな、カタカナ。",
    "Emoji 🥧👩‍👩‍👧🇸🇪 and naïve café façades.",
]


def inputs(megabytes: float) -> dict[str, str]:
    english = CORPUS.read_text(encoding="utf-8")
    size = int(megabytes * 1e6)
    english = (
        (english * (size // len(english.encode()) + 1)).encode()[:size].decode(errors="ignore")
    )
    lines = english.split("\n")
    mixed = "\n".join(
        line + (" " + FOREIGN[i % len(FOREIGN)] * 3 if i % 2 == 0 else "")
        for i, line in enumerate(lines)
    )
    mixed = mixed.encode()[:size].decode(errors="ignore")
    return {"english": english, "mixed": mixed}


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def documents(text: str, size: int = 1024) -> list[str]:
    data = text.encode()
    return [data[i : i + size].decode(errors="ignore") for i in range(0, len(data), size)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=1.0, help="size of each long input (MB)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--docs", type=int, default=1000, help="1 KB documents per texts/s run")
    p.add_argument("--no-score", action="store_true", help="skip the scoring baseline")
    p.add_argument("--score-docs", type=int, default=32, help="1 KB documents scored")
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)

    results: dict = {
        "device": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), 1 thread",
        "numpy": np.__version__,
        "rate": args.rate,
        "perturbations": {},
    }
    texts = inputs(args.mb)
    for name, fn in PERTURBATIONS.items():
        row = {}
        for kind, text in texts.items():
            size = len(text.encode())
            seconds = best_seconds(lambda fn=fn, text=text: fn(text, args.rate, 0), args.repeats)
            row[f"{kind}_MB_s"] = round(size / seconds / 1e6, 2)
            docs = documents(text)[: args.docs]
            seconds = best_seconds(
                lambda fn=fn, docs=docs: [fn(d, args.rate, (0, i)) for i, d in enumerate(docs)],
                args.repeats,
            )
            row[f"{kind}_1KB_docs_s"] = round(len(docs) / seconds)
        results["perturbations"][name] = row
        print(name, row, flush=True)

    if not args.no_score:
        torch.manual_seed(0)
        model = hat.HATForCausalLM.from_name("small").eval()
        docs = documents(texts["english"])[: args.score_docs]
        model.score(docs[:4])  # warm-up
        seconds = best_seconds(lambda: model.score(docs, batch_size=16), 1)
        results["score_small_hat_1KB_docs_s"] = round(len(docs) / seconds, 2)
        slowest = min(r["english_1KB_docs_s"] for r in results["perturbations"].values())
        results["slowest_perturbation_vs_scoring"] = round(
            slowest / results["score_small_hat_1KB_docs_s"], 1
        )
    char_level = [n for n in PERTURBATIONS if n != "misspell"]
    results["char_level_min_MB_s"] = min(
        min(results["perturbations"][n]["english_MB_s"], results["perturbations"][n]["mixed_MB_s"])
        for n in char_level
    )
    results["char_level_median_MB_s"] = statistics.median(
        results["perturbations"][n]["mixed_MB_s"] for n in char_level
    )
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
