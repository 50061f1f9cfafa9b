"""Benchmark ragged attention pooling (one query per word over its bytes), forward + backward.

Compares, in one run and on the same batches:
  triton        hat_kernels.ragged_attention_pool(impl="triton")
  reference     hat_kernels.ragged_attention_pool_reference (plain PyTorch, segment ops)
  padded_sdpa   what a user would write: pad words to the longest, one query per word,
                F.scaled_dot_product_attention with a key padding mask
  flash_varlen  flash_attn_varlen_func (one query per word), if flash-attn is importable

Word lengths come from real text split by the project's splitter (hat_splitter, 100-byte cap).
Model widths D with heads as in the presets (head dim 64 up to D=512, else 128).
Prints JSON; --out also writes it to a file.

  python scripts/bench_pooling.py                       # on the GPU
  python scripts/bench_pooling.py --device cpu --quick  # CPU smoke run, under a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import hat_kernels
from hat_kernels.reference import ragged_attention_pool_reference

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO / "hat" / "assets" / "sample_corpus.txt"
# model width -> (heads, head dim)
HEADS = {
    256: (4, 64),
    512: (8, 64),
    768: (6, 128),
    1024: (8, 128),
    2048: (16, 128),
    4096: (32, 128),
}
# peak memory bandwidth (bytes/s) by device-name pattern; the first match wins
PEAK_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM (HBM3)
    ("A100 80GB", 2.0e12),
    ("A100-SXM4-80GB", 2.0e12),
]
TARGETS = {"speedup_vs_best_alternative": 5.0, "bandwidth_fraction_fwd_bwd": 0.7}


# ---------------------------------------------------------------------------------------------
# word lengths from text
# ---------------------------------------------------------------------------------------------


def synthetic_text(num_chars: int, seed: int = 0) -> str:
    """English-like filler: Zipf-ish word choice, punctuation, paragraphs."""
    rng = random.Random(seed)
    vocab = (
        "the of and to a in that was it her his you he be with for had not as at she but is "
        "on my have him by all so which this were they from would no been one could very what "
        "said every there any an must much more such do them me will some Emma Harriet Weston "
        "Knightley herself Elton thing nothing quite think little always being know believe "
        "acquaintance understanding satisfaction extraordinarily circumstances"
    ).split()
    weights = [1 / (i + 1) for i in range(len(vocab))]
    parts, size = [], 0
    while size < num_chars:
        word = rng.choices(vocab, weights)[0]
        sep = rng.choices([" ", ", ", ". ", ";\n", ".\n\n"], [80, 8, 6, 3, 3])[0]
        parts.append(word + sep)
        size += len(word) + len(sep)
    return "".join(parts)


def load_text(path: str | None, num_bytes: int) -> tuple[str, str]:
    """(text, description of its source)."""
    if path:
        return Path(path).read_text(encoding="utf-8"), path
    if SAMPLE_CORPUS.exists():
        return SAMPLE_CORPUS.read_text(encoding="utf-8"), str(SAMPLE_CORPUS.relative_to(REPO))
    return synthetic_text(4 * num_bytes), "synthetic English-like text"


def word_lengths(text: str, num_bytes: int) -> list[int]:
    """Byte lengths of the first words of `text` covering exactly num_bytes (repeating the text
    if it is short; the last word is cut to fit)."""
    from hat_splitter import HATSplitter

    words = HATSplitter().split_with_limit(text[: 4 * num_bytes + 1000], 100)
    if not words:  # repeating no words would never reach num_bytes
        raise SystemExit("bench_pooling: --text holds no text")
    lengths, total = [], 0
    while total < num_bytes:
        for w in words:
            lengths.append(min(len(w), num_bytes - total))
            total += lengths[-1]
            if total == num_bytes:
                break
    return lengths


def length_stats(lengths: list[int]) -> dict:
    s = sorted(lengths)
    pick = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return dict(
        words=len(s),
        bytes=sum(s),
        mean=round(statistics.fmean(s), 3),
        p50=pick(0.5),
        p90=pick(0.9),
        p99=pick(0.99),
        max=s[-1],
    )


# ---------------------------------------------------------------------------------------------
# implementations: fn(q, k, v, offsets) -> [W, H, Dh]
# ---------------------------------------------------------------------------------------------


def triton_pool(q, k, v, offsets):
    return hat_kernels.ragged_attention_pool(q, k, v, offsets, impl="triton")


def make_padded_sdpa(offsets: torch.Tensor):
    """Pad every word to the longest (index and mask built once per batch, outside the timing,
    which favours this baseline), then dense SDPA with one query per word."""
    lengths = offsets[1:] - offsets[:-1]  # [W]
    max_len = max(int(lengths.max()), 1)  # host sync, once per batch
    slot = torch.arange(max_len, device=offsets.device)
    valid = slot < lengths[:, None]  # [W, L]
    valid[:, 0] |= lengths == 0  # an all-masked row gives NaN: let empty words see a dummy byte
    index = torch.where(valid, offsets[:-1, None] + slot, 0)  # [W, L] byte of each slot
    nonempty = (lengths > 0)[:, None, None]

    def padded_sdpa(q, k, v, offsets):
        kp = k[index].transpose(1, 2)  # [W, L, H, Dh] -> [W, H, L, Dh]
        vp = v[index].transpose(1, 2)
        mask = valid[:, None, None, :]  # [W, 1, 1, L]
        out = F.scaled_dot_product_attention(q[:, :, None], kp, vp, attn_mask=mask)[:, :, 0]
        return torch.where(nonempty, out, 0.0)  # [W, H, Dh]

    return padded_sdpa


def make_flash_varlen(offsets: torch.Tensor):
    """flash_attn_varlen_func with one query per word, or None if flash-attn is missing."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    lengths = offsets[1:] - offsets[:-1]
    max_len = max(int(lengths.max()), 1)
    cu_q = torch.arange(len(lengths) + 1, device=offsets.device, dtype=torch.int32)
    cu_k = offsets.to(torch.int32)
    nonempty = (lengths > 0)[:, None, None]

    def flash_varlen(q, k, v, offsets):
        out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 1, max_len)
        return torch.where(nonempty, out, 0.0)

    return flash_varlen


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def seconds(step, device: str, reps: int) -> float:
    """Median seconds of step()."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median") * 1e-3
    step()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(fn, q, k, v, offsets, dout, device: str, reps: int) -> dict:
    """Forward and forward+backward seconds, and the output/gradients for checking."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))

    def fwd():
        with torch.no_grad():
            fn(q, k, v, offsets)

    def fwd_bwd():
        torch.autograd.grad(fn(q, k, v, offsets), (q, k, v), dout)

    out = fn(q, k, v, offsets)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    return dict(
        fwd=seconds(fwd, device, reps),
        fwd_bwd=seconds(fwd_bwd, device, reps),
        values=(out.detach(), *grads),
    )


def bytes_moved(num_words: int, num_bytes: int, heads: int, head_dim: int, itemsize: int):
    """Minimum HBM traffic (bytes): forward reads q, k, v and writes o (+ fp32 lse); backward
    reads q, k, v, o, dO (+ lse) and writes dq, dk, dv."""
    row = heads * head_dim * itemsize
    lse = num_words * heads * 4
    fwd = (2 * num_words + 2 * num_bytes) * row + lse
    bwd = (4 * num_words + 4 * num_bytes) * row + lse
    return fwd, fwd + bwd


def peak_bandwidth(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((bw for pattern, bw in PEAK_BANDWIDTH if pattern in name), None)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def bench_width(dim, lengths, device, dtype, reps, impls, peak) -> dict:
    heads, head_dim = HEADS[dim]
    offsets = torch.tensor([0, *lengths], device=device).cumsum(0)
    num_words, num_bytes = len(lengths), sum(lengths)
    g = torch.Generator(device=device).manual_seed(dim)
    q = torch.randn(num_words, heads, head_dim, device=device, dtype=dtype, generator=g)
    k = torch.randn(num_bytes, heads, head_dim, device=device, dtype=dtype, generator=g)
    v = torch.randn(num_bytes, heads, head_dim, device=device, dtype=dtype, generator=g)
    dout = torch.randn(num_words, heads, head_dim, device=device, dtype=dtype, generator=g)

    fns = {"reference": ragged_attention_pool_reference, "padded_sdpa": make_padded_sdpa(offsets)}
    if "triton" in impls:
        fns["triton"] = triton_pool
    if dtype != torch.float32 and device == "cuda":
        flash = make_flash_varlen(offsets)
        if flash is not None:
            fns["flash_varlen"] = flash

    fwd_bytes, total_bytes = bytes_moved(num_words, num_bytes, heads, head_dim, q.element_size())
    runs = {name: measure(fn, q, k, v, offsets, dout, device, reps) for name, fn in fns.items()}
    want = runs["reference"]["values"]
    row = dict(dim=dim, heads=heads, head_dim=head_dim, words=num_words, bytes=num_bytes)
    row["ms_fwd"] = {n: round(r["fwd"] * 1e3, 4) for n, r in runs.items()}
    row["ms_fwd_bwd"] = {n: round(r["fwd_bwd"] * 1e3, 4) for n, r in runs.items()}
    row["max_abs_err_vs_reference"] = {
        n: max((a.float() - b.float()).abs().max().item() for a, b in zip(r["values"], want))
        for n, r in runs.items()
        if n != "reference"
    }
    row["min_bytes_moved"] = {"fwd": fwd_bytes, "fwd_bwd": total_bytes}
    row["effective_bandwidth_fraction_fwd_bwd"] = {
        n: (round(total_bytes / r["fwd_bwd"] / peak, 4) if peak else None) for n, r in runs.items()
    }
    row["effective_bandwidth_GBps_fwd_bwd"] = {
        n: round(total_bytes / r["fwd_bwd"] / 1e9, 2) for n, r in runs.items()
    }
    if "triton" in runs:
        t = runs["triton"]["fwd_bwd"]
        alts = {n: r["fwd_bwd"] for n, r in runs.items() if n != "triton"}
        speedups = {f"vs_{n}": round(s / t, 3) for n, s in alts.items()}
        speedups["vs_best_alternative"] = round(min(alts.values()) / t, 3)
        row["triton_speedup_fwd_bwd"] = speedups
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU)")
    parser.add_argument("--widths", default="256,512,1024,2048,4096")
    parser.add_argument("--bytes", type=int, default=None, help="bytes per batch (all words)")
    parser.add_argument("--text", default=None, help="text file for word lengths")
    parser.add_argument("--quick", action="store_true", help="small batch, few repetitions")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    device = args.device
    on_gpu = device == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    num_bytes = args.bytes or (
        (16384 if args.quick else 65536) if on_gpu else (1024 if args.quick else 4096)
    )
    reps = 3 if args.quick else 5
    interpreted = hat_kernels.HAS_TRITON and hat_kernels.ops._tp.INTERPRETED
    if interpreted and not on_gpu:  # each Triton program runs in Python: keep it small
        num_bytes, reps = args.bytes or 256, 1
    notes = []
    impls = ["reference", "padded_sdpa"]
    if not hat_kernels.HAS_TRITON:
        notes.append("triton not installed: Triton kernel not measured")
    elif on_gpu or interpreted:
        impls.append("triton")
    else:
        notes.append("CPU without TRITON_INTERPRET=1: Triton kernel not measured")
    if interpreted:
        notes.append("interpreter: timings meaningless (Triton runs in the CPU interpreter)")
    if not on_gpu:
        notes.append("CPU run: timings say nothing about GPU performance; bandwidth fractions null")

    text, source = load_text(args.text, num_bytes)
    lengths = word_lengths(text, num_bytes)
    peak = peak_bandwidth(device)
    results = [
        bench_width(int(d), lengths, device, dtype, reps, impls, peak)
        for d in args.widths.split(",")
    ]
    report = dict(
        device=torch.cuda.get_device_name()
        if on_gpu
        else f"cpu ({platform.processor() or 'unknown'})",
        device_type=device,
        peak_bandwidth_Bps=peak,
        dtype=str(dtype).replace("torch.", ""),
        torch=torch.__version__,
        triton=_triton_version(),
        text=source,
        word_lengths=length_stats(lengths),
        implementations=sorted({n for r in results for n in r["ms_fwd_bwd"]}),
        timing="triton.testing.do_bench median" if on_gpu else f"perf_counter median of {reps}",
        targets=TARGETS,
        notes=notes,
        results=results,
    )
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if args.out:
        Path(args.out).write_text(text_out + "\n")


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
