"""hat_kernels: fused kernels for the ragged steps of HAT (installed from the kernels/ folder).

Imported as ``hat_kernels`` (never ``kernels``, which is an unrelated PyPI package).

- ``ragged_attention_pool(q, k, v, offsets, impl="auto")``: one query per word attends to
  its word's bytes (Triton forward + backward on CUDA, the PyTorch reference on CPU).
- ``broadcast_words(word_values, offsets, num_bytes=None, impl="auto")``: word vectors to
  their bytes; its backward is a Triton segment sum.

Triton is optional: without it ``impl="auto"`` always takes the reference path and
``impl="triton"`` raises a clear error. The ops are registered with ``torch.library`` under
the ``hat_kernels`` namespace (see ``hat_kernels.ops``).
"""

from hat_kernels.ops import HAS_TRITON, broadcast_words, ragged_attention_pool, resolve_impl
from hat_kernels.reference import broadcast_words_reference, ragged_attention_pool_reference

__all__ = [
    "HAS_TRITON",
    "broadcast_words",
    "broadcast_words_reference",
    "ragged_attention_pool",
    "ragged_attention_pool_reference",
    "resolve_impl",
]
