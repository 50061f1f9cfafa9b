"""torch.library registration of the Triton kernels and the impl dispatch.

Ops (namespace ``hat_kernels``), registered only when triton is installed:

    ragged_pool_fwd(q, k, v, offsets) -> (out, lse)                  autograd: ragged_pool_bwd
    ragged_pool_bwd(dout, q, k, v, offsets, out, lse) -> (dq, dk, dv)
    broadcast_words_fwd(word_values, offsets, num_bytes) -> byte_values   autograd: segment_sum
    segment_sum(grad, offsets, num_words) -> word_grad

They are ``torch.library.triton_op``s: torch.compile sees through them to the Triton kernels
(launched with ``torch.library.wrap_triton``), and ``register_autograd`` gives them gradients.
Under the Triton interpreter (TRITON_INTERPRET=1, CPU tests) they are opaque
``torch.library.custom_op``s instead (see `_define_op`). The reference path is plain PyTorch,
which autograd and torch.compile handle natively.

(No ``from __future__ import annotations`` here: torch.library infers op schemas from the
annotations of the registered functions at runtime.)
"""

import os

import torch
from torch import Tensor

from hat_kernels.reference import broadcast_words_reference, ragged_attention_pool_reference

# Triton kernels run on a CUDA device, or on the CPU in Triton's interpreter (tests). Elsewhere
# importing triton (and torch._inductor with it, for triton_op) would cost seconds at every
# start for nothing: only the reference path can run there. HAT_TRITON=1 imports it anyway
# (to inspect what torch.compile makes of the ops on a CPU machine).
KERNELS_CAN_RUN = (
    torch.cuda.is_available()
    or os.environ.get("TRITON_INTERPRET") == "1"
    or os.environ.get("HAT_TRITON") == "1"
)
try:  # triton is optional: without it only the reference path exists
    if not KERNELS_CAN_RUN:
        raise ImportError("not imported: no CUDA device (set HAT_TRITON=1 to import it anyway)")
    from hat_kernels import triton_pool as _tp

    # called by name inside the ops: torch finds the kernels of a triton_op by reading its source
    from hat_kernels.triton_pool import broadcast_forward, pool_backward, pool_forward, segment_sum

    TRITON_IMPORT_ERROR: Exception | None = None
except ImportError as err:
    _tp = None
    TRITON_IMPORT_ERROR = err

HAS_TRITON = _tp is not None
IMPLS = ("auto", "triton", "reference")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_impl(impl: str, x: Tensor) -> str:
    """Which path runs: "auto" means Triton for CUDA tensors of a kernel dtype (fp32, bf16,
    fp16) when triton is installed, the reference otherwise (CPU, float64 for gradcheck)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        use_triton = HAS_TRITON and x.is_cuda and x.dtype in TRITON_DTYPES
        return "triton" if use_triton else "reference"
    return impl


def _check_triton_usable(x: Tensor) -> None:
    """Clear errors instead of a failure deep inside triton."""
    if not HAS_TRITON:
        raise RuntimeError(
            "impl='triton' needs the optional dependency triton (pip install 'hat-lm[triton]'); "
            f"importing it failed: {TRITON_IMPORT_ERROR}. Use impl='reference' or 'auto'."
        )
    if not x.is_cuda and not _tp.INTERPRETED:
        raise RuntimeError(
            "impl='triton' on CPU tensors runs only in the Triton interpreter: set "
            "TRITON_INTERPRET=1 before hat_kernels is first imported (slow, for tests), "
            "or use impl='reference' on CPU."
        )


def _define_op(name: str, fake):
    """Register `fn` as op `name`: a triton_op, or an opaque custom_op in the interpreter.

    A triton_op is traced *into* by torch.compile (its kernels appear in the graph, via
    wrap_triton). The Triton interpreter cannot be traced that way (wrap_triton hands back the
    raw kernel, which would then run on fake tensors), so there the op is an opaque custom_op
    with a shape-only fake: same schema, autograd and dispatch, testable with opcheck on CPU.
    """

    def register(fn):
        if _tp.INTERPRETED:
            op = torch.library.custom_op(name, fn, mutates_args=())
            op.register_fake(fake)
            return op
        return torch.library.triton_op(name, fn, mutates_args=())

    return register


def _pool_fwd_fake(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def _pool_bwd_fake(dout, q, k, v, offsets, out, lse) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _bcast_fwd_fake(word_values: Tensor, offsets: Tensor, num_bytes: int) -> Tensor:
    return word_values.new_empty(num_bytes, word_values.shape[1])


def _segment_sum_fake(grad: Tensor, offsets: Tensor, num_words: int) -> Tensor:
    return grad.new_empty(num_words, grad.shape[1])


if HAS_TRITON:

    @_define_op("hat_kernels::ragged_pool_fwd", _pool_fwd_fake)
    def _ragged_pool_fwd(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        return pool_forward(q, k, v, offsets)

    @_define_op("hat_kernels::ragged_pool_bwd", _pool_bwd_fake)
    def _ragged_pool_bwd(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, out: Tensor, lse: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return pool_backward(dout, q, k, v, offsets, out, lse)

    def _pool_setup_context(ctx, inputs, output) -> None:
        q, k, v, offsets = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, offsets, out, lse)

    def _pool_backward(ctx, dout: Tensor, _dlse: Tensor):
        # lse is an internal by-product (the public function drops it): its gradient is ignored
        q, k, v, offsets, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.hat_kernels.ragged_pool_bwd(dout, q, k, v, offsets, out, lse)
        return dq, dk, dv, None

    _ragged_pool_fwd.register_autograd(_pool_backward, setup_context=_pool_setup_context)

    @_define_op("hat_kernels::broadcast_words_fwd", _bcast_fwd_fake)
    def _broadcast_words_fwd(word_values: Tensor, offsets: Tensor, num_bytes: int) -> Tensor:
        return broadcast_forward(word_values, offsets, num_bytes)

    @_define_op("hat_kernels::segment_sum", _segment_sum_fake)
    def _segment_sum(grad: Tensor, offsets: Tensor, num_words: int) -> Tensor:
        return segment_sum(grad, offsets, num_words)

    def _bcast_setup_context(ctx, inputs, output) -> None:
        word_values, offsets, _num_bytes = inputs
        ctx.save_for_backward(offsets)
        ctx.num_words = word_values.shape[0]

    def _bcast_backward(ctx, grad: Tensor):
        (offsets,) = ctx.saved_tensors
        return torch.ops.hat_kernels.segment_sum(grad, offsets, ctx.num_words), None, None

    _broadcast_words_fwd.register_autograd(_bcast_backward, setup_context=_bcast_setup_context)


def ragged_attention_pool(
    q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, impl: str = "auto"
) -> Tensor:
    """Attention pooling of each word's bytes with one query per word (and head).

    q [W, H, Dh], k and v [T, H, Dh], offsets [W+1] int64 word starts on the byte axis
    (offsets[0] == 0, non-decreasing, offsets[-1] <= T; bytes past offsets[-1] belong to no word).
    Returns [W, H, Dh] in q's dtype: softmax(q·k / sqrt(Dh)) over the word's bytes applied to v,
    zeros for an empty word. Differentiable in q, k and v.

    impl: "auto" (Triton for CUDA tensors of one kernel dtype, the PyTorch reference
    otherwise), "triton" or "reference". Neither path syncs with the host.
    """
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or k.shape[1:] != q.shape[1:]:
        raise ValueError(
            f"expected q [W, H, Dh], k = v [T, H, Dh]; got {q.shape}, {k.shape}, {v.shape}"
        )
    if offsets.shape != (q.shape[0] + 1,):
        raise ValueError(f"offsets must be [W+1] = [{q.shape[0] + 1}], got {list(offsets.shape)}")
    mixed = not (q.dtype == k.dtype == v.dtype)  # "auto" cannot take the kernel, so it won't
    if resolve_impl(impl, q) == "reference" or (impl == "auto" and mixed):
        return ragged_attention_pool_reference(q, k, v, offsets)
    _check_triton_usable(q)
    if mixed or q.dtype not in TRITON_DTYPES:
        raise ValueError(
            f"impl='triton' needs q, k, v of one dtype among {TRITON_DTYPES}; "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    out, _lse = torch.ops.hat_kernels.ragged_pool_fwd(q, k, v, offsets.to(torch.int64))
    return out


def broadcast_words(
    word_values: Tensor, offsets: Tensor, num_bytes: int | None = None, impl: str = "auto"
) -> Tensor:
    """Give every byte its word's vector: [W, D] -> [num_bytes, D].

    num_bytes defaults to offsets[-1], which costs a host sync: pass it (e.g. the packed byte
    count T) to avoid that; rows past offsets[-1] are then zeros. The backward is a segment sum
    of the byte gradients over each word (a Triton kernel on the triton path).
    """
    if resolve_impl(impl, word_values) == "reference":
        return broadcast_words_reference(word_values, offsets, num_bytes)
    _check_triton_usable(word_values)
    if word_values.dtype not in TRITON_DTYPES:
        raise ValueError(
            f"impl='triton' needs a dtype among {TRITON_DTYPES}, got {word_values.dtype}"
        )
    if num_bytes is None:
        num_bytes = int(offsets[-1])  # host sync, documented above
    return torch.ops.hat_kernels.broadcast_words_fwd(
        word_values, offsets.to(torch.int64), num_bytes
    )
