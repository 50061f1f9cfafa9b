"""hat_kernels: fused kernels for the ragged steps of HAT (installed from the kernels/ folder).

Imported as ``hat_kernels`` (never ``kernels``, which is an unrelated PyPI package).
"""

from hat_kernels.reference import broadcast_words_reference, ragged_attention_pool_reference


def ragged_attention_pool(q, k, v, offsets, impl: str = "auto"):
    """Dispatching entry point (the Triton kernels issue replaces this with torch.library ops)."""
    if impl not in ("auto", "reference"):
        raise ValueError(f"impl={impl!r} is not available yet; use 'auto' or 'reference'")
    return ragged_attention_pool_reference(q, k, v, offsets)


__all__ = ["ragged_attention_pool", "ragged_attention_pool_reference", "broadcast_words_reference"]
