"""Models saved by an earlier layout of the code still load and give the same logits.

``tests/fixtures/legacy/`` was written by commit 80efc86 (separate q/k/v and gate/up weights,
before the one-transformer redesign) with ``make_fixtures.py`` beside it: a minimal HAT (QK-norm
backbone, a guide before every decoder layer) and a minimal BPE twin with its tokenizer, plus the
logits each gave on ``text.txt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hat

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(LEGACY / "expected.safetensors"))


def test_legacy_hat_loads_with_the_same_logits(expected: dict[str, torch.Tensor]) -> None:
    model = hat.load_pretrained(LEGACY / "hat")
    assert isinstance(model, hat.HATForCausalLM)
    text = (LEGACY / "text.txt").read_text()
    batch = hat.collate_documents([hat.document_words(text, model.splitter)])
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, expected["hat_logits"], rtol=1e-5, atol=1e-5)


def test_legacy_bpe_loads_with_the_same_logits(expected: dict[str, torch.Tensor]) -> None:
    model = hat.load_pretrained(LEGACY / "bpe")
    assert isinstance(model, hat.BPEForCausalLM)
    text = (LEGACY / "text.txt").read_text()
    ids = torch.tensor([[model.tokenizer.bos_id, *model.tokenizer.encode(text)]])
    assert torch.equal(ids, expected["bpe_input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, expected["bpe_logits"], rtol=1e-5, atol=1e-5)
