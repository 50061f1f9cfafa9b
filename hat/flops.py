"""Parameter and FLOP accounting for HAT and its BPE twin, per byte of training text.

Comparing a byte-level hierarchical model with a tokenized one only makes sense per *byte*:
HAT runs its encoder and decoder once per byte and its backbone once per word, the twin runs
everything once per token. ``training_flops_per_byte`` turns any config plus a measured
compression rate (bytes per word for HAT, bytes per token for BPE) into training FLOPs per
byte, so runs can be compute-matched and MFU reported.

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

from hat.config import BPEConfig, HATConfig, TransformerConfig


def mean_keys(seq: float, window: int | None = None) -> float:
    """Mean number of keys a causal query attends to over a row of ``seq`` positions.

    Position ``i`` (0-based) sees ``min(i + 1, window)`` keys. ``seq`` may be fractional (a
    byte length divided by bytes per word); the continuous formula is used as is.
    """
    if seq <= 0:
        return 0.0
    if window is None or window >= seq:
        return (seq + 1) / 2
    # first `window` positions see 1..window keys, the rest see `window` each
    return (window * (window + 1) / 2 + (seq - window) * window) / seq


def block_matmul_params(cfg: TransformerConfig) -> int:
    """Weights of one block that multiply activations: q, k, v, o and the three SwiGLU maps."""
    attn = cfg.dim * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.kv_heads)
    mlp = 3 * cfg.dim * cfg.hidden_dim
    return attn + mlp


def stack_forward_flops(cfg: TransformerConfig, seq: float) -> dict[str, float]:
    """Forward FLOPs per position of one transformer stack over a row of ``seq`` positions.

    Returns ``{"matmul": ..., "attention": ...}``.
    """
    matmul = 2 * block_matmul_params(cfg) * cfg.n_layers
    attention = 4 * cfg.n_heads * cfg.head_dim * mean_keys(seq, cfg.window) * cfg.n_layers
    return {"matmul": float(matmul), "attention": float(attention)}


def _default_seq_bytes(config: HATConfig | BPEConfig, bytes_per_unit: float) -> float:
    if isinstance(config, HATConfig):
        return float(config.max_seq_bytes)
    return config.max_seq_tokens * bytes_per_unit


def training_flops_breakdown(
    config: HATConfig | BPEConfig, bytes_per_unit: float, seq_len: int | None = None
) -> dict[str, float]:
    """Training FLOPs per byte of text, per component. ``sum(values())`` is the total.

    ``bytes_per_unit``: measured bytes per word (HAT) or bytes per token (BPE).
    ``seq_len``: training row length **in bytes** for both model types, so a HAT and a BPE run
    over the same byte windows compare directly (the BPE row holds ``seq_len / bytes_per_unit``
    tokens). ``None``: the config's longest input (``max_seq_bytes``; for BPE
    ``max_seq_tokens * bytes_per_unit``).

    HAT keys: ``encoder``, ``encoder_attention`` (per byte); ``pooling`` (k/v projections and
    the ragged attention per byte, output projection per word); ``backbone``,
    ``backbone_attention``, ``guide`` (decoder's guide projection; per word); ``decoder``,
    ``decoder_attention``, ``byte_head`` (per byte).
    BPE keys: ``backbone``, ``backbone_attention``, ``head`` (all per token).
    """
    if bytes_per_unit <= 0:
        raise ValueError(f"bytes_per_unit must be > 0, got {bytes_per_unit}")
    seq_bytes = (
        float(seq_len) if seq_len is not None else _default_seq_bytes(config, bytes_per_unit)
    )
    if seq_bytes <= 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len}")
    seq_units = seq_bytes / bytes_per_unit
    train = 3.0  # forward + backward

    if isinstance(config, BPEConfig):
        d = config.backbone.dim
        bb = stack_forward_flops(config.backbone, seq_units)
        per_token = {
            "backbone": bb["matmul"],
            "backbone_attention": bb["attention"],
            "head": 2.0 * d * config.vocab_size,  # the input embedding is a free lookup
        }
        return {k: train * v / bytes_per_unit for k, v in per_token.items()}

    if not isinstance(config, HATConfig):
        raise TypeError(f"expected HATConfig or BPEConfig, got {type(config).__name__}")
    enc, dec, bb_cfg = config.encoder, config.decoder, config.backbone
    pool_inner = enc.n_heads * enc.head_dim  # the pooler's width (its heads are the encoder's)
    n_guides = dec.n_layers if config.decoder_guide == "every" else 1
    e = stack_forward_flops(enc, seq_bytes)
    dcd = stack_forward_flops(dec, seq_bytes)
    bb = stack_forward_flops(bb_cfg, seq_units)
    per_byte = {
        "encoder": e["matmul"],
        "encoder_attention": e["attention"],
        # every byte is a key of exactly one word query: k and v projections, one score and one
        # value accumulation per byte and head; the output projection runs once per word
        "pooling": 2.0 * 2 * enc.dim * pool_inner
        + 4.0 * pool_inner
        + 2.0 * pool_inner * bb_cfg.dim / bytes_per_unit,
        "backbone": bb["matmul"] / bytes_per_unit,
        "backbone_attention": bb["attention"] / bytes_per_unit,
        # projected once per word, then broadcast (gathered) to that word's bytes
        "guide": 2.0 * bb_cfg.dim * dec.dim * n_guides / bytes_per_unit,
        "decoder": dcd["matmul"],
        "decoder_attention": dcd["attention"],
        "byte_head": 2.0 * dec.dim * 256,
    }
    return {k: train * v for k, v in per_byte.items()}


def training_flops_per_byte(
    config: HATConfig | BPEConfig, bytes_per_unit: float, seq_len: int | None = None
) -> float:
    """Training (forward + backward) FLOPs per byte of text; see ``training_flops_breakdown``."""
    return sum(training_flops_breakdown(config, bytes_per_unit, seq_len).values())


def model_flops_per_byte(
    config: HATConfig | BPEConfig, bytes_per_unit: float, seq_len: int | None = None
) -> float:
    """ "Model FLOPs" per byte for MFU: the same number as ``training_flops_per_byte``.

    It follows PaLM's MFU convention (6 x matmul parameters per position, plus attention, no
    rematerialisation counted), with causal attention counted over the keys actually attended
    (half of PaLM's term for full causal rows; see the module docstring).
    """
    return training_flops_per_byte(config, bytes_per_unit, seq_len)


def mfu(
    config: HATConfig | BPEConfig,
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


def count_parameters(config: HATConfig | BPEConfig) -> dict[str, int]:
    """Parameters per component, counted on a model built on the meta device (no memory).

    HAT: ``encoder``, ``pooling``, ``backbone``, ``decoder`` (with its guide projection and
    byte head) and ``total``. BPE: ``embedding``, ``backbone``, ``head`` and ``total``
    (a tied head counts once, under ``embedding``).
    """
    import torch

    with torch.device("meta"):
        if isinstance(config, BPEConfig):
            from hat.bpe import BPEForCausalLM

            model = BPEForCausalLM(config)
        else:
            from hat.model import HATForCausalLM

            model = HATForCausalLM(config)
    names = {"pooler": "pooling", "embed": "embedding"}
    counts: dict[str, int] = {}
    seen: set[int] = set()
    for child_name, child in model.named_children():
        n = 0
        for p in child.parameters():
            if id(p) not in seen:  # tied weights count once
                seen.add(id(p))
                n += p.numel()
        counts[names.get(child_name, child_name)] = n
    counts["total"] = sum(counts.values())
    return counts
