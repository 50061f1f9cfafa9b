"""Training throughput of HAT and its BPE twin at equal backbone size, measured in the same run.

Each model runs the trainer's own step (``hat.train.train_step`` + AdamW) on packed batches of
the built-in sample corpus. Both models get the same bytes per row: HAT rows are ``--seq-len``
bytes, the twin's rows are ``--seq-len / bytes-per-token`` tokens (measured on the corpus). On
GPU, MFU comes from ``hat.flops``. Prints JSON (and writes it with ``--out``).

    python scripts/bench_train.py                       # small vs bpe_small, ~1-2 min on a CPU
    python scripts/bench_train.py --pairs tiny:bpe_tiny small:bpe_small --steps 10
    python scripts/bench_train.py --compare-ref ee44999 --steps 8   # old vs this tree

``--compare-ref REV`` measures the median step time of every model on git revision REV and on
this tree, interleaved measurement by measurement (``scripts/compare_ref.py``); reports every
round, the medians and the new/old ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hat.data import DataConfig, build_train_loader, iter_documents
from hat.metrics import mfu, peak_flops
from hat.train import (
    build_model,
    build_optimizer,
    make_accelerator,
    train_step,
    train_tokenizer,
    unwrap,
)
from hat.train_config import BPEModelConfig, HATModelConfig, TrainConfig, TrainerConfig


def bytes_per_token(tokenizer, docs: int = 200) -> float:
    texts = [t for _, t in zip(range(docs), iter_documents(DataConfig(), "train"))]
    return sum(len(t.encode()) for t in texts) / sum(len(tokenizer.encode(t)) for t in texts)


class Bench:
    """One model set up for the trainer's step on pre-loaded batches (loading is not timed)."""

    def __init__(self, model_cfg, tokenizer, seq_len: int, rows: int, batches: int) -> None:  # noqa: ANN001
        self.seq_len = seq_len
        cfg = TrainConfig(
            model=model_cfg,
            trainer=TrainerConfig(seq_len=seq_len, global_rows=rows, output_dir=tempfile.mkdtemp()),
        )
        self.trainer = cfg.trainer
        self.accelerator = make_accelerator(cfg)
        torch.manual_seed(0)
        model = build_model(model_cfg, tokenizer)
        self.kind = model.config.model_type
        optimizer = build_optimizer(model, cfg)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        loader = build_train_loader(
            cfg.data,
            self.kind,
            seq_len,
            rows,
            splitter=getattr(model, "splitter", None),
            tokenizer=tokenizer,
        )
        self.batches = [next(loader) for _ in range(batches)]
        self.next = 0

    def steps(self, count: int) -> tuple[list[float], float, float, float]:
        """``count`` timed steps -> (seconds per step, bytes, words or tokens, last loss)."""
        times, n_bytes, n_units = [], 0.0, 0.0
        for _ in range(count):
            batch = self.batches[self.next % len(self.batches)]
            self.next += 1
            sync(self.accelerator)
            start = time.perf_counter()
            stats = train_step(self.model, batch, self.accelerator, self.trainer, grad_clip=1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            sync(self.accelerator)
            times.append(time.perf_counter() - start)
            n_bytes, n_units = n_bytes + stats.n_bytes, n_units + stats.n_words
        return times, n_bytes, n_units, stats.loss


def bench(model_cfg, tokenizer, seq_len: int, rows: int, steps: int, warmup: int) -> dict:  # noqa: ANN001
    runner = Bench(model_cfg, tokenizer, seq_len, rows, warmup + steps)
    runner.steps(warmup)
    step_times, n_bytes, n_units, loss = runner.steps(steps)
    elapsed = sum(step_times)
    plain = unwrap(runner.accelerator, runner.model)
    kind = runner.kind
    result = {
        "model": plain.config.name,
        "params_M": round(sum(p.numel() for p in plain.parameters()) / 1e6, 2),
        "seq_len": seq_len,
        "rows": rows,
        "steps": steps,
        "s_per_step": round(elapsed / steps, 3),
        "s_per_step_median": round(statistics.median(step_times), 4),
        "bytes_per_s": round(n_bytes / elapsed, 1),
        ("words_per_s" if kind == "hat" else "tokens_per_s"): round(n_units / elapsed, 1),
        "bytes_per_unit": round(n_bytes / max(n_units, 1), 3),
        "final_loss": round(loss, 4),
    }
    utilisation = mfu(
        plain.config,
        seq_len,
        n_bytes,
        n_units,
        n_bytes / elapsed,
        peak_flops(runner.accelerator),
    )
    if utilisation is not None:
        result["mfu"] = round(utilisation, 4)
    return result


def sync(accelerator) -> None:  # noqa: ANN001
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()


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
        "--seq-len",
        type=int,
        default=512,
        help="bytes per row (the twin: as many tokens as hold them)",
    )
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--compare-ref", metavar="REV", help="step times of git revision REV vs this tree"
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds of --compare-ref")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_ref:
        return compare(args)
    if args.worker:
        return worker(args)

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    report = {"device": device, "torch": torch.__version__, "pairs": []}
    tokenizers: dict[int, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            hat_name, bpe_name = pair.split(":")
            bpe_cfg = BPEModelConfig.preset(bpe_name)
            if (
                bpe_cfg.vocab_size not in tokenizers
            ):  # train once per vocabulary size, on the sample
                path = Path(tmp) / f"tok{bpe_cfg.vocab_size}.model"
                tokenizers[bpe_cfg.vocab_size] = train_tokenizer(
                    DataConfig(), bpe_cfg.vocab_size, path, 4_000_000
                )
            tokenizer = tokenizers[bpe_cfg.vocab_size]
            ratio = bytes_per_token(tokenizer)
            bpe_seq = max(16, round(args.seq_len / ratio))
            hat_result = bench(
                HATModelConfig.preset(hat_name),
                None,
                args.seq_len,
                args.rows,
                args.steps,
                args.warmup,
            )
            bpe_result = bench(bpe_cfg, tokenizer, bpe_seq, args.rows, args.steps, args.warmup)
            report["pairs"].append(
                {
                    "hat": hat_result,
                    "bpe": bpe_result,
                    "hat_over_bpe_bytes_per_s": round(
                        hat_result["bytes_per_s"] / bpe_result["bytes_per_s"], 3
                    ),
                }
            )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return None


def worker(args: argparse.Namespace) -> None:
    """One side of --compare-ref: the median time of ``--steps`` training steps per model, on
    demand (models set up once; warm-up steps first), fingerprinted by the last loss."""
    from compare_ref import serve

    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            hat_name, bpe_name = pair.split(":")
            bpe_cfg = BPEModelConfig.preset(bpe_name)
            path = Path(tmp) / f"tok{bpe_cfg.vocab_size}.model"
            tokenizer = train_tokenizer(DataConfig(), bpe_cfg.vocab_size, path, 4_000_000)
            bpe_seq = max(16, round(args.seq_len / bytes_per_token(tokenizer)))
            for name, model_cfg, tok, seq in (
                (hat_name, HATModelConfig.preset(hat_name), None, args.seq_len),
                (bpe_name, bpe_cfg, tokenizer, bpe_seq),
            ):
                runners[name] = Bench(model_cfg, tok, seq, args.rows, args.warmup + args.steps)
                runners[name].steps(args.warmup)

    def measurement(runner: Bench):  # noqa: ANN202
        def measure() -> tuple[float, str]:
            times, _, _, loss = runner.steps(args.steps)
            return round(statistics.median(times), 4), f"{loss:.3f}"

        return measure

    serve({f"{name}_s_per_step": measurement(r) for name, r in runners.items()})


def compare(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from compare_ref import compare as interleave

    forward = ["--pairs", *args.pairs, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    forward += ["--seq-len", str(args.seq_len), "--rows", str(args.rows)]
    forward += ["--threads", str(args.threads)] if args.threads else []
    report = interleave(__file__, forward, args.compare_ref, args.rounds, higher_is_better=False)
    report = {
        "benchmark": "training step time (median over the timed steps), seconds",
        "device": f"CPU ({platform.processor() or platform.machine()})"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        **report,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
