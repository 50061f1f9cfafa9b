"""Tests for hat_kernels: the PyTorch references, the Triton kernels, dispatch and registration.

The Triton kernels run on CPU in the Triton interpreter, which is chosen when the kernels are
*decorated* (at the first `import hat_kernels`), from TRITON_INTERPRET. tests/conftest.py
imports the model, hence hat_kernels, before this module, so setting the variable here is
usually too late. Therefore:
- tests named `test_triton_*` run in-process when the kernels are interpreted (run
  `TRITON_INTERPRET=1 pytest tests/test_kernels.py` for per-test results), and otherwise are
  skipped and run by `test_interpreter_tests_in_subprocess`, a fresh pytest process with
  TRITON_INTERPRET=1 (works the same with or without pytest-xdist);
- `test_op_traces_into_triton_kernels` needs compiled (not interpreted) kernels and is mirrored
  the other way round.
GPU tests (`pytest -m gpu`) compare the compiled kernels with the reference in fp32 and bf16.
"""

import os

import torch

if not torch.cuda.is_available():  # on a GPU the kernels must be compiled, not interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hat_kernels  # noqa: E402
from hat_kernels import ops as kops  # noqa: E402
from hat_kernels.reference import (  # noqa: E402
    broadcast_words_reference,
    ragged_attention_pool_reference,
)

REPO = Path(__file__).resolve().parents[1]
INTERPRETED = kops.HAS_TRITON and kops._tp.INTERPRETED
HAS_CUDA = torch.cuda.is_available()

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# Word lengths (bytes) of the ragged batches. Realistic words are 4-6 bytes, capped at 100 by
# the splitter; the kernels must still be right for any length.
MIXED = [0, 1, 5, 3, 0, 1, 100, 7, 101, 2, 1, 150, 0]  # empty first/last, 1-byte, cap, over
LENGTH_CASES = {
    "mixed+tail": (MIXED, 5),  # 5 bytes past offsets[-1]
    "huge_word": ([2, 1500, 0, 3], 0),
    "single_word": ([7], 0),
    "single_empty_word": ([0], 4),
    "all_empty": ([0, 0, 0], 2),
    "one_byte_words": ([1] * 40, 1),
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def realistic_lengths(num_words: int, seed: int = 0) -> list[int]:
    """Word lengths like the splitter's on English: 1 + geometric (mean ~4.5), capped at 100,
    every 50th word empty."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(num_words, generator=g).clamp_min(1e-12)
    lengths = (1 + torch.floor(torch.log(u) / math.log(1 - 0.22))).clamp_max(100).long()
    lengths[::50] = 0
    return lengths.tolist()


def ragged_batch(lengths, heads, head_dim, tail=0, dtype=torch.float32, device="cpu", seed=0):
    """q [W, H, Dh], k and v [T, H, Dh] with T = sum(lengths) + tail, offsets [W+1] int64."""
    g = torch.Generator().manual_seed(seed)
    num_words, num_bytes = len(lengths), sum(lengths) + tail
    q = torch.randn(num_words, heads, head_dim, generator=g)
    k = torch.randn(num_bytes, heads, head_dim, generator=g)
    v = torch.randn(num_bytes, heads, head_dim, generator=g)
    offsets = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    to = dict(device=device, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), offsets.to(device)


def output_grad(like: torch.Tensor) -> torch.Tensor:
    """A fixed random gradient for an output."""
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(1)).to(like)


def pool_with_grads(fn, q, k, v, offsets):
    """(out, dq, dk, dv) of fn for a fixed random output gradient."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, offsets)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), output_grad(out))
    return out.detach(), dq, dk, dv


def triton_pool(q, k, v, offsets):
    return hat_kernels.ragged_attention_pool(q, k, v, offsets, impl="triton")


def assert_matches_reference(q, k, v, offsets, fn=triton_pool, tol=1e-5):
    """fn's output and q/k/v gradients agree with the reference:
    max error <= tol * max(max |ref|, 1) (inputs are O(1), so tol is absolute and relative).

    The reference runs in fp32 from the same (possibly low-precision) inputs.
    """
    got = pool_with_grads(fn, q, k, v, offsets)
    ref_inputs = [t.float() for t in (q, k, v)]
    want = pool_with_grads(ragged_attention_pool_reference, *ref_inputs, offsets)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == q.dtype, name
        assert torch.isfinite(a).all(), f"{name} has NaN/inf"
        err = (a.float() - b).abs().max().item() if b.numel() else 0.0
        scale = max(b.abs().max().item() if b.numel() else 0.0, 1.0)
        assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol} * {scale:.3g}"
    return got


def naive_pool(q, k, v, offsets):
    """The definition, one word at a time (a slow second reference)."""
    out = torch.zeros_like(q)
    for w in range(q.shape[0]):
        a, b = int(offsets[w]), int(offsets[w + 1])
        if b > a:
            scores = torch.einsum("hd,thd->ht", q[w], k[a:b]) / math.sqrt(q.shape[-1])
            out[w] = torch.einsum("ht,thd->hd", scores.softmax(-1), v[a:b])
    return out


@pytest.fixture
def interpreter():
    """Skip unless the Triton kernels run in the interpreter in this process."""
    pytest.importorskip("triton")
    if not INTERPRETED:
        pytest.skip("kernels compiled, not interpreted: see test_interpreter_tests_in_subprocess")


def run_pytest_subprocess(select: str, interpret: bool) -> None:
    """Run the tests of this file matching `select` in a fresh pytest process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TRITON_INTERPRET"))}
    # explicit "0" too: tests/conftest.py turns the interpreter on when no value is set
    env["TRITON_INTERPRET"] = "1" if interpret else "0"
    env["HAT_TRITON"] = "1"  # import triton even without a CUDA device
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-k", select, "-m", "not gpu"]
    cmd += ["-p", "no:cacheprovider", "-p", "no:xdist"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.lower(), report


# ---------------------------------------------------------------------------------------------
# the references (plain PyTorch, no triton)
# ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=10),
    tail=st.integers(0, 3),
    heads=st.integers(1, 2),
    head_dim=st.sampled_from([4, 8]),
)
def test_reference_matches_per_word_loop(lengths, tail, heads, head_dim):
    q, k, v, offsets = ragged_batch(lengths, heads, head_dim, tail, dtype=torch.float64)
    out = ragged_attention_pool_reference(q, k, v, offsets)
    torch.testing.assert_close(out, naive_pool(q, k, v, offsets))


def test_reference_gradcheck_float64():
    q, k, v, offsets = ragged_batch(
        [0, 2, 1, 4, 0], heads=2, head_dim=4, tail=2, dtype=torch.float64
    )
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: ragged_attention_pool_reference(q, k, v, offsets), inputs
    )


def test_reference_empty_words_and_tail_bytes_get_zeros():
    q, k, v, offsets = ragged_batch([0, 3, 0, 2, 0], heads=2, head_dim=8, tail=3)
    out, dq, dk, dv = pool_with_grads(ragged_attention_pool_reference, q, k, v, offsets)
    assert torch.isfinite(out).all() and torch.isfinite(dq).all()
    assert (out[[0, 2, 4]] == 0).all() and (dq[[0, 2, 4]] == 0).all()
    assert (dk[5:] == 0).all() and (dv[5:] == 0).all()


@pytest.mark.parametrize("num_bytes", [None, 20])
def test_broadcast_reference(num_bytes):
    x = torch.randn(5, 3)
    offsets = torch.tensor([0, 2, 2, 5, 6, 9])
    y = broadcast_words_reference(x, offsets, num_bytes)
    owner = [0, 0, 2, 2, 2, 3, 4, 4, 4]
    assert y.shape == (num_bytes or 9, 3)
    torch.testing.assert_close(y[:9], x[owner])
    assert (y[9:] == 0).all()
    assert torch.equal(hat_kernels.broadcast_words(x, offsets, num_bytes), y)  # auto on CPU


# ---------------------------------------------------------------------------------------------
# dispatch and registration
# ---------------------------------------------------------------------------------------------


def test_auto_on_cpu_is_the_reference():
    q, k, v, offsets = ragged_batch(MIXED, heads=2, head_dim=16, tail=3)
    assert hat_kernels.resolve_impl("auto", q) == "reference"
    assert hat_kernels.resolve_impl("triton", q) == "triton"
    want = ragged_attention_pool_reference(q, k, v, offsets)
    assert torch.equal(hat_kernels.ragged_attention_pool(q, k, v, offsets), want)
    assert torch.equal(hat_kernels.ragged_attention_pool(q, k, v, offsets, impl="reference"), want)
    with pytest.raises(ValueError, match="impl must be one of"):
        hat_kernels.ragged_attention_pool(q, k, v, offsets, impl="cuda")


def test_bad_shapes_are_rejected():
    q, k, v, offsets = ragged_batch([1, 2], heads=2, head_dim=8)
    with pytest.raises(ValueError, match="offsets"):
        hat_kernels.ragged_attention_pool(q, k, v, offsets[:-1])
    with pytest.raises(ValueError, match="expected q"):
        hat_kernels.ragged_attention_pool(q, k[:, :1], v, offsets)


def test_import_without_triton():
    """`import hat_kernels` works when triton is missing; impl='triton' then says why."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, hat_kernels\n"
        "assert not hat_kernels.HAS_TRITON\n"
        "q, k, v = torch.randn(2, 1, 4), torch.randn(3, 1, 4), torch.randn(3, 1, 4)\n"
        "offsets = torch.tensor([0, 1, 3])\n"
        "hat_kernels.ragged_attention_pool(q, k, v, offsets)\n"
        "try:\n"
        "    hat_kernels.ragged_attention_pool(q, k, v, offsets, impl='triton')\n"
        "except RuntimeError as err:\n"
        "    assert 'optional dependency triton' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('impl=triton without triton did not raise')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_cpu_triton_without_interpreter_raises():
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("kernels are interpreted in this process")
    q, k, v, offsets = ragged_batch([1, 2], heads=1, head_dim=16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        hat_kernels.ragged_attention_pool(q, k, v, offsets, impl="triton")


def test_compile_fullgraph_cpu_matches_eager():
    """torch.compile(fullgraph=True) traces the CPU path (no graph break, no host sync).

    backend="aot_eager" runs dynamo + AOTAutograd (forward and backward graphs) but not
    inductor's C++ codegen, which takes ~50 s per graph on this 2-core CPU machine; the GPU
    test below compiles with inductor.
    """

    def pool(q, k, v, offsets):
        return hat_kernels.ragged_attention_pool(q, k, v, offsets) * 2.0

    compiled = torch.compile(pool, fullgraph=True, backend="aot_eager", dynamic=True)
    for seed, lengths in enumerate([MIXED, [3, 0, 9, 1]]):  # two shapes: one dynamic graph
        batch = ragged_batch(lengths, heads=2, head_dim=16, tail=2, seed=seed)
        got = pool_with_grads(compiled, *batch)
        want = pool_with_grads(pool, *batch)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_op_traces_into_triton_kernels():
    """On the compiled-kernel path the ops are triton_ops: tracing them (as torch.compile does)
    puts the Triton kernels themselves in the graph. Checked with fake CUDA tensors, so this
    needs no GPU."""
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("kernels interpreted here: see test_compiled_kernel_tests_in_subprocess")
    from functorch.compile import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm.code)
        return gm

    def all_ops(q, k, v, offsets, dout, x):
        out, lse = torch.ops.hat_kernels.ragged_pool_fwd(q, k, v, offsets)
        grads = torch.ops.hat_kernels.ragged_pool_bwd(dout, q, k, v, offsets, out, lse)
        y = torch.ops.hat_kernels.broadcast_words_fwd(x, offsets, k.shape[0])
        return grads, torch.ops.hat_kernels.segment_sum(y, offsets, x.shape[0])

    with FakeTensorMode():  # W=3 words, T=9 bytes, H=2, Dh=64
        q = torch.empty(3, 2, 64, device="cuda")
        k, v = torch.empty(9, 2, 64, device="cuda"), torch.empty(9, 2, 64, device="cuda")
        offsets = torch.empty(4, device="cuda", dtype=torch.int64)
        x = torch.empty(3, 96, device="cuda")
        traced = aot_function(all_ops, fw_compiler=keep_graph)
        try:
            traced(q, k, v, offsets, torch.empty_like(q), x)
        except RuntimeError:  # running the graph needs CUDA; the graph was captured before
            if HAS_CUDA:
                raise
    assert graphs, "nothing was traced"
    assert graphs[0].count("triton_kernel_wrapper_functional(") == 4, graphs[0]


def test_compiled_kernel_tests_in_subprocess():
    pytest.importorskip("triton")
    if not INTERPRETED:
        pytest.skip("ran in-process")
    run_pytest_subprocess("test_op_traces_into_triton_kernels", interpret=False)


def test_interpreter_tests_in_subprocess():
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("the interpreter tests run in-process")
    run_pytest_subprocess("test_triton_", interpret=True)


# ---------------------------------------------------------------------------------------------
# Triton kernels in the interpreter (fp32; tolerances: max error <= 1e-5 * max |reference|)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(LENGTH_CASES))
def test_triton_pool_matches_reference(interpreter, case):
    lengths, tail = LENGTH_CASES[case]
    q, k, v, offsets = ragged_batch(lengths, heads=2, head_dim=16, tail=tail)
    out, dq, dk, dv = assert_matches_reference(q, k, v, offsets)
    empty = [w for w, n in enumerate(lengths) if n == 0]
    assert (out[empty] == 0).all() and (dq[empty] == 0).all()  # zeros, not NaN
    assert (dk[sum(lengths) :] == 0).all() and (dv[sum(lengths) :] == 0).all()  # no word's bytes


def test_triton_in_the_model_matches_reference(interpreter):
    """The model's pooling through the Triton kernel (ragged offsets from a real packed batch,
    padding word, EOD words) gives the reference path's loss and gradients."""
    import hat
    from hat.batching import collate_documents, document_words

    torch.manual_seed(0)
    model = hat.HATForCausalLM(hat.HATConfig.from_name("tiny"))
    texts = ["It's 3.14, not 1,000.", "日本語 👍🏽 " + "x" * 120, "a"]
    batch = collate_documents([document_words(t, model.splitter) for t in texts], pad_to=200)
    results = {}
    for impl in ("reference", "triton"):
        model.zero_grad()
        model.pooler.impl = impl
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[impl] = (loss.detach(), grads)
    torch.testing.assert_close(results["triton"][0], results["reference"][0])
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("head_dim,heads", [(16, 3), (32, 2), (48, 2), (64, 1), (96, 1), (128, 2)])
def test_triton_pool_head_dims(interpreter, head_dim, heads):
    lengths = realistic_lengths(30) + [0, 100]
    assert_matches_reference(*ragged_batch(lengths, heads, head_dim, tail=2))


@pytest.mark.parametrize("block_w,block_t", [(16, 64), (32, 32), (64, 128)])
def test_triton_pool_tile_configs(interpreter, block_w, block_t):
    """Other tile shapes than the interpreter's default one (the GPU autotunes among them)."""
    from hat_kernels.triton_pool import pool_backward, pool_forward

    config = dict(BLOCK_W=block_w, BLOCK_T=block_t)
    q, k, v, offsets = ragged_batch(MIXED + [3] * 40 + [0, 260], heads=2, head_dim=32, tail=3)
    out, lse = pool_forward(q, k, v, offsets, config=config)
    grads = pool_backward(output_grad(out), q, k, v, offsets, out, lse, config=config)
    want = pool_with_grads(ragged_attention_pool_reference, q, k, v, offsets)
    for a, b in zip((out, *grads), want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_triton_pool_fp16(interpreter):
    """Low-precision inputs: probabilities and dS are rounded to fp16 for the matmuls."""
    q, k, v, offsets = ragged_batch(MIXED, heads=2, head_dim=32, tail=2, dtype=torch.float16)
    assert_matches_reference(q, k, v, offsets, tol=1e-2)


def test_triton_pool_opcheck(interpreter):
    """Schema, fake (meta) function, autograd registration and AOT dispatch of the ops."""
    q, k, v, offsets = ragged_batch([0, 2, 5, 1], heads=1, head_dim=16, tail=2)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    torch.library.opcheck(torch.ops.hat_kernels.ragged_pool_fwd.default, (*inputs, offsets))
    x = torch.randn(4, 20, requires_grad=True)
    torch.library.opcheck(torch.ops.hat_kernels.broadcast_words_fwd.default, (x, offsets, 10))


def test_triton_compile_fullgraph(interpreter):
    """The Triton path (an opaque custom op in the interpreter) compiles with fullgraph=True."""

    def pool(q, k, v, offsets):
        return triton_pool(q, k, v, offsets) + 1.0

    batch = ragged_batch([4, 0, 6, 1], heads=2, head_dim=16, tail=1)
    compiled = torch.compile(pool, fullgraph=True, backend="aot_eager")
    for a, b in zip(pool_with_grads(compiled, *batch), pool_with_grads(pool, *batch)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dim,num_bytes", [(20, None), (200, "tail")])
def test_triton_broadcast_matches_reference(interpreter, dim, num_bytes):
    lengths = [0, 3, 1, 0, 120, 2, 0]
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    n = sum(lengths) + 4 if num_bytes == "tail" else None
    x = torch.randn(len(lengths), dim, requires_grad=True)
    y = hat_kernels.broadcast_words(x, offsets, n, impl="triton")
    y_ref = broadcast_words_reference(x, offsets, n)
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)  # a gather: exact
    g = torch.randn_like(y_ref)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5)  # segment sums, any order


# ---------------------------------------------------------------------------------------------
# GPU: compiled kernels (pytest -m gpu)
# tolerances, as max error / max |reference| (the reference runs in fp32 from the same inputs):
#   fp32 1e-4 (IEEE fp32 matmuls, other summation order); bf16 and fp16 3e-2 (probabilities
#   and dS are rounded to the input dtype before their matmuls, as in FlashAttention-2)
# ---------------------------------------------------------------------------------------------

GPU_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-2}


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(LENGTH_CASES) + ["huge_5000"])
def test_gpu_pool_matches_reference(dtype, case):
    lengths, tail = LENGTH_CASES.get(case, ([1, 5000, 2], 7))
    batch = ragged_batch(lengths, heads=4, head_dim=64, tail=tail, dtype=dtype, device="cuda")
    assert_matches_reference(*batch, tol=GPU_TOL[dtype])


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim,heads", [(16, 2), (48, 3), (64, 4), (96, 6), (128, 16)])
def test_gpu_pool_realistic_batches(dtype, head_dim, heads):
    torch.manual_seed(0)
    lengths = realistic_lengths(5000)  # about 25k bytes: many tiles, autotuned configs
    batch = ragged_batch(lengths, heads, head_dim, tail=3, dtype=dtype, device="cuda")
    assert_matches_reference(*batch, tol=GPU_TOL[dtype])


@gpu
@needs_cuda
def test_gpu_auto_takes_the_reference_for_mixed_dtypes():
    """With impl "auto", Triton is picked from q; k and v in another dtype must fall back to the
    reference (what it would compute), not raise the explicit-Triton error."""
    q, k, v, offsets = ragged_batch([3, 1, 7], 2, 64, tail=1, dtype=torch.float32, device="cuda")
    out = hat_kernels.ragged_attention_pool(q, k.bfloat16(), v.bfloat16(), offsets)
    reference = hat_kernels.ragged_attention_pool_reference(q, k.bfloat16(), v.bfloat16(), offsets)
    torch.testing.assert_close(out, reference)
    with pytest.raises(ValueError, match="one dtype"):
        hat_kernels.ragged_attention_pool(q, k.bfloat16(), v, offsets, impl="triton")


@gpu
@needs_cuda
def test_gpu_auto_dispatch_and_compile():
    batch = ragged_batch(realistic_lengths(300), 4, 64, tail=2, dtype=torch.bfloat16, device="cuda")
    assert hat_kernels.resolve_impl("auto", batch[0]) == "triton"

    def pool(q, k, v, offsets):
        return hat_kernels.ragged_attention_pool(q, k, v, offsets) * 2.0

    compiled = torch.compile(pool, fullgraph=True)  # inductor, traced into the Triton kernels
    for a, b in zip(pool_with_grads(compiled, *batch), pool_with_grads(pool, *batch)):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@gpu
@needs_cuda
def test_gpu_opcheck():
    q, k, v, offsets = ragged_batch([0, 2, 5, 1, 30], 2, 64, tail=2, device="cuda")
    inputs = [t.requires_grad_() for t in (q, k, v)]
    torch.library.opcheck(torch.ops.hat_kernels.ragged_pool_fwd.default, (*inputs, offsets))
    x = torch.randn(5, 96, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.hat_kernels.broadcast_words_fwd.default, (x, offsets, 40))


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_broadcast_matches_reference(dtype):
    lengths = realistic_lengths(2000) + [0, 700]
    offsets = torch.tensor([0, *lengths], device="cuda").cumsum(0)
    x = torch.randn(len(lengths), 768, device="cuda", dtype=dtype, requires_grad=True)
    n = sum(lengths) + 5
    y = hat_kernels.broadcast_words(x, offsets, n)
    y_ref = broadcast_words_reference(x, offsets, n)
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    g = torch.randn_like(y_ref)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_ref,) = torch.autograd.grad(y_ref.float(), x, g.float())
    torch.testing.assert_close(dx.float(), dx_ref.float(), atol=GPU_TOL[dtype], rtol=GPU_TOL[dtype])
