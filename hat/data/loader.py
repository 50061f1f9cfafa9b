"""Loaders: one rank's packed batches of a split, deterministic, resumable, optionally with workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from hat.data.packing import BPEFormat, HATFormat, pack_rows
from hat.data.sources import DataConfig, iter_documents

Batch = dict[str, torch.Tensor]
Format = HATFormat | BPEFormat  # how documents become rows: the model's ``data_format()``


class PackedLoader:
    """This rank's slice of the global batches of a split, as an iterator.

    Rank r of ``world_size`` owns lanes [r * L, (r + 1) * L) with L = global_rows / world_size,
    so its batches have L rows and the global batch is the same for every world size. The train
    split never ends; the eval split ends when this rank's lanes are drained or after
    ``max_batches``. (Ranks can then differ in batch count: pass a ``max_batches`` the held-out
    set fills, or let the trainer agree on a count.)

    Resume: ``state_dict()`` is the number of batches consumed (plus the layout it is valid
    for) and is the same on every rank. ``load_state_dict()`` rebuilds the stream and fast-
    forwards: it re-reads the sources from the start and re-splits/tokenizes this rank's
    documents of the skipped batches (no tensors are built). That costs about what producing
    those batches cost, spread over the workers if any; hub datasets are streamed again.
    """

    def __init__(
        self,
        cfg: DataConfig,
        fmt: Format,
        seq_len: int,
        global_rows: int,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        max_batches: int | None = None,
    ) -> None:
        if seq_len < 1 or global_rows < 1:
            raise ValueError(
                f"seq_len and global_rows must be >= 1, got {seq_len} and {global_rows}"
            )
        if global_rows % world_size:
            raise ValueError(
                f"global_rows={global_rows} must be divisible by world_size={world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} out of range for world_size={world_size}")
        max_word = getattr(getattr(fmt, "splitter", None), "max_word_bytes", 1)
        if seq_len < max_word:
            raise ValueError(
                f"seq_len={seq_len} is shorter than the splitter's max_word_bytes={max_word}"
            )
        self.cfg = cfg.validate()
        self.fmt = fmt
        self.seq_len = seq_len
        self.global_rows = global_rows
        self.split = split
        self.max_batches = max_batches
        local_rows = global_rows // world_size
        self.lanes = list(range(rank * local_rows, (rank + 1) * local_rows))
        # workers only for the endless train stream: their finite streams would end unevenly
        self.num_workers = min(cfg.num_workers or 0, local_rows) if split == "train" else 0
        self.batches_done = 0
        self._batches: Iterator[Batch] | None = None

    def __iter__(self) -> PackedLoader:
        return self

    def __next__(self) -> Batch:
        if self.max_batches is not None and self.batches_done >= self.max_batches:
            raise StopIteration
        if self._batches is None:
            # (the stream must not refer back to self: a reference cycle would leave the
            # workers to the garbage collector, whose shutdown waits seconds per worker)
            lanes = LaneBatches(
                self.cfg,
                self.fmt,
                self.split,
                self.lanes,
                self.global_rows,
                self.seq_len,
                start=self.batches_done,
            )
            self._batches = _rebatch(lanes, self.num_workers) if self.num_workers else iter(lanes)
        batch = next(self._batches)
        self.batches_done += 1
        return batch

    def empty_batch(self) -> Batch:
        """A batch shaped like this rank's batches with nothing to predict (all padding)."""
        return self.fmt.collate([self.fmt.empty_row(self.seq_len)] * len(self.lanes))

    def state_dict(self) -> dict[str, Any]:
        """The data position: global batches consumed, and the layout it refers to."""
        return {"batches": self.batches_done, **self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["batches"]`` batches; the layout must match."""
        changed = {k: (v, state.get(k)) for k, v in self._layout().items() if state.get(k) != v}
        if changed:
            raise ValueError(f"data state is for another layout (now, saved): {changed}")
        self.batches_done = int(state["batches"])
        self._batches = None

    def _layout(self) -> dict[str, Any]:
        sources = [
            (s.path, s.name, s.split, s.text_field, s.weight, s.sample_by) for s in self.cfg.sources
        ]
        return {
            "model_kind": self.fmt.kind,
            "seq_len": self.seq_len,
            "global_rows": self.global_rows,
            "split": self.split,
            "data": repr((sources, self.cfg.eval_every, self.cfg.seed)),
        }


def _rebatch(lanes: LaneBatches, num_workers: int) -> Iterator[Batch]:
    """Run ``lanes`` in worker processes, worker w packing the w-th chunk of lanes. The
    DataLoader hands back one part per worker in turn, so ``num_workers`` consecutive parts
    make one batch, identical to packing all lanes in this process."""
    parts = iter(DataLoader(lanes, batch_size=None, num_workers=num_workers))
    while True:
        yield concat_batches([next(parts) for _ in range(num_workers)])


class LaneBatches(IterableDataset):
    """Collated batches of ``lanes`` from batch ``start`` on. In a DataLoader worker, only the
    worker's contiguous chunk of the lanes (every worker reads, and skips, the whole stream)."""

    def __init__(
        self,
        cfg: DataConfig,
        fmt: Format,
        split: str,
        lanes: Sequence[int],
        global_rows: int,
        seq_len: int,
        start: int = 0,
    ) -> None:
        self.cfg, self.fmt, self.split = cfg, fmt, split
        self.lanes, self.global_rows, self.seq_len, self.start = (
            list(lanes),
            global_rows,
            seq_len,
            start,
        )

    def __iter__(self) -> Iterator[Batch]:
        lanes = self.lanes
        worker = get_worker_info()
        if worker is not None:
            lanes = [int(x) for x in np.array_split(lanes, worker.num_workers)[worker.id]]
        docs = iter_documents(self.cfg, self.split, repeat=self.split == "train")
        for k, rows in enumerate(pack_rows(docs, self.fmt, lanes, self.global_rows, self.seq_len)):
            if k >= self.start:  # fast-forward without building tensors
                yield self.fmt.collate(rows)


def concat_batches(parts: Sequence[Batch]) -> Batch:
    """Stack batches row-wise; narrower tensors (``word_lengths``) are zero-padded on the right."""
    out = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        width = max(t.shape[1] for t in tensors)
        out[key] = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])
    return out


def build_train_loader(
    data_cfg: DataConfig,
    fmt: Format,
    seq_len: int,
    global_rows: int,
    rank: int = 0,
    world_size: int = 1,
) -> PackedLoader:
    """The endless train stream of this rank: ``global_rows / world_size`` rows of ``seq_len``
    units of ``fmt`` (the model's ``data_format()``)."""
    return PackedLoader(data_cfg, fmt, seq_len, global_rows, rank, world_size, "train")


def build_eval_batches(
    data_cfg: DataConfig,
    fmt: Format,
    seq_len: int,
    global_rows: int,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int | None = None,
) -> PackedLoader:
    """A finite iterator over the held-out documents, packed like the train stream."""
    return PackedLoader(data_cfg, fmt, seq_len, global_rows, rank, world_size, "eval", max_batches)
