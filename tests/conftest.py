"""Shared fixtures: tiny models and a tiny tokenizer, built from what the package ships."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from intra-op threads, and where other work shares the cores,
# spinning OpenMP threads make them several times slower (a 30-step tiny run: 48 s with two
# threads on a loaded 2-core machine, 8 s with one). Set before torch loads; the CLI
# subprocesses the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run in its CPU interpreter; must be set before hat imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hat  # noqa: E402

SAMPLE_CORPUS = Path(hat.__file__).parent / "assets" / "sample_corpus.txt"
SHARED = (
    Path(__file__).resolve().parents[1].parent / "shared"
)  # ../shared beside the repo, if present


@pytest.fixture(scope="session")
def sample_text() -> str:
    """~200 KB of the built-in public-domain corpus."""
    return SAMPLE_CORPUS.read_text(encoding="utf-8")[:200_000]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory, sample_text: str) -> hat.BPETokenizer:
    """A 512-token byte-fallback BPE trained on the sample corpus (well under a second)."""
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    return hat.BPETokenizer.train([sample_text], vocab_size=512, output_file=path)


@pytest.fixture
def tiny_hat() -> hat.HATForCausalLM:
    torch.manual_seed(0)
    return hat.HATForCausalLM(hat.HATConfig.from_name("tiny")).eval()


@pytest.fixture
def tiny_bpe(tiny_tokenizer: hat.BPETokenizer) -> hat.BPEForCausalLM:
    torch.manual_seed(0)
    return hat.BPEForCausalLM(hat.BPEConfig.from_name("bpe_tiny"), tiny_tokenizer).eval()


@pytest.fixture
def one_thread():
    """Step-sized ops are faster on one thread (and the test machine is shared); a module
    takes it for every test with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
