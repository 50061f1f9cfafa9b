"""The pretraining data pipeline: sources -> documents -> packed, lane-ordered batches.

Configuration (hydra fills these from YAML)::

    DataConfig(sources=[SourceConfig("builtin:sample")], eval_every=100, seed=0, num_workers=None)
    SourceConfig(path, name=None, split="train", text_field="text", weight=1.0,
                 sample_by="paragraph", streaming=True)

``path`` is ``"builtin:sample"`` (the shipped corpus), local files (path or glob of .txt,
.jsonl, .json, .parquet; text/json may be .gz) or a hub dataset name (streamed with
``datasets.load_dataset(path, name, split=split, streaming=True)``).

API::

    iter_documents(data_cfg, split="train", repeat=False) -> Iterator[str]
        Plain text documents of "train" or "eval" (every eval_every-th document of each
        source), mixed by weight, in the loaders' order. repeat=True never ends.
    build_train_loader(data_cfg, fmt, seq_len, global_rows, rank=0, world_size=1) -> PackedLoader
        Endless iterator of this rank's batches; ``fmt`` is how documents become rows, the
        model's ``data_format()`` (``HATFormat(splitter)`` or ``BPEFormat(tokenizer)``).
        ``.state_dict()`` / ``.load_state_dict()`` resume.
    build_eval_batches(same arguments..., max_batches=None) -> PackedLoader
        Finite iterator over the held-out documents, packed the same way (always in-process).
        It ends when this rank's lanes are drained or after max_batches, so with several
        ranks and a held-out set smaller than max_batches global batches, ranks can yield
        different counts (the last ones partly padding).

Resume: ``loader.state_dict()`` = {"batches": global batches consumed, + the layout it is valid
for}; identical on every rank and independent of world size. ``load_state_dict`` re-reads the
sources from the start and re-splits/tokenizes this rank's documents up to that batch (no
tensors built): it costs about the data time of the skipped batches, and hub datasets are
streamed again from their start.

Batches (tensors on CPU, int64, ``global_rows / world_size`` rows of ``seq_len``):
    hat: input_ids, labels, word_lengths   (``hat.batching.collate_documents``' format)
    bpe: input_ids, labels, label_bytes
Both go straight into the model: ``model(**batch)``. Do not wrap the loaders in
``accelerator.prepare``: they already shard by rank.

Labels: the next unit of the same document; a document's last unit predicts the end marker
(EOD=192 for HAT, BOS for BPE); padding is -100. A row can start mid-document (the model treats
a row start as a context start); the previous row's last label is then the continuation.

Bits per byte: ``out.bits_per_byte`` for both models, text only: the end-of-document targets
are trained on but not counted (``hat.modeling.CausalLMOutput``).

Determinism: document j of the stream goes to lane j % global_rows; each lane packs its own
documents into consecutive rows; global batch k is row k of every lane, and rank r owns lanes
[r * global_rows / world_size, (r + 1) * global_rows / world_size). The global batches are the
same for any world size and any ``num_workers``; HAT and BPE loaders see the same documents.
"""

from hat.data.loader import PackedLoader, build_eval_batches, build_train_loader
from hat.data.packing import BPEFormat, HATFormat, pack_rows
from hat.data.sources import BUILTIN_SAMPLE, SAMPLE_CORPUS, DataConfig, SourceConfig, iter_documents

__all__ = [
    "BUILTIN_SAMPLE",
    "SAMPLE_CORPUS",
    "BPEFormat",
    "DataConfig",
    "HATFormat",
    "PackedLoader",
    "SourceConfig",
    "build_eval_batches",
    "build_train_loader",
    "iter_documents",
    "pack_rows",
]
