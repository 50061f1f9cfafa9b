"""Where the time of HAT's cached generation goes, per byte step: the compiled graphs, the
per-call cost of calling them (torch.compile's wrapper: dynamo's frame and AOTAutograd's
runtime), and the host's own work (the word tracker, the engine's bookkeeping, eager pooling
and backbone passes, the sampling loop), from one timed ``generate`` call.

    python scripts/experiments/generation_time_split.py --threads 1 --compile-step
    python scripts/experiments/generation_time_split.py --threads 1 --batch 32 --compile-step
    python scripts/experiments/generation_time_split.py --device cuda --compile-step --sync

It writes the built-in corpus's continuation of ``bench_generate.py``'s prompts (forced by
its ``ForceText``, whose cost is in "loop"). The parts are timed by wrapping the engine's
methods, so they nest: "graphs" holds "graph code" (inductor's generated code) and the
"wrapper" around it; "engine step" holds the graphs of a step and the host work around them.
On a GPU the graphs run asynchronously: without ``--sync`` their time is the launch, and the
wait lands wherever the host next reads a result (the new ids); ``--sync`` synchronises after
each graph call (each part its own time; the total a little slower). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: bench_generate

import bench_generate  # noqa: E402

import hat  # noqa: E402
from hat.generation import hat_engine, lean  # noqa: E402
from hat.splitter import PAD  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-bytes", type=int, default=64)
    p.add_argument("--new-bytes", type=int, default=256)
    p.add_argument("--compile-step", nargs="?", const=True, default=False, metavar="MODE")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--sync", action="store_true", help="synchronise after each graph call")
    return p.parse_args(argv)


class Timers:
    """Seconds spent in wrapped callables, by name (nested calls count in each)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.seconds: dict[str, float] = {}
        self.sync = sync
        self.undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, name: str, sync: bool = False) -> None:
        original = getattr(owner, attr)
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = original(*args, **kwargs)
            if sync:
                self.sync()
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            return out

        setattr(owner, attr, timed)
        self.undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self.undo):
            setattr(owner, attr, original)


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = hat.HATForCausalLM.from_name(args.preset).to(device, getattr(torch, args.dtype))
    model.eval()
    pairs = bench_generate.passages(args.batch, args.prompt_bytes, args.new_bytes)
    force = bench_generate.ForceText([list(t.encode()) for _, t in pairs], args.device, PAD)
    force.per_row = False
    steps = force.ids.shape[1]
    kwargs = dict(
        max_new_tokens=steps,
        logits_processor=[force],
        compile_step=args.compile_step,
        backbone_wait=1,
    )
    prompts = [prompt for prompt, _ in pairs]
    model.generate(prompts, **kwargs)  # warm-up: compiles, fills allocator caches

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    timers = Timers(sync)
    engine = hat_engine.HATCachedEngine
    timers.wrap(lean.StaticStep, "__call__", "graphs", sync=args.sync)
    try:  # inductor's generated code, inside the graph calls
        from torch._inductor.output_code import CompiledFxGraph

        timers.wrap(CompiledFxGraph, "__call__", "graph code")
    except ImportError:  # another torch: no split of the wrapper
        pass
    for attr, name in [
        ("__init__", "engine init"),
        ("prefill", "prefill"),
        ("step", "engine step"),
        ("_backbone_steps", "word passes"),
        ("_pool", "eager pooling"),
        ("observe", "word tracker"),
    ]:
        timers.wrap(engine, attr, name)
    try:
        sync()
        start = time.perf_counter()
        model.generate(prompts, **kwargs)
        sync()
        total = time.perf_counter() - start
    finally:
        timers.restore()
    s = timers.seconds
    us = {name: round(t / steps * 1e6, 1) for name, t in s.items()}
    us["total"] = round(total / steps * 1e6, 1)
    if "graph code" in s:
        us["wrapper"] = round((s["graphs"] - s["graph code"]) / steps * 1e6, 1)
    host = total - s.get("graphs", 0.0) - s.get("prefill", 0.0) - s.get("engine init", 0.0)
    us["host, outside graphs, prefill and init"] = round(host / steps * 1e6, 1)
    return {
        "preset": args.preset,
        "batch": args.batch,
        "device": args.device if device.type == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "compile_step": args.compile_step,
        "steps": steps,
        "sync": args.sync,
        "us_per_step": dict(sorted(us.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    main()
