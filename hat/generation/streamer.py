"""``TextStreamer``: prints text as it is generated."""

from __future__ import annotations

import codecs
import sys
from collections.abc import Callable
from typing import Any, TextIO

import torch

from hat.generation.utf8 import ids_to_bytes_fn


class TextStreamer:
    """Prints text as it is generated, like ``transformers.TextStreamer``.

    ``put(ids)`` takes a 1-D (or [1, n]) tensor of new ids, ``end()`` flushes. UTF-8 is decoded
    incrementally: only complete characters are emitted. The first ``put`` is the prompt
    (skipped with ``skip_prompt=True``). ``tokenizer``: ``HATTokenizer`` / ``BPETokenizer`` /
    None (= filled in by ``generate`` with the model's). Override ``on_finalized_text`` to send
    the text elsewhere; by default it is written to ``file`` (stdout).
    """

    def __init__(
        self, tokenizer: Any = None, skip_prompt: bool = False, file: TextIO | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.file = file
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._next_is_prompt = True
        self._to_bytes: Callable[[list[int]], bytes] | None = None

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("TextStreamer only supports batch size 1")
            value = value[0]
        if self._next_is_prompt:
            self._next_is_prompt = False
            if self.skip_prompt:
                return
        if self._to_bytes is None:
            self._to_bytes = ids_to_bytes_fn(self.tokenizer)
        text = self._decoder.decode(self._to_bytes(value.tolist()))
        if text:
            self.on_finalized_text(text, stream_end=False)

    def end(self) -> None:
        self.on_finalized_text(self._decoder.decode(b"", final=True), stream_end=True)
        self._decoder.reset()
        self._next_is_prompt = True

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        out = self.file or sys.stdout
        out.write(text + ("\n" if stream_end else ""))
        out.flush()
