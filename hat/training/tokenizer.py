"""Training the BPE twin's tokenizer on the training documents (``hat-tokenizer``, and the
trainer when a twin has no tokenizer yet)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from hat.data import DataConfig, iter_documents
from hat.tokenizer import BPETokenizer

logger = logging.getLogger(__name__)


def train_tokenizer(
    data: DataConfig,
    vocab_size: int,
    output_file: str | Path,
    max_bytes: int,
    hard_vocab_limit: bool = True,
) -> BPETokenizer:
    """A sentencepiece BPE trained on the first ``max_bytes`` of ``data``'s training documents
    (``hard_vocab_limit``: see ``BPETokenizer.train``).

    Written to a temporary file and renamed, so an interrupted run leaves no half tokenizer.
    """

    def documents() -> Iterator[str]:
        with tqdm(total=max_bytes, unit="B", unit_scale=True, desc="reading text") as bar:
            for text in iter_documents(data, "train"):
                yield text
                bar.update(len(text.encode("utf-8")))
                if bar.n >= max_bytes:
                    return

    output_file = Path(output_file)
    tmp = output_file.with_name(output_file.name + ".tmp")
    BPETokenizer.train(documents(), vocab_size, tmp, hard_vocab_limit=hard_vocab_limit)
    os.replace(tmp, output_file)
    return BPETokenizer(output_file)
