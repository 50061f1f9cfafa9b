"""``hat-params``: parameter counts and training FLOPs per byte of every preset.

Models are built on the meta device, so even the 9B preset costs no memory and the whole
table takes seconds. Paper figures (arXiv 2501.10322) are printed beside ours.

    hat-params                 # text tables
    hat-params --json          # the same numbers as JSON
    hat-params 3b bpe_3b       # only these presets
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from hat.config import BPEConfig, HATConfig, TransformerConfig
from hat.flops import count_parameters, training_flops_breakdown
from hat.presets import (
    BPE_PRESETS,
    HAT_PRESETS,
    PAPER_BYTE_STACK_PARAMS,
    PAPER_BYTES_PER_TOKEN,
    PAPER_BYTES_PER_WORD,
    PAPER_PARAMS,
    PAPER_SEQ_BYTES,
    canonical_presets,
)

# HAT components outside the word backbone: what the paper calls encoder + decoder
_BYTE_STACK_PARTS = ("encoder", "pooling", "decoder")
_BYTE_LEVEL_FLOPS = (
    "encoder",
    "encoder_attention",
    "pooling",
    "guide",
    "decoder",
    "decoder_attention",
    "byte_head",
)


def _shape(cfg: TransformerConfig) -> dict[str, Any]:
    return {
        "layers": cfg.n_layers,
        "heads": cfg.n_heads,
        "kv_heads": cfg.kv_heads,
        "dim": cfg.dim,
        "head_dim": cfg.head_dim,
        "ffn_dim": cfg.hidden_dim,
        "window": cfg.window,
    }


def _rel(ours: float, paper: float | None) -> float | None:
    return None if paper is None else ours / paper - 1.0


def hat_report(name: str, bytes_per_word: float, seq_len: int) -> dict[str, Any]:
    cfg = HATConfig.from_name(name)
    params = count_parameters(cfg)
    byte_stacks = sum(params[k] for k in _BYTE_STACK_PARTS)
    flops = training_flops_breakdown(cfg, bytes_per_word, seq_len)
    return {
        "backbone_shape": _shape(cfg.backbone),
        "byte_stack_shape": _shape(cfg.encoder),
        "params": params,
        "byte_stack_params": byte_stacks,
        "paper_params": PAPER_PARAMS.get(name),
        "paper_params_rel_diff": _rel(params["total"], PAPER_PARAMS.get(name)),
        "paper_byte_stack_params": PAPER_BYTE_STACK_PARAMS.get(name),
        "paper_byte_stack_rel_diff": _rel(byte_stacks, PAPER_BYTE_STACK_PARAMS.get(name)),
        "train_flops_per_byte": sum(flops.values()),
        "train_flops_breakdown": flops,
    }


def bpe_report(name: str, bytes_per_token: float, seq_len: int) -> dict[str, Any]:
    cfg = BPEConfig.from_name(name)
    params = count_parameters(cfg)
    flops = training_flops_breakdown(cfg, bytes_per_token, seq_len)
    return {
        "backbone_shape": _shape(cfg.backbone),
        "vocab_size": cfg.vocab_size,
        "params": params,
        "paper_params": PAPER_PARAMS.get(name),
        "paper_params_rel_diff": _rel(params["total"], PAPER_PARAMS.get(name)),
        "train_flops_per_byte": sum(flops.values()),
        "train_flops_breakdown": flops,
    }


def compute_matching(hat: dict[str, Any], bpe: dict[str, Any]) -> dict[str, Any]:
    """For each HAT preset with a twin in the report: FLOPs per byte side by side, and the
    paper's check that HAT's byte-level parts cost about what the twin's LM head costs."""
    out: dict[str, Any] = {}
    for name, h in hat.items():
        twin = bpe.get(f"bpe_{name}")
        if twin is None:
            continue
        byte_level = sum(h["train_flops_breakdown"][k] for k in _BYTE_LEVEL_FLOPS)
        head = twin["train_flops_breakdown"]["head"]
        out[name] = {
            "hat_train_flops_per_byte": h["train_flops_per_byte"],
            "bpe_train_flops_per_byte": twin["train_flops_per_byte"],
            "hat_over_bpe": h["train_flops_per_byte"] / twin["train_flops_per_byte"],
            "hat_byte_level_flops_per_byte": byte_level,
            "bpe_head_flops_per_byte": head,
            "byte_level_over_head": byte_level / head,
        }
    return out


def build_report(
    names: Sequence[str] | None = None,
    bytes_per_word: float = PAPER_BYTES_PER_WORD,
    bytes_per_token: float = PAPER_BYTES_PER_TOKEN,
    seq_len: int = PAPER_SEQ_BYTES,
) -> dict[str, Any]:
    """Everything ``hat-params`` prints, as plain data."""
    hat_names, bpe_names = canonical_presets()
    if names:
        unknown = [n for n in names if n not in hat_names and n not in bpe_names]
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; choose from {hat_names + bpe_names}")
        hat_names = [n for n in hat_names if n in names]
        bpe_names = [n for n in bpe_names if n in names]
    hat = {n: hat_report(n, bytes_per_word, seq_len) for n in hat_names}
    bpe = {n: bpe_report(n, bytes_per_token, seq_len) for n in bpe_names}
    return {
        "assumptions": {
            "bytes_per_word": bytes_per_word,
            "bytes_per_token": bytes_per_token,
            "seq_len_bytes": seq_len,
            "flops": "training = 3 x forward; matmul 2 FLOPs per MAC; causal attention over "
            "the keys actually attended (see hat.flops)",
        },
        "hat": hat,
        "bpe": bpe,
        "compute_matching": compute_matching(hat, bpe),
    }


# ---- text output ---------------------------------------------------------------------------


def _num(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _shape_str(s: dict[str, Any]) -> str:
    kv = f"/{s['kv_heads']}kv" if s["kv_heads"] != s["heads"] else ""
    return f"{s['layers']}x{s['heads']}h{kv} d{s['dim']} ffn{s['ffn_dim']}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    a = report["assumptions"]
    parts: list[str] = []
    if report["hat"]:
        rows = []
        for name, r in report["hat"].items():
            p = r["params"]
            rows.append(
                [
                    name,
                    _shape_str(r["backbone_shape"]),
                    _shape_str(r["byte_stack_shape"]),
                    _num(p["encoder"]),
                    _num(p["pooling"]),
                    _num(p["backbone"]),
                    _num(p["decoder"]),
                    _num(p["total"]),
                    _num(r["paper_params"]),
                    _pct(r["paper_params_rel_diff"]),
                    _num(r["byte_stack_params"]),
                    _num(r["paper_byte_stack_params"]),
                    _pct(r["paper_byte_stack_rel_diff"]),
                    f"{r['train_flops_per_byte'] / 1e9:.4g}",
                ]
            )
        header = [
            "HAT",
            "backbone",
            "encoder = decoder",
            "encoder",
            "pooling",
            "backbone",
            "decoder",
            "total",
            "paper",
            "diff",
            "enc+pool+dec",
            "paper",
            "diff",
            "GFLOP/B",
        ]
        parts.append(_table(header, rows))
    if report["bpe"]:
        rows = []
        for name, r in report["bpe"].items():
            p = r["params"]
            rows.append(
                [
                    name,
                    _shape_str(r["backbone_shape"]),
                    str(r["vocab_size"]),
                    _num(p["embedding"]),
                    _num(p["backbone"]),
                    _num(p["head"]),
                    _num(p["total"]),
                    _num(r["paper_params"]),
                    _pct(r["paper_params_rel_diff"]),
                    f"{r['train_flops_per_byte'] / 1e9:.4g}",
                ]
            )
        header = [
            "BPE",
            "backbone",
            "vocab",
            "embedding",
            "backbone",
            "head",
            "total",
            "paper",
            "diff",
            "GFLOP/B",
        ]
        parts.append(_table(header, rows))
    if report["compute_matching"]:
        rows = [
            [
                name,
                f"{m['hat_train_flops_per_byte'] / 1e9:.4g}",
                f"{m['bpe_train_flops_per_byte'] / 1e9:.4g}",
                f"{m['hat_over_bpe']:.2f}",
                f"{m['hat_byte_level_flops_per_byte'] / 1e6:.1f}",
                f"{m['bpe_head_flops_per_byte'] / 1e6:.1f}",
                f"{m['byte_level_over_head']:.2f}",
            ]
            for name, m in report["compute_matching"].items()
        ]
        header = [
            "size",
            "HAT GFLOP/B",
            "BPE GFLOP/B",
            "HAT/BPE",
            "HAT byte-level MFLOP/B",
            "BPE head MFLOP/B",
            "ratio",
        ]
        parts.append(_table(header, rows))
    parts.append(
        f"GFLOP/B: training FLOPs per byte at {a['bytes_per_word']} bytes/word (HAT), "
        f"{a['bytes_per_token']} bytes/token (BPE), {a['seq_len_bytes']}-byte rows; "
        "3 x forward, causal attention over attended keys.\n"
        "HAT byte-level = encoder + pooling + guide + decoder + byte head (the paper: about the "
        "twin's LM-head FLOPs at 3B).\n"
        "paper = arXiv 2501.10322; enc+pool+dec is compared with its encoder + decoder figure."
    )
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hat-params",
        description="Parameter counts (built on the meta device) and training FLOPs per byte of "
        "every preset, beside the HAT paper's figures.",
    )
    parser.add_argument(
        "presets",
        nargs="*",
        help="preset names (default: all): "
        + ", ".join(list(HAT_PRESETS) + [n for n in BPE_PRESETS if n.startswith("bpe_")]),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--bytes-per-word",
        type=float,
        default=PAPER_BYTES_PER_WORD,
        help="HAT compression for FLOPs (default %(default)s, the paper's English)",
    )
    parser.add_argument(
        "--bytes-per-token",
        type=float,
        default=PAPER_BYTES_PER_TOKEN,
        help="BPE compression for FLOPs (default %(default)s, the paper's 64k BPE)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=PAPER_SEQ_BYTES,
        help="training row length in bytes, for attention FLOPs (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        report = build_report(args.presets, args.bytes_per_word, args.bytes_per_token, args.seq_len)
    except ValueError as err:
        parser.error(str(err))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
