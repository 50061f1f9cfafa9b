"""How a cached generation step calls the model's modules.

A step runs a whole stack on one position: a few kilobytes of activations, a hundred small
ops per layer, so on a CPU (and on a GPU without graphs) it is bound by per-call overhead.
Besides the ops, ``nn.Module.__call__`` and the ``nn.Module.__getattr__`` behind every
``self.weight`` cost as much as a small op each. ``lean_view`` removes that overhead without a
second implementation: it runs the modules' own ``forward`` code on plain Python objects
holding the same parameters (the default). ``compile_step=True`` instead runs the usual
step (one new byte or token, no recomputed columns) as static-shape functions of the same
modules — caches read whole under a position mask, positions as tensors — compiled once with
``torch.compile`` (``StaticStep``): no guards fail and nothing recompiles as the caches fill.
"""

from __future__ import annotations

import functools
import logging
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
    ``reshaped()`` (a cache grew), checks them all; the others check only the guards that tell
    the compiled graphs apart (``set_stance(skip_guard_eval_unsafe=True)``; a graph it would
    have to compile then is an error, never a silent reuse: tests/test_generation.py). So a
    module or parameter of the model replaced by another object in the middle of a
    ``generate`` call would go unseen; values changed in place are always seen."""

    def __init__(self, fn: Any) -> None:
        self.compiled = torch.compile(fn, dynamic=False)
        self.seen: set[tuple] = set()  # argument shapes called with every guard checked

    def reshaped(self) -> None:
        """Something the arguments do not show changed shape: check every guard again."""
        self.seen.clear()

    def __call__(self, *args: torch.Tensor | None) -> Any:
        shapes = tuple(None if a is None else tuple(a.shape) for a in args)
        if shapes not in self.seen:
            self.seen.add(shapes)
            return self.compiled(*args)
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return self.compiled(*args)


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
def announce(model: str, compile: bool, device: str) -> None:
    """Log once per process which path a model's cached generation runs."""
    path = "torch.compile'd static-shape steps" if compile else "eager modules through lean views"
    hint = "" if compile else "; compile_step=True compiles static-shape steps"
    logger.info("%s cached generation on %s: %s%s", model, device, path, hint)
