"""Training throughput of HAT and its BPE twin at equal backbone size, measured in the same run.

Each model runs the trainer's own step (``hat.train.train_step`` + AdamW) on packed batches of
the built-in sample corpus. Both models get the same bytes per row: HAT rows are ``--seq-len``
bytes, the twin's rows are ``--seq-len / bytes-per-token`` tokens (measured on the corpus). On
GPU, MFU comes from ``hat.flops``. Prints JSON (and writes it with ``--out``).

    python scripts/bench_train.py                       # small vs bpe_small, ~1-2 min on a CPU
    python scripts/bench_train.py --pairs tiny:bpe_tiny small:bpe_small --steps 10
    python scripts/bench_train.py --compare-ref ee44999 --steps 8   # old vs this tree

``--compare-ref REV`` measures the median step time of every model on git revision REV and on
this tree in alternating subprocess rounds (``scripts/compare_ref.py``) and reports every
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


def bench(model_cfg, tokenizer, seq_len: int, rows: int, steps: int, warmup: int) -> dict:
    cfg = TrainConfig(
        model=model_cfg,
        trainer=TrainerConfig(seq_len=seq_len, global_rows=rows, output_dir=tempfile.mkdtemp()),
    )
    accelerator = make_accelerator(cfg)
    torch.manual_seed(0)
    model = build_model(model_cfg, tokenizer)
    kind = model.config.model_type
    optimizer = build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    loader = build_train_loader(
        cfg.data,
        kind,
        seq_len,
        rows,
        splitter=getattr(model, "splitter", None),
        tokenizer=tokenizer,
    )
    batches = [next(loader) for _ in range(warmup + steps)]  # data loading is not timed
    n_bytes = n_units = 0.0
    step_times = []
    for i, batch in enumerate(batches):
        sync(accelerator)
        step_start = time.perf_counter()
        stats = train_step(model, batch, accelerator, cfg.trainer, grad_clip=1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(accelerator)
        if i >= warmup:
            step_times.append(time.perf_counter() - step_start)
            n_bytes, n_units = n_bytes + stats.n_bytes, n_units + stats.n_words
    elapsed = sum(step_times)
    plain = unwrap(accelerator, model)
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
        "final_loss": round(stats.loss, 4),
    }
    utilisation = mfu(
        plain.config, seq_len, n_bytes, n_units, n_bytes / elapsed, peak_flops(accelerator)
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
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare-ref")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_ref:
        return compare(args)

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
    if args.worker:  # one side of a --compare-ref round
        metrics = {
            f"{r[kind]['model']}_s_per_step": r[kind]["s_per_step_median"]
            for r in report["pairs"]
            for kind in ("hat", "bpe")
        }
        losses = {
            f"{r[kind]['model']}_final_loss": r[kind]["final_loss"]
            for r in report["pairs"]
            for kind in ("hat", "bpe")
        }
        print(json.dumps({"metrics": metrics, "fingerprints": losses}))
        return None
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return None


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
