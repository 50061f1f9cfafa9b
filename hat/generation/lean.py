"""How a cached generation step calls the model's modules.

A step runs a whole stack on one position: a few kilobytes of activations, a hundred small
ops per layer, so on a CPU (and on a GPU without graphs) it is bound by per-call overhead.
Besides the ops, ``nn.Module.__call__`` and the ``nn.Module.__getattr__`` behind every
``self.weight`` cost as much as a small op each. ``lean_view`` removes that overhead without a
second implementation: it runs the modules' own ``forward`` code on plain Python objects
holding the same parameters (the default). ``compile_step=True`` instead runs the usual
step (one new byte or token, no recomputed columns) as static-shape functions of the same
modules — caches read whole under a position mask, positions as tensors — compiled once with
``torch.compile`` (``StaticStep``): no guards fail and nothing recompiles as the byte caches
slide (a backbone cache that has to grow recompiles the word graph once).
On a GPU the compiled steps replay as CUDA graphs (``compile_step=True`` means torch.compile's
``mode="reduce-overhead"`` there): one launch per step instead of one per kernel. A graph
writes its caches in place, so those keep their addresses from one ``generate`` call to the
next (``StaticBuffers``), as transformers' static cache does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks

from hat.compiling import compile_unavailable

logger = logging.getLogger(__name__)


class _LeanLinear:
    """``nn.Linear`` (no bias) as one ``mm`` with the transposed weight (a view: in-place
    weight updates show), the very call ``F.linear`` ends in for 2-D inputs."""

    __slots__ = ("weight", "weight_t")

    def __init__(self, linear: nn.Linear) -> None:
        self.weight, self.weight_t = linear.weight, linear.weight.t()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, self.weight_t) if x.dim() == 2 else F.linear(x, self.weight)


@functools.cache
def _lean_class(cls: type) -> type:
    """A plain class with ``cls``'s methods (not ``nn.Module``'s) whose ``__call__`` is
    ``cls.forward``."""
    members: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        if base not in (nn.Module, object):
            members.update(
                (k, v)
                for k, v in vars(base).items()
                if not (k.startswith("__") and k.endswith("__"))
            )
    members["__call__"] = cls.forward
    return type(f"Lean{cls.__name__}", (), members)


def lean_view(module: nn.Module) -> Any:
    """The module tree as plain objects: the same parameters, buffers, settings and
    ``forward`` code, without ``nn.Module`` dispatch. Build one per use (it holds references
    taken now: replacing a parameter or submodule later is not seen; changing values in place
    is). A module with hooks, and every module while global hooks are set, stays itself."""
    if (
        module._forward_hooks
        or module._forward_pre_hooks
        or module_hooks._global_forward_hooks
        or module_hooks._global_forward_pre_hooks
    ):
        return module
    if type(module) is nn.Linear and module.bias is None:
        return _LeanLinear(module)
    if type(module) is nn.ModuleList:
        return [lean_view(m) for m in module]
    view = object.__new__(_lean_class(type(module)))
    view.__dict__.update((k, v) for k, v in vars(module).items() if not k.startswith("_"))
    view.__dict__.update(module._parameters)
    view.__dict__.update(module._buffers)
    view.__dict__.update(
        (k, None if m is None else lean_view(m)) for k, m in module._modules.items()
    )
    return view


class StaticStep:
    """``fn``, a step function whose inputs keep their shapes from step to step, under
    ``torch.compile`` (``generate(compile_step=True)``): one graph per shape of its arguments.

    Checking dynamo's guards costs ~200 us per call on a 2-core CPU (a guard per parameter,
    cache and setting), as much as a small layer. An engine's calls pass the same modules and
    caches, so only the first call with each shape of the arguments, and the first after
    ``reshaped()`` (a cache grew), goes through dynamo and checks them all. The later calls
    of that shape run the code dynamo ran then (``dynamo_code``: its bytecode around the
    compiled graph) as a plain function, without dynamo's frame hook and cache lookup (~80 us
    a call on that CPU, 1.17x HAT ``small``'s step at batch 1). Where this torch does not show
    which code ran, they check only the guards that tell the compiled graphs apart
    (``set_stance(skip_guard_eval_unsafe=True)``). Either way a module or
    parameter of the model replaced by another object in the middle of a ``generate`` call
    would go unseen; values changed in place are always seen."""

    def __init__(self, fn: Any, mode: str = "default", device: str = "cpu") -> None:
        """``mode``: torch.compile's; with a CUDA-graph mode each call is a step of its own
        and returns copies of the graph's outputs. On a CPU the generated code calls its
        kernels from C++ (inductor's ``cpp_wrapper``), not from Python."""
        # the mode's inductor options, without the generated wrapper's size and stride assert
        # on every input at every call: the guards pin the shapes and strides a graph was
        # built for, checked on each shape's first call (~4 % of HAT `small`'s step at batch 1
        # on a CPU; BENCHMARKS.md)
        from torch._inductor import list_mode_options

        options = {**list_mode_options(mode, False), "size_asserts": False}
        if device == "cpu":
            options["cpp_wrapper"] = True
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=False, options=options)
        # argument shapes called with every guard checked -> the code dynamo ran for them
        # (None: not known, call through dynamo checking the fewest guards)
        self.seen: dict[tuple, Any] = {}
        # a CUDA-graph mode on a CPU too: how the tests run this host logic without a GPU
        self.cuda_graphs = mode in CUDA_GRAPH_MODES

    def reshaped(self) -> None:
        """Something the arguments do not show changed shape: check every guard again."""
        self.seen.clear()

    def __call__(self, *args: torch.Tensor | None) -> Any:
        shapes = tuple(None if a is None else tuple(a.shape) for a in args)
        if self.cuda_graphs:
            # each call is a step of its own: a graph's outputs live in its memory pool until
            # its next replay overwrites them, so they are copied out below
            torch.compiler.cudagraph_mark_step_begin()
        if shapes not in self.seen:
            out = self.compiled(*args)
            self.seen[shapes] = dynamo_code(self.fn, self.compiled, args)
        elif (direct := self.seen[shapes]) is not None:
            out = direct(*args)
        else:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                out = self.compiled(*args)
        return (
            torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, out)
            if self.cuda_graphs
            else out
        )


def dynamo_code(fn: Any, compiled: Any, args: tuple) -> Any:
    """The code dynamo ran for the call ``compiled(*args)`` just made (``compiled``:
    ``torch.compile(fn)``), as a function of ``args``: dynamo's bytecode for ``fn`` (read the
    inputs, call the compiled graph, build the outputs), so calling it is the compiled call
    without dynamo's frame hook and cache lookup. None where that is not known: ``compiled``
    is not dynamo's, or this torch has no cache entry list. (vLLM's compiled models also skip
    dynamo after their first call, taking dynamo's code from its bytecode hook.)

    Dynamo keeps a code object's cache entries most recently used first, so the call's entry
    is the first; its guards are checked once more here, on the call's own arguments."""
    if not hasattr(compiled, "_torchdynamo_orig_callable"):  # not torch.compile's wrapper
        return None
    try:
        from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list
    except ImportError:
        return None
    func, bound = (fn.__func__, (fn.__self__,)) if inspect.ismethod(fn) else (fn, ())
    entries = _debug_get_cache_entry_list(func.__code__)
    if not entries:
        return None
    call = inspect.signature(func).bind(*bound, *args)
    call.apply_defaults()  # *args that got nothing: the empty tuple, as dynamo's locals hold it
    if not entries[0].guard_manager.check(dict(call.arguments)):
        return None
    try:
        code = types.FunctionType(
            entries[0].code, func.__globals__, func.__name__, func.__defaults__, func.__closure__
        )
    except (TypeError, ValueError):  # dynamo's code closes over other cells than fn
        return None
    return functools.partial(code, *bound) if bound else code


class StaticBuffers:
    """Cache buffers that keep their addresses from one ``generate`` call to the next.

    A CUDA graph reads and writes its inputs at the addresses it was recorded with; a KV cache
    allocated anew by every call would make every call record its graphs again. An engine
    hands each cache buffer it allocated to ``hold``, under a name (``"encoder.0.k"``), and
    gets back the buffer held under that name by an earlier call, zeroed, when it has the same
    shape, dtype and device; otherwise the new buffer becomes the one held (the old one is
    released: at most one call's buffers are kept, so calls whose shapes alternate record
    their graphs anew each time). Held per model (``for_model``)."""

    def __init__(self) -> None:
        self.held: dict[str, torch.Tensor] = {}

    @staticmethod
    def for_model(model: nn.Module) -> StaticBuffers:
        """The model's buffers (created on first use; not part of its state dict)."""
        if "_static_buffers" not in model.__dict__:
            model.__dict__["_static_buffers"] = StaticBuffers()
        return model.__dict__["_static_buffers"]

    def hold(self, name: str, new: torch.Tensor, reuse: bool = True) -> torch.Tensor:
        """``new`` (a freshly zeroed buffer), or with ``reuse`` the one held under ``name`` if
        it has the same shape, dtype and device (zeroed). ``reuse=False``: hold ``new`` as it
        is (a grown cache, its contents copied from the old)."""
        old = self.held.get(name)
        same = old is not None and (old.shape, old.dtype, old.device) == (
            new.shape,
            new.dtype,
            new.device,
        )
        if reuse and same:
            return old.zero_()
        torch._dynamo.mark_static_address(new)  # cudagraphs: no copy in, writes allowed
        self.held[name] = new
        return new

    def release(self) -> None:
        """Drop the held buffers (their memory returns once no graph or cache uses them); the
        next call allocates and records anew."""
        self.held.clear()

    def hold_caches(self, prefix: str, caches: list, reuse: bool = True) -> None:
        """Swap each ``KVCache``'s k and v for the buffers held as ``prefix.i.k`` / ``.v``."""
        for i, cache in enumerate(caches):
            cache.k = self.hold(f"{prefix}.{i}.k", cache.k, reuse)
            cache.v = self.hold(f"{prefix}.{i}.v", cache.v, reuse)


def graph_chooser(choose: Any, mode: str | None) -> Any:
    """The ``Chooser`` a compiled step runs in its graph ("fused"), or None for an eager step
    (it returns logits). Under CUDA graphs its automaton's tables, which keep their addresses
    from call to call, are read in place instead of copied in at every replay."""
    if mode is None or choose is None:
        return None
    if mode in CUDA_GRAPH_MODES:
        for table in choose.automaton.tables():
            torch._dynamo.mark_static_address(table)
    return choose


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_MODES = ("default", *CUDA_GRAPH_MODES, "max-autotune-no-cudagraphs")


def compile_mode(setting: bool | str, device: str) -> str | None:
    """``compile_step`` as a ``torch.compile`` mode for ``device``, or None (eager): True is
    ``"reduce-overhead"`` (CUDA graphs) on a GPU and ``"default"`` elsewhere; a mode is
    itself. None, with a warning, where inductor cannot compile (``hat.compiling``)."""
    if not compile_possible(bool(setting), device):
        return None
    if setting is True:
        return "reduce-overhead" if device == "cuda" else "default"
    return setting


def step_path(name: str, compile: bool | str, device: str, batch: int) -> tuple[str | None, bool]:
    """How a cached engine's usual step runs (logged once): its ``torch.compile`` mode (None:
    eager) and whether its graphs attend to the cache blocks in reach (``key_blocks``) rather
    than to every slot."""
    mode = compile_mode(compile, device)
    announce(name, mode, device)
    return mode, key_blocks(mode, device, batch)


def key_blocks(mode: str | None, device: str, batch: int) -> bool:
    """Whether a step's compiled graph attends through a BlockMask listing only the blocks of
    cached keys it may see (flex attention, ``columns.blocks_in_reach``) rather than SDPA over
    every slot under a dense mask: on a CPU above batch 1, where it was measured faster (HAT `small`
    1.04x at batch 4, 1.12x at 32; 0.98x at batch 1, whose caches fit in L2: BENCHMARKS.md);
    a GPU keeps SDPA until it is measured there."""
    return mode is not None and device == "cpu" and batch > 1


def compile_possible(compile: bool, device: str) -> bool:
    """``compile_step`` as it can run here: False, with a warning, where inductor cannot
    compile (Windows, a CPU without a C++ compiler; ``hat.compiling``)."""
    why = compile and compile_unavailable(device)
    if why:
        _warn_no_compile(why)
    return compile and not why


@functools.cache
def _warn_no_compile(why: str) -> None:
    logger.warning("compile_step=True but %s: the cached step runs eagerly", why)


@functools.cache
def announce(model: str, mode: str | None, device: str) -> None:
    """Log once per process which path a model's cached generation runs."""
    path = "eager modules through lean views"
    if mode is not None:
        graphs = " as CUDA graphs" if mode in CUDA_GRAPH_MODES and device == "cuda" else ""
        path = f"torch.compile'd static-shape steps (mode {mode!r}){graphs}"
    hint = "" if mode is not None else "; compile_step=True compiles static-shape steps"
    logger.info("%s cached generation on %s: %s%s", model, device, path, hint)
