"""Plain-PyTorch references that define what the fused kernels compute.

Every kernel in this package must agree with these functions (values and gradients);
the tests compare against them and they are the CPU implementation.

Both avoid host synchronisation where the output shape allows it: the byte -> word map is
found on the device with ``searchsorted`` instead of ``repeat_interleave`` (which needs the
byte count on the host), so ``torch.compile(fullgraph=True)`` traces them without a break.
"""

from __future__ import annotations

import math

import torch


def word_of_byte(offsets: torch.Tensor, num_bytes: int) -> torch.Tensor:
    """Owning word of every byte position: [num_bytes] in [0, W].

    Word w owns bytes offsets[w]:offsets[w+1]; a byte at or past offsets[-1] gets W (no word).
    The byte's word is the number of words that end at or before it.
    """
    positions = torch.arange(num_bytes, device=offsets.device, dtype=offsets.dtype)
    return torch.searchsorted(offsets[1:], positions, right=True)


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
    # byte -> owning word; bytes past offsets[-1] go to a scratch row W that is dropped at the end
    owner = word_of_byte(offsets, k.shape[0])  # [T]
    rows = num_words + 1
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 at least; fp64 for gradcheck
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    qf = torch.cat([qf, qf.new_zeros(1, num_heads, head_dim)])  # [W+1, H, Dh]
    scores = (qf[owner] * kf).sum(-1) / math.sqrt(head_dim)  # [T, H]
    # segment softmax: subtract each word's max for stability
    word_max = torch.full((rows, num_heads), -math.inf, device=q.device, dtype=acc)
    word_max = word_max.scatter_reduce(
        0, owner[:, None].expand(-1, num_heads), scores, "amax", include_self=True
    )
    weights = torch.exp(scores - word_max[owner])  # [T, H]
    denom = torch.zeros(rows, num_heads, device=q.device, dtype=acc).index_add(0, owner, weights)
    pooled = torch.zeros(rows, num_heads, head_dim, device=q.device, dtype=acc)
    pooled = pooled.index_add(0, owner, weights[..., None] * vf)  # [W+1, H, Dh]
    pooled = pooled / denom.clamp_min(1e-30)[..., None]  # empty words: 0 / tiny = 0
    return pooled[:num_words].to(q.dtype)


def broadcast_words_reference(
    word_values: torch.Tensor, offsets: torch.Tensor, num_bytes: int | None = None
) -> torch.Tensor:
    """Give every byte its word's vector: [W, D] -> [offsets[-1], D].

    The backward of this gather is a segment sum over each word's bytes.
    num_bytes (optional): the output length, >= offsets[-1]; rows past offsets[-1] are zero.
    Passing it avoids reading offsets[-1] on the host (a device sync).
    """
    if num_bytes is None:
        lengths = offsets[1:] - offsets[:-1]
        return torch.repeat_interleave(word_values, lengths, dim=0, output_size=int(offsets[-1]))
    padded = torch.cat([word_values, word_values.new_zeros(1, word_values.shape[1])])  # [W+1, D]
    return padded[word_of_byte(offsets, num_bytes)]
