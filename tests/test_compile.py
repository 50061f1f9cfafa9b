"""Compiled training steps compute what eager ones do (issue 14: compile is an option, never
another model). The default backend here is ``aot_eager`` (dynamo's graph capture and
AOTAutograd's joint forward/backward graph, run by eager kernels: seconds on a CPU);
``HAT_TEST_COMPILE=1`` runs inductor too (minutes on a 2-core CPU; ``scripts/gpu_checks.sh``
measures it on a GPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import hat
from hat.batching import collate_documents, document_words, pad_word_slots
from hat.block import reserve_positions
from hat.compiling import compile_unavailable
from hat.training import OptimConfig, TrainConfig, TrainerConfig, build_optimizer
from hat.training.trainer import forward_backward, make_accelerator

BACKENDS = ["aot_eager"]
if os.environ.get("HAT_TEST_COMPILE") and compile_unavailable("cpu") is None:
    BACKENDS.append("inductor")

TEXTS = [
    ["First doc. Second part of it, and more.", "Other words here"],
    ["x " * 30, "A longer row of plain English text to train on."],
    ["Short", "Numbers 3.14 and 1,000, then punctuation!"],
]


def losses(backend: object, tmp_path: Path, tables: bool = True) -> list[float]:
    """Loss of each of three AdamW steps of tiny HAT (the trainer's own forward_backward).
    ``tables``: reserve the RoPE tables before compiling, as the trainer does (compiled code
    then reads them; without, it computes the angles in the graph)."""
    cfg = TrainConfig(
        model=hat.preset("tiny"),
        trainer=TrainerConfig(
            row_bytes=128, global_rows=2, output_dir=str(tmp_path), compile=backend is not None
        ),
    )
    accelerator = make_accelerator(cfg)
    torch.manual_seed(0)
    model = hat.HATForCausalLM(cfg.model)
    optimizer = build_optimizer(model, OptimConfig(), lr=3e-3)
    if backend is not None and tables:
        reserve_positions(model, cfg.trainer.row_bytes + 1)
    step_model = model if backend is None else torch.compile(model, backend=backend)
    out = []
    for texts in TEXTS:  # each batch its own word count: padded slots, one graph
        batch = collate_documents([document_words(t, model.splitter) for t in texts], pad_to=96)
        stats = forward_backward(step_model, batch, accelerator, cfg.trainer, 1.0, 1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append(stats.loss)
    return out


@pytest.mark.parametrize("tables", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_steps_equal_eager(backend: str, tables: bool, tmp_path: Path) -> None:
    torch._dynamo.reset()
    eager = losses(None, tmp_path)
    compiled = losses(backend, tmp_path, tables)
    assert eager[0] != eager[-1]  # the weights moved
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tables", [True, False])
def test_compiled_step_reads_the_rope_tables_when_reserved(tables: bool, tmp_path: Path) -> None:
    """With the tables reserved (the trainer does it) the graph looks the angles up: computed
    in the graph, inductor inlined cos and sin into every head of every layer (a tenth of a
    compiled CPU step). Without, the graph computes them (still exact: the test above)."""
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    losses(capture, tmp_path, tables)
    targets = {str(n.target) for g in graphs for n in g.graph.nodes if n.op.startswith("call")}
    assert graphs and any("rms_norm" in t for t in targets)  # the model's graph was captured
    assert any("cos" in t for t in targets) != tables


def test_padded_word_slots_change_nothing() -> None:
    """What compiled training feeds the model (word slots padded to a multiple of 128) gives
    the loss and logits of the unpadded batch."""
    torch.manual_seed(0)
    model = hat.HATForCausalLM(hat.preset("tiny")).eval()
    batch = collate_documents([document_words(t, model.splitter) for t in TEXTS[0]])
    padded = {**batch, "word_lengths": pad_word_slots(batch["word_lengths"])}
    assert padded["word_lengths"].shape[1] == 128
    with torch.no_grad():
        plain, wide = model(**batch), model(**padded)
    torch.testing.assert_close(wide.logits, plain.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wide.loss, plain.loss)


def test_compile_is_refused_with_a_reason_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in compile_unavailable("cpu")
    # a GPU needs no C++ compiler but Triton for it
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: True)
    assert compile_unavailable("cuda") is None
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: False)
    assert "Triton" in compile_unavailable("cuda")
