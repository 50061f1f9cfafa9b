"""Plain-PyTorch references that define what the fused kernels compute.

Every kernel in this package must agree with these functions (values and gradients);
the tests compare against them and they are the CPU implementation.
"""

from __future__ import annotations

import math

import torch


def ragged_attention_pool_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Pool each word's bytes with one query per word.

    q: [W, H, Dh] one query per word and head.
    k, v: [T, H, Dh] keys and values of the bytes (all words concatenated).
    offsets: [W+1] int64, word w owns bytes offsets[w]:offsets[w+1] (non-decreasing,
        offsets[0] == 0, offsets[-1] <= T).
    Returns [W, H, Dh]: softmax(q·k / sqrt(Dh)) over the word's bytes, applied to v;
    an empty word gives zeros. Softmax and sums run in fp32; the result has q's dtype.
    """
    num_words, num_heads, head_dim = q.shape
    lengths = offsets[1:] - offsets[:-1]  # [W]
    # byte -> owning word; bytes past offsets[-1] belong to no word and are dropped
    num_bytes = int(offsets[-1])
    word_of_byte = torch.repeat_interleave(
        torch.arange(num_words, device=q.device), lengths, output_size=num_bytes
    )  # [Tw]
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 at least; fp64 for gradcheck
    qf, kf, vf = q.to(acc), k[:num_bytes].to(acc), v[:num_bytes].to(acc)
    scores = (qf[word_of_byte] * kf).sum(-1) / math.sqrt(head_dim)  # [Tw, H]
    # segment softmax: subtract each word's max for stability
    word_max = torch.full((num_words, num_heads), -math.inf, device=q.device, dtype=acc)
    word_max = word_max.scatter_reduce(
        0, word_of_byte[:, None].expand(-1, num_heads), scores, "amax", include_self=True
    )
    weights = torch.exp(scores - word_max[word_of_byte])  # [Tw, H]
    denom = torch.zeros(num_words, num_heads, device=q.device, dtype=acc).index_add(0, word_of_byte, weights)
    pooled = torch.zeros(num_words, num_heads, head_dim, device=q.device, dtype=acc)
    pooled = pooled.index_add(0, word_of_byte, weights[..., None] * vf)  # [W, H, Dh]
    pooled = pooled / denom.clamp_min(1e-30)[..., None]  # empty words: 0 / tiny = 0
    return pooled.to(q.dtype)


def broadcast_words_reference(word_values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Give every byte its word's vector: [W, D] -> [offsets[-1], D].

    The backward of this gather is a segment sum over each word's bytes.
    """
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(word_values, lengths, dim=0, output_size=int(offsets[-1]))
