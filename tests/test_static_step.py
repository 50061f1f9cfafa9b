"""``StaticStep``: after a shape's first call through dynamo (every guard checked), later calls
run the code dynamo ran then, as a plain function, and give the same results."""

from __future__ import annotations

import functools

import pytest
import torch

from hat.generation.lean import StaticStep, dynamo_code


class Step:
    """A step of the engines' form: a method with tensors, the last ones variadic."""

    def __init__(self) -> None:
        self.weight = torch.randn(4, 4)
        self.cache = torch.zeros(2, 4)

    def step(
        self, x: torch.Tensor, slot: torch.Tensor, *extra: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y = x @ self.weight
        self.cache.index_copy_(0, slot[None], y[None])  # a cache written in place
        for e in extra:
            y = y + e
        return y.sin(), self.cache.sum(0)


class Counting:
    """A torch.compile backend: aot_eager (dynamo + AOTAutograd, eager kernels), counting the
    graphs it compiles and the runs of those graphs."""

    def __init__(self) -> None:
        self.graphs = 0
        self.runs = 0

    def __call__(self, gm, example_inputs):  # noqa: ANN001, ANN204
        from torch._dynamo.backends.registry import lookup_backend

        self.graphs += 1
        compiled = lookup_backend("aot_eager")(gm, example_inputs)

        def run(*args):  # noqa: ANN002, ANN202
            self.runs += 1
            return compiled(*args)

        return run


@pytest.fixture
def backend(monkeypatch) -> Counting:
    """StaticStep's torch.compile, with the counting backend."""
    counting = Counting()
    real = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, options=None, **kw: real(fn, backend=counting, **kw)
    )
    torch._dynamo.reset()
    yield counting
    torch._dynamo.reset()


def test_later_calls_skip_dynamo_and_match_eager(backend: Counting) -> None:
    torch.manual_seed(0)
    step, reference = Step(), Step()
    reference.weight = step.weight.clone()
    static = StaticStep(step.step, device="cpu")
    through_dynamo = []
    dynamo_call = static.compiled

    @functools.wraps(dynamo_call)  # (its attributes too: it is still dynamo's wrapper)
    def counted(*args):  # noqa: ANN002, ANN202
        through_dynamo.append(1)
        return dynamo_call(*args)

    static.compiled = counted
    for i in range(4):
        x, slot = torch.randn(4), torch.tensor(i % 2)
        out = static(x, slot)
        for got, expected in zip(out, reference.step(x, slot), strict=True):
            torch.testing.assert_close(got, expected)
    assert through_dynamo == [1] and backend.graphs == 1 and backend.runs == 4
    assert static.seen[((4,), ())] is not None
    extra = torch.randn(4)  # another shape of the arguments: through dynamo once more
    for _ in range(2):
        out = static(torch.ones(4), torch.tensor(0), extra)
        want = reference.step(torch.ones(4), torch.tensor(0), extra)
        torch.testing.assert_close(out[0], want[0])
    assert len(through_dynamo) == 2 and backend.graphs == 2 and backend.runs == 6
    static.reshaped()  # a cache grew: every guard is checked again
    static(torch.ones(4), torch.tensor(1))
    static(torch.ones(4), torch.tensor(1))
    assert len(through_dynamo) == 3 and backend.graphs == 2 and backend.runs == 8


def test_the_code_dynamo_ran_not_another_backends(backend: Counting) -> None:
    """Two compiled wrappers of one function share its cache entries, each passing the other's
    guards: the code taken is the entry dynamo just ran (the most recently used one), so the
    later calls run this backend's graph."""
    step = Step()
    x, slot = torch.randn(4), torch.tensor(0)
    torch._dynamo.optimize("eager")(step.step)(x, slot)  # another backend, the same guards
    static = StaticStep(step.step, device="cpu")
    static(x, slot)
    entries = torch._C._dynamo.eval_frame._debug_get_cache_entry_list(Step.step.__code__)
    assert len(entries) == 2 and static.seen[((4,), ())].func.__code__ is entries[0].code
    static(x, slot)
    assert backend.runs == 2


def test_no_dynamo_no_direct_code() -> None:
    """Where the compiled callable is not dynamo's (a stand-in), or dynamo has no entry for
    the function, there is no code to take: calls go through the compiled callable."""
    step = Step()
    assert dynamo_code(step.step, step.step, (torch.randn(4), torch.tensor(0))) is None

    def plain(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    torch._dynamo.reset()
    compiled = torch.compile(plain, backend="eager")
    assert dynamo_code(plain, compiled, (torch.randn(2),)) is None  # never called: no entry
    compiled(torch.randn(2))
    direct = dynamo_code(plain, compiled, (torch.randn(2),))
    assert direct is not None and torch.equal(direct(torch.zeros(2)), torch.ones(2))
    torch._dynamo.reset()
