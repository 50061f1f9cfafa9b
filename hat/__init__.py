"""hat: hierarchical autoregressive transformers — byte-level language models with no fixed
tokenizer — and their BPE twins, built from the same parts."""

import hat.presets  # noqa: F401 - registers the built-in presets
from hat.auto import load_pretrained
from hat.batching import collate_documents, document_words, layout_words
from hat.bpe import BPEForCausalLM
from hat.config import BPEConfig, HATConfig, TransformerConfig, preset, preset_names
from hat.generation import GenerationConfig, TextStreamer
from hat.hf_tokenizer import HATTokenizer
from hat.model import HATForCausalLM
from hat.modeling import CausalLMOutput
from hat.pooling import ragged_attention_pool
from hat.registry import KINDS, kind_of, load_config
from hat.splitter import EOD, PAD, HATWordSplitter, WhitespaceSplitter, make_splitter
from hat.tokenizer import BPETokenizer

__version__ = "0.1.0"

# lm-eval's `--model hat` and transformers' Auto classes, when those libraries are installed
from hat.integrations import register_integrations  # noqa: E402

register_integrations()

# submodules of tools that `import hat` need not load (perturbations, robustness, evaluation,
# FLOP counts): loaded on first use, so that `hat.perturb.perturb(...)` works after `import hat`
_LAZY_SUBMODULES = ("evaluation", "flops", "perturb", "robustness")


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 module attribute hook
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"hat.{name}")
    raise AttributeError(f"module 'hat' has no attribute {name!r}")


__all__ = [
    "BPEConfig",
    "BPEForCausalLM",
    "BPETokenizer",
    "CausalLMOutput",
    "EOD",
    "GenerationConfig",
    "HATConfig",
    "HATForCausalLM",
    "HATTokenizer",
    "HATWordSplitter",
    "KINDS",
    "PAD",
    "TextStreamer",
    "TransformerConfig",
    "WhitespaceSplitter",
    "collate_documents",
    "document_words",
    "kind_of",
    "layout_words",
    "load_config",
    "load_pretrained",
    "make_splitter",
    "preset",
    "preset_names",
    "ragged_attention_pool",
]
