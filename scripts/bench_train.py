"""Training throughput of HAT and its BPE twin at equal backbone size, measured in the same run.

Each model runs the trainer's own step (``hat.training.trainer.forward_backward`` + AdamW) on
packed batches of the built-in sample corpus. Both models read the same bytes per row, as in
``hat-train`` (``trainer.row_bytes``): HAT rows are ``--row-bytes`` bytes, the twin's rows the
tokens of as many bytes (``units_per_row``, measured on the corpus). On GPU, MFU comes from
``hat.flops``. Prints JSON (and writes it with ``--out``): each model's bytes/s and training
FLOPs per byte (``hat.flops``, at the measured bytes per word / token and the row length), and
for each pair HAT / twin bytes/s, FLOPs per byte and FLOP/s (how efficiently HAT's FLOPs run
compared with the twin's). HAT's and the twin's steps are interleaved, so that a shared
machine's load changes hit both. ``--profile N`` adds milliseconds per step by stage;
``--compile`` times compiled steps (``trainer.compile=true``) interleaved with eager ones.

    python scripts/bench_train.py                       # small vs bpe_small, ~1-2 min on a CPU
    python scripts/bench_train.py --pairs tiny:bpe_tiny small:bpe_small --steps 10
    python scripts/bench_train.py --compare-ref ee44999 --steps 8   # old vs this tree
    python scripts/bench_train.py --threads 1 --steps 6 --profile 2  # + time by stage
    python scripts/bench_train.py --threads 1 --compile              # compiled vs eager

``--compare-ref REV`` measures the median step time of every model on git revision REV and on
this tree, interleaved measurement by measurement (``scripts/compare_ref.py``); reports every
round, the medians and the new/old ratios. (This script runs on both sides, importing each
side's ``hat``: REV's code must have what it calls.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hat import kind_of, preset
from hat.data import DataConfig, build_train_loader
from hat.flops import training_flops_per_byte
from hat.training import OptimConfig, TrainConfig, TrainerConfig, build_optimizer, train_tokenizer
from hat.training.metrics import mfu, peak_flops
from hat.training.trainer import forward_backward, make_accelerator, measure_sample, unwrap

try:
    from hat.block import reserve_positions
except ImportError:  # --compare-ref's worker on a revision before the RoPE tables in compiled code

    def reserve_positions(model: torch.nn.Module, size: int) -> None:
        pass


try:
    from hat.training.trainer import preloaded_allocator
except ImportError:  # --compare-ref's worker on a revision before it

    def preloaded_allocator() -> str | None:
        return None


try:
    from hat.block import stage
except ImportError:  # --compare-ref's worker on a revision before the stage labels
    import contextlib

    def stage(name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class Bench:
    """One model set up for the trainer's step on pre-loaded batches (loading is not timed)."""

    def __init__(  # noqa: PLR0913
        self,
        model_cfg,  # noqa: ANN001
        tokenizer,  # noqa: ANN001
        row_bytes: int,
        rows: int,
        batches: int,
        compile: bool = False,
        precision: str = "auto",
    ) -> None:
        self.row_bytes, self.rows = row_bytes, rows
        trainer = TrainerConfig(
            row_bytes=row_bytes, global_rows=rows, output_dir=tempfile.mkdtemp()
        )
        if precision != "auto":  # older revisions (--compare-ref) may lack the setting
            trainer = dataclasses.replace(trainer, precision=precision)
        cfg = TrainConfig(model=model_cfg, trainer=trainer)
        self.trainer = cfg.trainer
        self.accelerator = make_accelerator(cfg)
        torch.manual_seed(0)
        self.kind = kind_of(model_cfg)
        model = self.kind.build(model_cfg, tokenizer)
        self.count_positions = model.backbone_positions
        seq_len = model.units_per_row(row_bytes, measure_sample(cfg))
        loader = build_train_loader(cfg.data, model.data_format(), seq_len, rows)
        self.batches = [next(loader) for _ in range(batches)]
        self.next = 0
        optimizer = build_optimizer(model, OptimConfig(), lr=1e-3)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # trainer.compile=true: the same module under torch.compile (what accelerate's
        # inductor backend wraps it in), stepped with the same optimizer; eager and compiled
        # steps can then be interleaved on one set of weights
        if compile:  # as the trainer does: compiled code reads the RoPE tables
            reserve_positions(model, seq_len + 1)
        self.compiled = torch.compile(self.model) if compile else None
        self.compiled_trainer = dataclasses.replace(self.trainer, compile=True)

    def steps(self, count: int, compiled: bool = False) -> tuple[list[float], float, float, float]:
        """``count`` timed steps -> (seconds per step, bytes, words or tokens, last loss)."""
        times, n_bytes, n_units = [], 0.0, 0.0
        model, trainer = self.model, self.trainer
        if compiled:
            model, trainer = self.compiled, self.compiled_trainer
        for _ in range(count):
            batch = self.batches[self.next % len(self.batches)]
            self.next += 1
            sync(self.accelerator)
            start = time.perf_counter()
            with stage("step.forward_backward"):
                stats = forward_backward(
                    model,
                    batch,
                    self.accelerator,
                    trainer,
                    1.0,
                    self.count_positions(batch),
                )
            with stage("step.optimizer"):
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            sync(self.accelerator)
            times.append(time.perf_counter() - start)
            n_bytes, n_units = n_bytes + stats.n_bytes, n_units + stats.n_positions
        return times, n_bytes, n_units, stats.loss if count else float("nan")


@dataclasses.dataclass
class Timings:
    """Timed steps of one model (and mode): seconds, bytes, positions, last loss."""

    times: list[float] = dataclasses.field(default_factory=list)
    step_bytes: list[float] = dataclasses.field(default_factory=list)
    n_bytes: float = 0.0
    n_units: float = 0.0
    loss: float = float("nan")

    def add(self, runner: Bench, compiled: bool) -> None:
        times, n_bytes, n_units, loss = runner.steps(1, compiled)
        self.times += times
        self.step_bytes.append(n_bytes)
        self.n_bytes, self.n_units, self.loss = self.n_bytes + n_bytes, self.n_units + n_units, loss

    def speeds(self) -> list[float]:
        """Bytes per second of each step."""
        return [b / t for b, t in zip(self.step_bytes, self.times)]


def bench_pair(runners: list[Bench], steps: int, warmup: int, compile: bool) -> list[dict]:
    """Time the runners' steps interleaved (each round every runner and, with ``compile``,
    both modes, the order alternating), so load changes on a shared machine hit all alike.
    Each result's ``speeds`` are its bytes/s round by round (for paired ratios)."""
    warmups = [sum(r.steps(warmup, compiled=compile)[0]) for r in runners]
    if compile:
        for r in runners:
            r.steps(1)  # eager warm-up
    modes = (True, False) if compile else (False,)
    timings = {(i, m): Timings() for i in range(len(runners)) for m in modes}
    for step in range(steps):
        order = [(i, m) for i in range(len(runners)) for m in modes]
        for i, mode in order[:: -1 if step % 2 else 1]:
            timings[i, mode].add(runners[i], mode)
    results = []
    for i, runner in enumerate(runners):
        main = timings[i, compile]
        result = summarise(runner, main, steps)
        result["compile"] = compile
        result["warmup_s"] = round(warmups[i], 2)  # with --compile: compilation included
        result["speeds"] = main.speeds()
        if compile:
            eager = statistics.median(timings[i, False].times)
            result["eager_s_per_step_median"] = round(eager, 4)
            result["compiled_over_eager_speed"] = round(eager / statistics.median(main.times), 3)
        results.append(result)
    return results


def summarise(runner: Bench, t: Timings, steps: int) -> dict:
    plain = unwrap(runner.accelerator, runner.model)
    median = statistics.median(t.times)
    result = {
        "model": plain.config.name,
        "params_M": round(sum(p.numel() for p in plain.parameters()) / 1e6, 2),
        "row_bytes": runner.row_bytes,
        "rows": runner.rows,
        "steps": steps,
        "s_per_step": round(sum(t.times) / steps, 3),
        "s_per_step_median": round(median, 4),
        # bytes per step over the median step time (robust to a stalled step)
        "bytes_per_s": round(t.n_bytes / steps / median, 1),
        f"{runner.kind.position}s_per_s": round(t.n_units / steps / median, 1),
        "bytes_per_unit": round(t.n_bytes / max(t.n_units, 1), 3),
        "final_loss": round(t.loss, 4),
    }
    peak = peak_flops(runner.accelerator)
    speed = result["bytes_per_s"]
    utilisation = mfu(plain.config, runner.row_bytes, t.n_bytes, t.n_units, speed, peak)
    if utilisation is not None:
        result["mfu"] = round(utilisation, 4)
    flops = training_flops_per_byte(plain.config, t.n_bytes / max(t.n_units, 1), runner.row_bytes)
    result["train_flops_per_byte"] = round(flops)
    return result


def profile_breakdown(runner: Bench, steps: int, compiled: bool = False) -> dict:
    """Milliseconds per step by stage (torch.profiler, CPU time on the calling thread).

    Forward time is what ran inside each model stage's label (``hat.encoder``, ...; see
    ``hat.block.stage``); the backward of an op counts for the stage whose forward created it
    (autograd's sequence numbers link the two); the rest of the step is ``optimizer`` (AdamW,
    zero_grad) and ``other`` (gradient clipping, the loss scale, stats).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        times, *_ = runner.steps(steps, compiled)
    events = prof.events()
    stage_of_seq: dict[int, str] = {}
    forward: dict[str, float] = {}
    backward: dict[str, float] = {}
    total = optimizer = 0.0
    for event in events:
        name = event.name
        if name == "step.forward_backward":
            total += event.cpu_time_total
        elif name == "step.optimizer":
            total += event.cpu_time_total
            optimizer += event.cpu_time_total
        elif name.startswith(("hat.", "bpe.")):
            forward[name] = forward.get(name, 0.0) + event.cpu_time_total
        elif event.sequence_nr >= 0 and not name.startswith("autograd::"):
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith(("hat.", "bpe.")):
                parent = parent.cpu_parent
            if parent is not None:
                stage_of_seq.setdefault(event.sequence_nr, parent.name)
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function:"):
            name = stage_of_seq.get(event.sequence_nr, "other")
            backward[name] = backward.get(name, 0.0) + event.cpu_time_total
    ms = 1e-3 / steps
    rows = {
        name.split(".", 1)[1]: {
            "forward_ms": round(forward.get(name, 0.0) * ms, 1),
            "backward_ms": round(backward.get(name, 0.0) * ms, 1),
        }
        for name in dict.fromkeys([*forward, *backward])
        if name != "other"
    }
    accounted = sum(forward.values()) + sum(backward.values()) + optimizer
    rows["optimizer"] = {"ms": round(optimizer * ms, 1)}
    rows["other"] = {"ms": round((total - accounted) * ms, 1)}
    return {
        "step_ms_profiled": round(total * ms, 1),
        "step_ms_wall_median": round(1e3 * statistics.median(times), 1),
        "stages": rows,
    }


def sync(accelerator) -> None:  # noqa: ANN001
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()


def tokenizer_for(bpe_cfg, directory: Path):  # noqa: ANN001, ANN201
    """The twin's BPE, trained on the sample once per vocabulary size. The sample supports
    ~36k pieces: a larger vocabulary (``bpe_1b``'s 65,536) gets as many as it has, while the
    model keeps its full embedding and head (what the speed depends on)."""
    path = directory / f"tok{bpe_cfg.vocab_size}.model"
    if path.is_file():
        from hat.bpe import BPETokenizer

        return BPETokenizer(path)
    return train_tokenizer(
        DataConfig(), bpe_cfg.vocab_size, path, 4_000_000, hard_vocab_limit=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs", nargs="+", default=["small:bpe_small"], help="HAT:BPE preset pairs"
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    parser.add_argument(
        "--row-bytes",
        "--seq-len",  # its name before trainer.row_bytes
        dest="row_bytes",
        type=int,
        default=512,
        help="bytes per row (the twin: their tokens)",
    )
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--compare-ref", metavar="REV", help="step times of git revision REV vs this tree"
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds of --compare-ref")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="trainer.compile=true: torch.compile the models (warm-up steps compile them)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="also profile STEPS more steps of each model: milliseconds per step by stage",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="trainer.precision (auto: bf16 on a GPU, fp32 on a CPU)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_ref:
        return compare(args)
    if args.worker:
        return worker(args)

    report = {
        "device": device_name(),
        "torch": torch.__version__,
        # on a CPU the allocator moves HAT's step by ~10 % (docs/training.md)
        "allocator": preloaded_allocator() or "system malloc",
        "pairs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            runners = list(pair_benches(pair, args, Path(tmp), args.steps + 4).values())
            hat_result, bpe_result = bench_pair(runners, args.steps, args.warmup, args.compile)
            mixed = runners[0].accelerator.mixed_precision
            report["precision"] = {"no": "fp32"}.get(mixed, mixed)
            if args.profile:
                for runner, result in zip(runners, (hat_result, bpe_result)):
                    result["profile"] = profile_breakdown(runner, args.profile, args.compile)
            speed = hat_result["bytes_per_s"] / bpe_result["bytes_per_s"]
            flops = hat_result["train_flops_per_byte"] / bpe_result["train_flops_per_byte"]
            # HAT / twin bytes/s of each round (two neighbouring steps): a drifting machine
            # moves both, so the median of these is steadier than the ratio of the medians
            paired = statistics.median(
                h / b for h, b in zip(hat_result.pop("speeds"), bpe_result.pop("speeds"))
            )
            report["pairs"].append(
                {
                    "hat": hat_result,
                    "bpe": bpe_result,
                    "hat_over_bpe_bytes_per_s": round(speed, 3),
                    "hat_over_bpe_flops_per_byte": round(flops, 3),
                    # FLOP/s HAT achieves over the twin's; issue 14's goal is >= 0.9
                    "hat_over_bpe_flops_per_s": round(speed * flops, 3),
                    "hat_over_bpe_flops_per_s_paired": round(paired * flops, 3),
                }
            )
    write_report(report, args.out)
    return None


def pair_benches(pair: str, args: argparse.Namespace, tmp: Path, batches: int) -> dict[str, Bench]:
    """The benches of a ``HAT:BPE`` preset pair, by preset name (the twin's tokenizer trained
    in ``tmp``), each with ``batches`` batches."""
    hat_name, bpe_name = pair.split(":")
    bpe_cfg = preset(bpe_name)
    tokenizer = tokenizer_for(bpe_cfg, tmp)
    return {
        name: Bench(cfg, tok, args.row_bytes, args.rows, batches, args.compile, args.precision)
        for name, cfg, tok in ((hat_name, preset(hat_name), None), (bpe_name, bpe_cfg, tokenizer))
    }


def write_report(report: dict, out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def worker(args: argparse.Namespace) -> None:
    """One side of --compare-ref: the median time of ``--steps`` training steps per model, on
    demand (models set up once; warm-up steps first), fingerprinted by the last loss."""
    from compare_ref import serve

    runners: dict[str, Bench] = {}
    compile = args.compile
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            runners.update(pair_benches(pair, args, Path(tmp), args.warmup + args.steps))
        for runner in runners.values():
            runner.steps(args.warmup, compile)

    def measurement(runner: Bench):  # noqa: ANN202
        def measure() -> tuple[float, str]:
            times, _, _, loss = runner.steps(args.steps, compile)
            return round(statistics.median(times), 4), f"{loss:.3f}"

        return measure

    serve({f"{name}_s_per_step": measurement(r) for name, r in runners.items()})


def compare(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from compare_ref import compare as interleave

    forward = ["--pairs", *args.pairs, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    forward += ["--row-bytes", str(args.row_bytes), "--rows", str(args.rows)]
    forward += ["--threads", str(args.threads)] if args.threads else []
    forward += ["--compile"] if args.compile else []
    forward += ["--precision", args.precision]  # this script runs on both sides
    report = interleave(__file__, forward, args.compare_ref, args.rounds, higher_is_better=False)
    report = {
        "benchmark": "training step time (median over the timed steps), seconds",
        "device": device_name(),
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "allocator": preloaded_allocator() or "system malloc",
        **report,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
