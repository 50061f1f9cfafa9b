"""What letting rows wait for a shared backbone pass would buy HAT's batched generation.

By default every row of a batch writes one byte per step, so a row that finishes a word needs
the backbone at once: at batch 32 some row finishes a word at ~99 % of byte steps and the
backbone runs nearly every step for ~6 rows (``bench_generate.py`` reports it as
``"backbone"``). With ``generate(backbone_wait=K)`` a row that finished a word waits (writes
nothing) until K rows wait, and one backbone pass serves them all; the others keep writing
meanwhile (``bench_generate.py --backbone-wait K`` measures it). This script predicts it from
counts and two costs, which is how K was chosen; the measurement is in BENCHMARKS.md ("Batched
generation": the prediction overstates the gain where a pass of many rows costs more than a
pass of few, e.g. on a CPU at ``1b``).

This script counts both schedules on real text (the passages ``bench_generate.py`` writes,
split by the preset's splitter): byte steps (each runs the encoder and decoder on the whole
batch, waiting rows included) and backbone passes, for waiting policies "run the backbone
once at least K rows wait (or no row can write)". With the cost of a byte step and of a
backbone pass it predicts the time of each policy against today's (K = 1). ``--measure``
times both costs on this machine: one cached ``generate`` call of the preset at the batch
size, the engine's backbone passes timed apart from the rest of its steps.

    python scripts/experiments/waiting_schedule.py --preset small --measure --threads 1
    python scripts/experiments/waiting_schedule.py --preset 1b --measure --threads 2 --measure-bytes 32
    python scripts/experiments/waiting_schedule.py --byte-step-ms 24.2 --pass-ms 647

Prints JSON. The costs are assumed not to depend on how many rows a step or pass serves
(dense batched steps; at large presets a pass is bound by reading the backbone's weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: bench_generate

from bench_generate import new_word_starts, passages  # noqa: E402

import hat  # noqa: E402
from hat.generation import hat_engine  # noqa: E402
from hat.splitter import EOD, make_splitter  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="small", help="HAT preset (its splitter; --measure)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-bytes", type=int, default=256)
    p.add_argument("--prompt-bytes", type=int, default=64)
    p.add_argument("--policies", default="1,4,8,16,24,32", help="K values (1: today)")
    p.add_argument("--measure", action="store_true", help="time both costs here")
    p.add_argument("--measure-bytes", type=int, default=64, help="new bytes per row timed")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--byte-step-ms", type=float, help="cost of a byte step (without --measure)")
    p.add_argument("--pass-ms", type=float, help="cost of a backbone pass (without --measure)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return p.parse_args()


def word_ends(preset: str, batch: int, prompt_bytes: int, new_bytes: int) -> list[list[bool]]:
    """Per row, per new byte: does writing it finish a word (it starts the next one)?"""
    cfg = hat.HATConfig.from_name(preset)
    splitter = make_splitter(cfg.splitter, cfg.max_word_bytes)
    rows = []
    for prompt, text in passages(batch, prompt_bytes, new_bytes):
        starts = new_word_starts(splitter, prompt, text)
        rows.append([i in starts for i in range(len(text.encode()))])
    return rows


def schedule(ends: list[list[bool]], k: int) -> tuple[int, int]:
    """(byte steps, backbone passes) when the backbone runs once >= k rows wait for it (or
    no row can write). A row whose next byte finishes a word waits for a pass before writing
    it (the byte's decoder needs the guide of the word it starts); k = 1 is today's schedule."""
    todo = [len(row) for row in ends]
    written, cleared = [0] * len(ends), [False] * len(ends)
    steps = passes = 0
    while True:
        rows = [r for r in range(len(ends)) if written[r] < todo[r]]
        if not rows:
            return steps, passes
        waiting = [r for r in rows if ends[r][written[r]] and not cleared[r]]
        if waiting and (len(waiting) >= k or len(waiting) == len(rows)):
            passes += 1
            for r in waiting:
                cleared[r] = True
            waiting = []
        steps += 1
        for r in rows:
            if r not in waiting:
                written[r] += 1
                cleared[r] = False


def measure(args: argparse.Namespace) -> dict:
    """Mean ms of a backbone pass and of the rest of a cached step (byte step), timed in one
    ``generate`` call of the preset (random init, sampled text) at the batch size."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = hat.HATForCausalLM.from_name(args.preset).to(args.device, dtype).eval()
    prompts = [p for p, _ in passages(args.batch, args.prompt_bytes, 0)]
    spent = {"pass": 0.0, "passes": 0, "step": 0.0, "steps": 0}
    engine = hat_engine.HATCachedEngine
    backbone_steps, step = engine._backbone_steps, engine.step

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed_backbone_steps(self, finished):  # noqa: ANN001, ANN202
        sync()
        t = time.perf_counter()
        backbone_steps(self, finished)
        sync()
        spent["pass"] += time.perf_counter() - t
        spent["passes"] += 1

    def timed_step(self, tokens):  # noqa: ANN001, ANN202
        sync()
        t = time.perf_counter()
        out = step(self, tokens)
        sync()
        spent["step"] += time.perf_counter() - t
        spent["steps"] += 1
        return out

    engine._backbone_steps, engine.step = timed_backbone_steps, timed_step
    try:
        with torch.inference_mode():
            kwargs = {"do_sample": True, "seed": 0, "suppress_tokens": [EOD], "backbone_wait": 1}
            model.generate(prompts, max_new_tokens=4, **kwargs)  # warm-up
            spent.update(dict.fromkeys(spent, 0))
            model.generate(prompts, max_new_tokens=args.measure_bytes, **kwargs)
    finally:
        engine._backbone_steps, engine.step = backbone_steps, step
    return {
        "byte_step_ms": round(1e3 * (spent["step"] - spent["pass"]) / spent["steps"], 3),
        "pass_ms": round(1e3 * spent["pass"] / max(spent["passes"], 1), 3),
        "steps_timed": spent["steps"],
        "passes_timed": spent["passes"],
    }


def main() -> None:
    args = parse_args()
    if args.measure:
        costs = measure(args)
    elif args.byte_step_ms is not None and args.pass_ms is not None:
        costs = {"byte_step_ms": args.byte_step_ms, "pass_ms": args.pass_ms}
    else:
        raise SystemExit("give --measure, or both --byte-step-ms and --pass-ms")
    ends = word_ends(args.preset, args.batch, args.prompt_bytes, args.new_bytes)

    def seconds(steps: int, passes: int) -> float:
        return (steps * costs["byte_step_ms"] + passes * costs["pass_ms"]) / 1e3

    today, results = seconds(*schedule(ends, 1)), []
    for k in (int(x) for x in args.policies.split(",")):
        steps, passes = schedule(ends, k)
        results.append(
            {"k": k, "byte_steps": steps, "passes": passes,
             "seconds": round(seconds(steps, passes), 3),
             "speedup_over_today": round(today / seconds(steps, passes), 2)}
        )  # fmt: skip
    report = {
        "preset": args.preset,
        "batch": args.batch,
        "new_bytes_per_row": min(map(len, ends)),
        "device": args.device if not args.measure else f"{args.device} ({args.dtype})",
        "threads": args.threads or torch.get_num_threads(),
        "costs": costs,
        "policies": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
