"""Parameter and FLOP accounting for HAT and its BPE twin, per byte of training text.

Comparing a byte-level hierarchical model with a tokenized one only makes sense per *byte*:
HAT runs its encoder and decoder once per byte and its backbone once per word, the twin runs
everything once per token. ``training_flops_per_byte`` turns any config plus a measured
compression rate (bytes per word for HAT, bytes per token for BPE) into training FLOPs per
byte, so runs can be compute-matched and MFU reported; each config class holds its own formula
(``training_flops_breakdown``), with the per-stack pieces on ``TransformerConfig``.
``report``/``print_report`` are ``hat-params``: every preset's parameters and FLOPs per byte.

Convention (PaLM appendix B / Kaplan et al. "6N", plus attention):

* a matmul with an ``m x n`` weight costs ``2 m n`` FLOPs per row (multiply + add);
* training = 3 x forward (the backward pass costs twice the forward: gradients with respect to
  both inputs and weights), for matmuls and attention alike;
* attention adds, per layer and per query, ``2 * heads * head_dim`` FLOPs for the scores and
  the same again for the weighted sum of values, per key attended;
* keys attended: the mean over a full row of ``seq`` positions of ``min(i + 1, window)``, i.e.
  ``(seq + 1) / 2`` for causal attention and about ``min(window, seq / 2)`` for a sliding
  window. This is FlashAttention's causal accounting; PaLM's formula counts all ``seq`` keys,
  masked or not, so its attention term is twice ours. Documents packed into a row, which
  attend within themselves only, make the true count lower still; we count a full row;
* norms, RoPE, softmax, activations, residual adds and embedding lookups (gathers, whose
  gradient is a scatter-add) are not counted: they are O(d) per position, not O(d^2).

So the matmul part equals 6 x (matmul parameters touched per byte), and the totals can be used
directly as "model FLOPs" for MFU (``model_flops_per_byte``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from hat.config import ModelConfig, mean_keys, preset, preset_names
from hat.registry import kind_of

__all__ = [
    "count_parameters",
    "mean_keys",
    "mfu",
    "model_flops_per_byte",
    "print_report",
    "report",
    "training_flops_breakdown",
    "training_flops_per_byte",
]

# The compression and row length the paper's compute matching assumes (arXiv 2501.10322):
# English bytes per word of its splitter, bytes per token of its 64k BPE, 16,384-byte rows.
PAPER_BYTES_PER_WORD = 5.97
PAPER_BYTES_PER_TOKEN = 4.12
PAPER_SEQ_BYTES = 16384


def training_flops_breakdown(
    config: ModelConfig, bytes_per_unit: float, seq_len: int | None = None
) -> dict[str, float]:
    """Training FLOPs per byte by component; ``sum(values())`` is the total.

    ``bytes_per_unit``: measured bytes per word (HAT) or per token (twin). ``seq_len``: the
    training row **in bytes** for every kind (a twin's row holds ``seq_len / bytes_per_unit``
    tokens); None: the config's longest input.
    """
    return config.training_flops_breakdown(bytes_per_unit, seq_len)


def training_flops_per_byte(
    config: ModelConfig, bytes_per_unit: float, seq_len: int | None = None
) -> float:
    """Training (forward + backward) FLOPs per byte of text; see ``training_flops_breakdown``."""
    return sum(training_flops_breakdown(config, bytes_per_unit, seq_len).values())


def model_flops_per_byte(
    config: ModelConfig, bytes_per_unit: float, seq_len: int | None = None
) -> float:
    """ "Model FLOPs" per byte for MFU: the same number as ``training_flops_per_byte``.

    It follows PaLM's MFU convention (6 x matmul parameters per position, plus attention, no
    rematerialisation counted), with causal attention counted over the keys actually attended
    (half of PaLM's term for full causal rows; see the module docstring).
    """
    return training_flops_per_byte(config, bytes_per_unit, seq_len)


def mfu(
    config: ModelConfig,
    bytes_per_unit: float,
    bytes_per_second: float,
    peak_flops: float,
    seq_len: int | None = None,
) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware's peak FLOP/s.

    ``bytes_per_second``: training throughput in bytes of text (all devices together);
    ``peak_flops``: their summed peak (e.g. 989e12 per H100 SXM in dense bf16).
    """
    return model_flops_per_byte(config, bytes_per_unit, seq_len) * bytes_per_second / peak_flops


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters per top-level component (the model's children: HAT ``encoder``, ``pooler``,
    ``backbone``, ``decoder``; twin ``embed``, ``backbone``, ``head``) and ``total``, counted
    on a model built on the meta device (no memory). Tied weights count once."""
    with torch.device("meta"):
        model = kind_of(config).build(config)
    counts: dict[str, int] = {}
    seen: set[int] = set()
    for name, child in model.named_children():
        fresh = [p for p in child.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        counts[name] = sum(p.numel() for p in fresh)
    counts["total"] = sum(counts.values())
    return counts


# ---- hat-params ----------------------------------------------------------------------------
def report(
    names: Sequence[str] | None = None,
    bytes_per_word: float = PAPER_BYTES_PER_WORD,
    bytes_per_token: float = PAPER_BYTES_PER_TOKEN,
    seq_len: int = PAPER_SEQ_BYTES,
) -> dict[str, Any]:
    """Every preset's shape, parameters per component and training FLOPs per byte, grouped by
    model kind, plus each HAT preset beside its twin (``bpe_<name>``) when both are listed."""
    names = list(names) if names else preset_names()
    unknown = [n for n in names if n not in preset_names()]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {preset_names()}")
    per_unit = {"word": bytes_per_word, "token": bytes_per_token}
    kinds: dict[str, dict[str, Any]] = {}
    for name in names:
        config = preset(name)
        kind = kind_of(config)
        flops = training_flops_breakdown(config, per_unit[kind.position], seq_len)
        kinds.setdefault(kind.name, {})[name] = {
            "shape": {part: _shape(getattr(config, part)) for part in _stacks(config)},
            "params": count_parameters(config),
            "train_flops_per_byte": sum(flops.values()),
            "train_flops_breakdown": flops,
        }
    hats, twins = kinds.get("hat", {}), kinds.get("bpe", {})
    matching = {
        name: _matching(row, twins[f"bpe_{name}"])
        for name, row in hats.items()
        if f"bpe_{name}" in twins
    }
    assumptions = {
        "bytes_per_word": bytes_per_word,
        "bytes_per_token": bytes_per_token,
        "seq_len_bytes": seq_len,
    }
    return {"assumptions": assumptions, "kinds": kinds, "compute_matching": matching}


def _stacks(config: ModelConfig) -> list[str]:
    return [p for p in ("backbone", "encoder") if hasattr(config, p)]  # decoder = encoder shape


def _shape(stack: Any) -> str:
    kv = f"/{stack.kv_heads}kv" if stack.kv_heads != stack.n_heads else ""
    window = f" w{stack.window}" if stack.window else ""
    return f"{stack.n_layers}x{stack.n_heads}h{kv} d{stack.dim} ffn{stack.hidden_dim}{window}"


def _matching(hat_row: dict[str, Any], twin_row: dict[str, Any]) -> dict[str, float]:
    """FLOPs per byte side by side, and the paper's check that what HAT spends outside its
    backbone (byte stacks, pooling, guide, byte head) is about what the twin's LM head costs."""
    outside = sum(
        v for k, v in hat_row["train_flops_breakdown"].items() if not k.startswith("backbone")
    )
    head = twin_row["train_flops_breakdown"]["head"]
    return {
        "hat_train_flops_per_byte": hat_row["train_flops_per_byte"],
        "bpe_train_flops_per_byte": twin_row["train_flops_per_byte"],
        "hat_over_bpe": hat_row["train_flops_per_byte"] / twin_row["train_flops_per_byte"],
        "hat_byte_level_flops_per_byte": outside,
        "bpe_head_flops_per_byte": head,
        "byte_level_over_head": outside / head,
    }


def _num(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def print_report(data: dict[str, Any], console: Console | None = None) -> None:
    """``report``'s numbers as rich tables."""
    console = console or Console()
    a = data["assumptions"]
    for kind, rows in data["kinds"].items():
        first = next(iter(rows.values()))
        table = Table(title=f"{kind} presets: parameters and training FLOPs per byte")
        table.add_column("preset")
        for part in first["shape"]:
            table.add_column(part)
        for part in first["params"]:
            table.add_column(f"{part} params", justify="right")
        table.add_column("GFLOP/byte", justify="right")
        for name, row in rows.items():
            table.add_row(
                name,
                *row["shape"].values(),
                *(_num(v) for v in row["params"].values()),
                f"{row['train_flops_per_byte'] / 1e9:.4g}",
            )
        console.print(table)
    if data["compute_matching"]:
        table = Table(title="HAT beside its twin (training FLOPs per byte)")
        for col in (
            "size",
            "HAT GFLOP/B",
            "twin GFLOP/B",
            "HAT/twin",
            "HAT outside backbone MFLOP/B",
            "twin head MFLOP/B",
            "ratio",
        ):
            table.add_column(col, justify="right")
        for name, m in data["compute_matching"].items():
            table.add_row(
                name,
                f"{m['hat_train_flops_per_byte'] / 1e9:.4g}",
                f"{m['bpe_train_flops_per_byte'] / 1e9:.4g}",
                f"{m['hat_over_bpe']:.2f}",
                f"{m['hat_byte_level_flops_per_byte'] / 1e6:.1f}",
                f"{m['bpe_head_flops_per_byte'] / 1e6:.1f}",
                f"{m['byte_level_over_head']:.2f}",
            )
        console.print(table)
    console.print(
        f"At {a['bytes_per_word']} bytes/word (HAT), {a['bytes_per_token']} bytes/token (twin), "
        f"{a['seq_len_bytes']}-byte rows; training = 3 x forward, causal attention over the keys "
        "attended (hat.flops). Parameters counted on the meta device."
    )


def write_json(data: dict[str, Any]) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
