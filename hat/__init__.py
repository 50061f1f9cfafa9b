"""hat: hierarchical autoregressive transformers — byte-level language models with no fixed
tokenizer — and their BPE twins, built from the same parts."""

from hat.auto import load_pretrained
from hat.batching import collate_documents, document_words, layout_words
from hat.bpe import BPEForCausalLM
from hat.config import BPEConfig, HATConfig, TransformerConfig, load_config
from hat.generation import GenerationConfig, TextStreamer
from hat.hf_tokenizer import HATTokenizer
from hat.model import HATForCausalLM
from hat.modeling import CausalLMOutput
from hat.pooling import ragged_attention_pool
from hat.splitter import EOD, PAD, HATWordSplitter, WhitespaceSplitter, make_splitter
from hat.tokenizer import BPETokenizer

__version__ = "0.1.0"

# lm-eval's `--model hat` and transformers' Auto classes, when those libraries are installed
from hat.integrations import register_integrations  # noqa: E402

register_integrations()

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
    "PAD",
    "TextStreamer",
    "TransformerConfig",
    "WhitespaceSplitter",
    "collate_documents",
    "document_words",
    "layout_words",
    "load_config",
    "load_pretrained",
    "make_splitter",
    "ragged_attention_pool",
]
