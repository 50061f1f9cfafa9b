"""lm-evaluation-harness adapter overhead: ``loglikelihood`` requests/s through ``--model hat``
(``HATEvalLM``) against calling ``model.score`` directly on the same requests, HAT ``small``
and its twin ``bpe_small``, measured in the same run. Prints JSON.

    python scripts/bench_lm_eval.py                      # CPU: 256 requests, 3 rounds
    python scripts/bench_lm_eval.py --device cuda --requests 2048 --batch-size 64

The requests are multiple-choice shaped (lm-eval's most common kind): a context of about
``--context-bytes`` from the built-in corpus and a continuation of one to four words; four
continuations share each context. Weights are random (speed does not depend on training).
Rounds interleave the three ways (adapter, ``score``, ``score(return_greedy=True)``) so
that load on a shared machine hits them alike; the best round of each is reported, in wall
time and in this process's CPU time. ``adapter / score`` is the adapter's cost over what a user
of ``score`` pays (it also computes lm-eval's greedy flag); ``adapter / score_greedy`` its cost
over the same work. On a machine shared with other jobs these end-to-end ratios move by tens
of percent from round to round, so the adapter's own cost is also measured inside each
adapter call, which noise cannot split: the time spent outside the ``score`` calls it makes
(``adapter_overhead``: that time over the time in ``score``; median of the rounds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance

import hat
from hat.integrations.lm_eval import HATEvalLM

CORPUS = Path(hat.__file__).parent / "assets" / "sample_corpus.txt"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--context-bytes", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hat", default="small", help="HAT preset")
    p.add_argument("--bpe", default="bpe_small", help="BPE twin preset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output", help="also write the JSON here")
    return p.parse_args()


def requests(n: int, context_bytes: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs: 4 continuations (1-4 words) per corpus context."""
    text = CORPUS.read_text(encoding="utf-8")
    words = text.split()
    pairs = []
    for i in range(0, n, 4):
        start = text.find(" ", 1000 + 7919 * i) + 1
        context = text[start : start + context_bytes].rsplit(" ", 1)[0]
        for j in range(min(4, n - i)):
            at = (131 * i + 17 * j) % (len(words) - 8)
            pairs.append((context, " " + " ".join(words[at : at + 1 + j])))
    return pairs


def models(args: argparse.Namespace) -> dict[str, hat.modeling.PreTrainedLM]:
    torch.manual_seed(0)
    hat_model = hat.HATForCausalLM(hat.HATConfig.from_name(args.hat))
    cfg = hat.BPEConfig.from_name(args.bpe)
    with tempfile.TemporaryDirectory() as tmp:
        tok = hat.BPETokenizer.train(
            [CORPUS.read_text(encoding="utf-8")], cfg.vocab_size, Path(tmp) / "tok.model"
        )
        bpe_model = hat.BPEForCausalLM(cfg, tok)
    return {
        name: m.to(args.device).eval() for name, m in ((args.hat, hat_model), (args.bpe, bpe_model))
    }


def timed(device: str, fn) -> tuple[float, float]:  # noqa: ANN001
    """-> (wall seconds, CPU seconds of this process)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


class TimedScore:
    """Stands in for ``model.score`` during an adapter call; adds up the time spent in it."""

    def __init__(self, score) -> None:  # noqa: ANN001
        self.score, self.wall, self.cpu = score, 0.0, 0.0

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        start, cpu = time.perf_counter(), time.process_time()
        out = self.score(*args, **kwargs)
        self.wall += time.perf_counter() - start
        self.cpu += time.process_time() - cpu
        return out


def adapter_overhead(model, lm, instances, device: str) -> tuple[float, float]:  # noqa: ANN001
    """One adapter call: (time outside score / time in score), wall and CPU."""
    inner = model.score = TimedScore(model.score)  # an instance attribute shadows the method
    try:
        wall, cpu = timed(device, lambda: lm.loglikelihood(instances, disable_tqdm=True))
    finally:
        del model.score
    return (wall - inner.wall) / inner.wall, (cpu - inner.cpu) / inner.cpu


def bench(model, pairs: list[tuple[str, str]], args: argparse.Namespace) -> dict:  # noqa: ANN001
    lm = HATEvalLM(model, batch_size=args.batch_size)
    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    contexts, continuations = [c for c, _ in pairs], [x for _, x in pairs]
    ways = {
        "adapter": lambda: lm.loglikelihood(instances, disable_tqdm=True),
        "score": lambda: model.score(continuations, contexts, batch_size=args.batch_size),
        "score_greedy": lambda: model.score(
            continuations, contexts, batch_size=args.batch_size, return_greedy=True
        ),
    }
    ways["score"]()  # warm up
    best = {name: float("inf") for name in ways}
    best_cpu = dict(best)
    overheads = []
    for _ in range(args.rounds):
        for name, fn in ways.items():
            wall, cpu = timed(args.device, fn)
            best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu)
        overheads.append(adapter_overhead(model, lm, instances, args.device))
    # the adapter's answers are score's (lm-eval moves no whitespace here: contexts end in a word)
    adapter = lm.loglikelihood(instances, disable_tqdm=True)
    direct = model.score(continuations, contexts, batch_size=args.batch_size, return_greedy=True)
    worst = max(abs(a[0] - b[0]) for a, b in zip(adapter, direct))
    rates = {f"{name}_requests_per_s": len(pairs) / t for name, t in best.items()}
    return {
        "params": model.num_parameters(),
        **{f"{name}_s": t for name, t in best.items()},
        **{f"{name}_cpu_s": t for name, t in best_cpu.items()},
        **rates,
        "adapter_over_score": best["adapter"] / best["score"],
        "adapter_over_score_greedy": best["adapter"] / best["score_greedy"],
        "adapter_over_score_cpu": best_cpu["adapter"] / best_cpu["score"],
        "adapter_over_score_greedy_cpu": best_cpu["adapter"] / best_cpu["score_greedy"],
        "adapter_overhead": statistics.median(w for w, _ in overheads),
        "adapter_overhead_cpu": statistics.median(c for _, c in overheads),
        "max_abs_logprob_difference": worst,
        "greedy_flags_equal": [a[1] for a in adapter] == [b[1] for b in direct],
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = requests(args.requests, args.context_bytes)
    results = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "requests": len(pairs),
        "mean_context_bytes": sum(len(c.encode()) for c, _ in pairs) / len(pairs),
        "mean_continuation_bytes": sum(len(x.encode()) for _, x in pairs) / len(pairs),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "models": {name: bench(m, pairs, args) for name, m in models(args).items()},
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
