"""What bounds cached generation at batch 1: reading the weights. Each step multiplies one
row of activations by every weight matrix of the stacks it runs, so a step reads all of
those weights once; on a CPU whose caches cannot hold them that is a floor on the step's time,
whatever the overhead around it. This script counts the bytes of weights HAT reads per byte
of text (encoder and decoder at every byte, pooler and backbone at every word) and its twin
reads per byte (backbone and output head at every token, over the bytes per token), times
the same matrix products alone (batch 1, one after another, as a step runs them), and prints
the floors and the HAT / twin bytes/s that the floors allow. Prints JSON.

    python scripts/experiments/weight_traffic.py --threads 1
    python scripts/experiments/weight_traffic.py --words-per-byte 0.2 --bytes-per-token 3.94

``--words-per-byte`` and ``--bytes-per-token``: of the text written (the defaults are what
``bench_generate.py``'s corpus text gives at batch 1: HAT's backbone ran at 20 % of the byte
steps, the twin wrote 256 bytes in 65 tokens).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import hat


def linears(module: nn.Module) -> list[torch.Tensor]:
    """The weight matrices a batch-1 step of ``module`` multiplies by (embeddings are
    looked up, not read whole)."""
    return [m.weight.detach() for m in module.modules() if isinstance(m, nn.Linear)]


def megabytes(weights: list[torch.Tensor]) -> float:
    return sum(w.numel() * w.element_size() for w in weights) / 1e6


def time_products(weights: list[torch.Tensor], repeats: int) -> float:
    """Seconds for one pass of batch-1 products by every weight, in order (median of 5)."""
    inputs = [torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights]
    transposed = [w.t() for w in weights]  # as nn.Linear multiplies: x @ W^T

    def one_pass() -> None:
        for x, w in zip(inputs, transposed, strict=True):
            torch.mm(x, w)

    for _ in range(20):
        one_pass()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            one_pass()
        times.append((time.perf_counter() - start) / repeats)
    return sorted(times)[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hat", default="small")
    p.add_argument("--bpe", default="bpe_small")
    p.add_argument("--words-per-byte", type=float, default=0.2)
    p.add_argument("--bytes-per-token", type=float, default=256 / 65)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=200)
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    model = hat.HATForCausalLM.from_name(args.hat).to(dtype)
    twin = hat.BPEForCausalLM(hat.BPEConfig.from_name(args.bpe)).to(dtype)
    parts = {  # weights read per step of each kind
        "hat byte step (encoder, decoder)": linears(model.encoder) + linears(model.decoder),
        "hat word step (pooler, backbone)": linears(model.pooler) + linears(model.backbone),
        "twin token step (backbone, head)": linears(twin.backbone) + linears(twin.head),
    }
    per_byte = {  # steps of each kind per byte of text
        "hat byte step (encoder, decoder)": 1.0,
        "hat word step (pooler, backbone)": args.words_per_byte,
        "twin token step (backbone, head)": 1 / args.bytes_per_token,
    }
    report: dict = {"device": "cpu", "threads": torch.get_num_threads(), "dtype": args.dtype}
    floors = {}
    for name, weights in parts.items():
        seconds = time_products(weights, args.repeats)
        mb = megabytes(weights)
        floors[name] = seconds * per_byte[name]
        report[name] = {
            "weight_mb": round(mb, 2),
            "products": len(weights),
            "us_per_step": round(seconds * 1e6, 1),
            "gb_per_s": round(mb / 1e3 / seconds, 1),
            "steps_per_byte": round(per_byte[name], 3),
        }
    hat_floor = (
        floors["hat byte step (encoder, decoder)"] + floors["hat word step (pooler, backbone)"]
    )
    twin_floor = floors["twin token step (backbone, head)"]
    report["floor_us_per_byte"] = {
        "hat": round(hat_floor * 1e6, 1),
        "twin": round(twin_floor * 1e6, 1),
    }
    report["hat_over_twin_bytes_per_s_at_the_floors"] = round(twin_floor / hat_floor, 3)
    return report


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    main()
