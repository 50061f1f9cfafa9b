"""Training throughput of HAT and its BPE twin at equal backbone size, measured in the same run.

Each model runs the trainer's own step (``hat.training.trainer.forward_backward`` + AdamW) on
packed batches of the built-in sample corpus. Both models read the same bytes per row, as in
``hat-train`` (``trainer.row_bytes``): HAT rows are ``--seq-len`` bytes, the twin's rows the
tokens of as many bytes (``units_per_row``, measured on the corpus). On GPU, MFU comes from
``hat.flops``. Prints JSON (and writes it with ``--out``).

    python scripts/bench_train.py                       # small vs bpe_small, ~1-2 min on a CPU
    python scripts/bench_train.py --pairs tiny:bpe_tiny small:bpe_small --steps 10
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from hat import kind_of, preset
from hat.data import DataConfig, build_train_loader
from hat.training import OptimConfig, TrainConfig, TrainerConfig, build_optimizer, train_tokenizer
from hat.training.metrics import mfu, peak_flops
from hat.training.trainer import forward_backward, make_accelerator, measure_sample, unwrap


def bench(model_cfg, tokenizer, row_bytes: int, rows: int, steps: int, warmup: int) -> dict:
    cfg = TrainConfig(
        model=model_cfg,
        trainer=TrainerConfig(row_bytes=row_bytes, global_rows=rows, output_dir=tempfile.mkdtemp()),
    )
    accelerator = make_accelerator(cfg)
    torch.manual_seed(0)
    kind = kind_of(model_cfg)
    model = kind.build(model_cfg, tokenizer)
    seq_len = model.units_per_row(row_bytes, measure_sample(cfg))
    fmt, count = model.data_format(), model.backbone_positions
    optimizer = build_optimizer(model, OptimConfig(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    loader = build_train_loader(cfg.data, fmt, seq_len, rows)
    batches = [next(loader) for _ in range(warmup + steps)]  # data loading is not timed
    n_bytes = n_units = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        stats = forward_backward(model, batch, accelerator, cfg.trainer, 1.0, count(batch))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            n_bytes, n_units = n_bytes + stats.n_bytes, n_units + stats.n_positions
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    plain = unwrap(accelerator, model)
    result = {
        "model": plain.config.name,
        "params_M": round(sum(p.numel() for p in plain.parameters()) / 1e6, 2),
        "seq_len": seq_len,
        "rows": rows,
        "steps": steps,
        "s_per_step": round(elapsed / steps, 3),
        "bytes_per_s": round(n_bytes / elapsed, 1),
        f"{kind.position}s_per_s": round(n_units / elapsed, 1),
        "bytes_per_unit": round(n_bytes / max(n_units, 1), 3),
        "final_loss": round(stats.loss, 4),
    }
    utilisation = mfu(
        plain.config, row_bytes, n_bytes, n_units, n_bytes / elapsed, peak_flops(accelerator)
    )
    if utilisation is not None:
        result["mfu"] = round(utilisation, 4)
    return result


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
    args = parser.parse_args()

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
            bpe_cfg = preset(bpe_name)
            if (
                bpe_cfg.vocab_size not in tokenizers
            ):  # train once per vocabulary size, on the sample
                path = Path(tmp) / f"tok{bpe_cfg.vocab_size}.model"
                tokenizers[bpe_cfg.vocab_size] = train_tokenizer(
                    DataConfig(), bpe_cfg.vocab_size, path, 4_000_000
                )
            tokenizer = tokenizers[bpe_cfg.vocab_size]
            hat_result = bench(
                preset(hat_name), None, args.seq_len, args.rows, args.steps, args.warmup
            )
            bpe_result = bench(bpe_cfg, tokenizer, args.seq_len, args.rows, args.steps, args.warmup)
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


if __name__ == "__main__":
    main()
