"""What replaying the compiled generation step without torch.compile's per-call wrapper would
buy on a GPU (an experiment for issue 14; needs CUDA, never run yet).

``compile_step=True`` on a GPU compiles the static-shape steps with ``mode="reduce-overhead"``:
each call goes through dynamo's frame and AOTAutograd's runtime wrapper (~120 us a call for
HAT's byte graph on the 2-core CPU VM: BENCHMARKS.md, "Where a generation step's time goes")
before CUDA graph trees replay the kernels. vLLM instead captures the decode step in a
``torch.cuda.CUDAGraph`` once and replays it directly: per call, the arguments are copied into
the graph's input buffers and ``replay()`` launches everything.

This script measures that on the engines as they are: it replaces ``StaticStep.__call__`` for
one ``generate`` call with a version that runs the compiled function (``mode="default"``, no
graph trees) once per argument shape, captures it, and replays the capture for every later
call of that shape (a fresh capture when the caches grow: ``StaticStep.reshaped``). Within one
``generate`` call the tensors a step reads besides its arguments (caches, the ring, the
padding, the chooser's tables) keep their addresses, so the capture stays valid for that call;
the product would need that across calls too. It reports cached bytes/s of ``compile_step=True``
(CUDA graph trees) and of the hand capture, taking turns, and whether they wrote the same text.

    python scripts/experiments/cuda_graph_capture.py --batch-sizes 1,32 --new-bytes 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: bench_generate

import bench_generate  # noqa: E402

from hat.generation import lean  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--new-bytes", type=int, default=256)
    p.add_argument("--prompt-bytes", type=int, default=64)
    p.add_argument("--hat", default="small")
    p.add_argument("--bpe", default="bpe_small")
    p.add_argument("--models", default="hat,bpe")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output")
    args = p.parse_args(argv)
    args.device, args.text, args.quick = "cuda", "greedy", False  # what bench_generate reads
    return args


class CapturedCalls:
    """``StaticStep.__call__`` replaced: the first call of each argument shape runs the
    compiled function and captures it; later calls copy their arguments in and replay."""

    def __init__(self) -> None:
        self.original = lean.StaticStep.__call__
        self.original_reshaped = lean.StaticStep.reshaped
        self.captures = 0

    def __enter__(self) -> CapturedCalls:
        lean.StaticStep.__call__ = lambda step, *args: self._call(step, *args)

        def forget(step: Any) -> None:  # the caches grew: the captures read the old ones
            step.__dict__.pop("captured", None)
            self.original_reshaped(step)

        lean.StaticStep.reshaped = forget
        return self

    def __exit__(self, *exc: object) -> None:
        lean.StaticStep.__call__ = self.original
        lean.StaticStep.reshaped = self.original_reshaped

    def _call(self, step: Any, *args: torch.Tensor | None) -> Any:
        captured = step.__dict__.setdefault("captured", {})
        key = tuple(None if a is None else (tuple(a.shape), a.dtype) for a in args)
        if key not in captured:
            out = step.compiled(*args)  # compiles on the first shape; the step's real result
            inputs = [None if a is None else a.clone() for a in args]
            captured[key] = (*self.capture(step.compiled, inputs), inputs)
            self.captures += 1
            return out
        replay, outputs, inputs = captured[key]
        for buffer, arg in zip(inputs, args):
            if buffer is not None:
                buffer.copy_(arg)
        replay()
        return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, outputs)

    @staticmethod
    def capture(fn: Any, inputs: list) -> tuple[Any, Any]:
        """Record ``fn(*inputs)`` as a CUDA graph -> (replay, its output tensors)."""
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):  # records; the recorded kernels run at replay
            outputs = fn(*inputs)
        return graph.replay, outputs


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device (the capture is a torch.cuda.CUDAGraph)")
    models = bench_generate.setups(args)
    results = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for name, setup in models.items():
            model = setup[0]
            work = bench_generate.workload(name, setup, batch, args)
            best = {"graph trees": float("inf"), "hand capture": float("inf")}
            texts: dict[str, list[str]] = {}
            captures = 0
            for _ in range(args.repeats):  # the paths take turns; each run() warms up first
                for path in best:
                    capture = CapturedCalls()
                    mode = "default" if path == "hand capture" else True
                    with capture if path == "hand capture" else contextlib.nullcontext():
                        new_bytes, seconds, texts[path] = bench_generate.run(
                            model, work, True, "cuda", 1, compile_step=mode
                        )
                    captures = max(captures, capture.captures)
                    best[path] = min(best[path], seconds)
            results.append(
                {
                    "model": name,
                    "batch": batch,
                    "bytes_per_s_graph_trees": round(new_bytes / best["graph trees"], 1),
                    "bytes_per_s_hand_capture": round(new_bytes / best["hand capture"], 1),
                    "hand_over_trees": round(best["graph trees"] / best["hand capture"], 3),
                    "captures_in_both_calls": captures,  # run()'s warm-up call and timed one
                    "same_text": texts["graph trees"] == texts["hand capture"],
                }
            )
            print(json.dumps(results[-1]), flush=True)
    report = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
