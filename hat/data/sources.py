"""Where documents come from: local files or hub datasets, mixed by weight, split train/held-out.

A source yields plain text documents in a fixed order. Every ``eval_every``-th document of a
source (counted within that source) is held out, so the held-out set never depends on the
mixture. Sources are mixed by a seeded weighted draw; the train split repeats each source forever
(epochs re-read the source in the same order: there is no shuffling).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

logger = logging.getLogger(__name__)

BUILTIN_SAMPLE = "builtin:sample"
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "assets" / "sample_corpus.txt"
# the corpora shipped inside the package (hat/assets/README.md: what they are, their licences)
BUILTIN_SAMPLES = {
    BUILTIN_SAMPLE: SAMPLE_CORPUS,  # English: Jane Austen
    "builtin:sample_es": SAMPLE_CORPUS.with_name("sample_es.txt"),  # Spanish: Reina-Valera 1909
}
SAMPLE_BY = ("line", "paragraph", "document")
ENCODING_ERRORS = ("strict", "replace")
SPLITS = ("train", "eval")
# file suffix (before an optional .gz) -> reader
FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
_MIX_DRAWS = 4096  # weighted draws per numpy call (fixed: it is part of the order)
_READ_BATCH = 256  # records per datasets batch


@dataclass
class SourceConfig:
    """One source of documents.

    path: ``"builtin:sample"`` (the shipped English corpus; ``"builtin:sample_es"``: Spanish), local files (a path or glob; .txt, .jsonl,
        .json, .parquet, txt/json also gzipped), or a hub dataset name (anything that is neither
        an existing path, a glob, nor ends in a data-file suffix).
    name, split, streaming: passed to ``datasets.load_dataset`` (hub: the config name).
    text_field: the text column of json/parquet/hub records (text files have no fields).
    weight: relative share of documents drawn from this source. 0: never trained on, but its
        held-out split is still evaluated (e.g. English while continuing on German).
    label: its name in the evaluation metrics (``eval_bpb/<label>``); default: from the path.
    sample_by: what a document is in a text file: "line", "paragraph" (blank-line separated)
        or "document" (the whole file).
    encoding_errors: local files that are not valid UTF-8 are an error ("strict", naming the
        file) or decoded with U+FFFD for each bad byte ("replace", counted in the log).
    """

    path: str
    name: str | None = None
    split: str = "train"
    text_field: str = "text"
    weight: float = 1.0
    sample_by: str = "paragraph"
    streaming: bool = True
    label: str | None = None
    encoding_errors: str = "strict"

    def display_name(self) -> str:
        """``label``, else a short name from the path: file stem or folder, hub name (+ config)."""
        if self.label:
            return self.label
        if self.path in BUILTIN_SAMPLES:
            return self.path.removeprefix("builtin:")
        path = Path(self.path)
        if _looks_local(self.path):
            stem = path.name
            for suffix in (".gz", *FORMATS):  # corpus.jsonl.gz -> corpus
                stem = stem.removesuffix(suffix)
            # /data/de/*.txt -> de: the innermost part that is not a glob
            parts = [stem, *reversed(path.parent.parts)]
            return next((p for p in parts if p and p != "/" and not set(p) & set("*?[")), "local")
        return f"{path.name}-{self.name}" if self.name else path.name  # org/dataset -> dataset


@dataclass
class DataConfig:
    """The data pipeline: sources, held-out split, mixing seed, loader workers."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(BUILTIN_SAMPLE)])
    eval_every: int = 100  # every Nth document of each source is held out (0: none)
    seed: int = 0  # seed of the weighted mixing draw
    # torch DataLoader workers splitting/tokenizing (train loader only); None: chosen by
    # the trainer for its device (``auto_workers``: none on a CPU, several on a GPU)
    num_workers: int | None = None

    def __post_init__(self) -> None:
        self.sources = [SourceConfig(**s) if isinstance(s, dict) else s for s in self.sources]

    def validate(self) -> DataConfig:
        """Fail early, naming the setting to change."""
        if not self.sources:
            raise ValueError(
                "data.sources is empty; add at least one source, e.g. path: builtin:sample"
            )
        for i, src in enumerate(self.sources):
            where = f"data.sources[{i}]"
            if src.sample_by not in SAMPLE_BY:
                raise ValueError(f"{where}.sample_by={src.sample_by!r} is not one of {SAMPLE_BY}")
            if src.encoding_errors not in ENCODING_ERRORS:
                raise ValueError(
                    f"{where}.encoding_errors={src.encoding_errors!r} is not one of {ENCODING_ERRORS}"
                )
            if not (math.isfinite(src.weight) and src.weight >= 0):
                raise ValueError(f"{where}.weight must be a finite number >= 0, got {src.weight}")
            local_files(src, where)  # raises on missing files / unknown formats
        if sum(s.weight for s in self.sources) <= 0:
            raise ValueError(
                "data.sources: total weight is 0; give at least one source a weight > 0"
            )
        if self.eval_every < 0 or self.eval_every == 1:
            raise ValueError(
                f"data.eval_every must be 0 (no held-out split) or >= 2, got {self.eval_every}"
            )
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(
                f"data.num_workers must be >= 0 (or null: chosen for the device), "
                f"got {self.num_workers}"
            )
        return self

    def workers_for(self, device_type: str, local_processes: int = 1) -> int:
        """``num_workers``, or for None the choice of ``auto_workers``."""
        if self.num_workers is not None:
            return self.num_workers
        return auto_workers(device_type, local_processes)

    def eval_sets(self) -> dict[str, DataConfig]:
        """Each source on its own (weight-0 ones included), by ``display_name``, for per-source
        held-out metrics; empty when there is only the one source the mixture already is.

        When a single source has weight > 0 the mixture *is* that source: its entry is this
        config itself, so callers that evaluate each distinct config once do not read it twice.
        """
        if len(self.sources) < 2 or not self.eval_every:
            return {}
        trained = [src for src in self.sources if src.weight > 0]
        sets: dict[str, DataConfig] = {}
        for i, src in enumerate(self.sources):
            name = src.display_name()
            name = name if name not in sets else f"{name}-{i}"
            if trained == [src]:
                sets[name] = self
                continue
            source = dataclasses.replace(src, weight=1.0)
            sets[name] = DataConfig([source], self.eval_every, self.seed, num_workers=0)
        return sets


def iter_documents(cfg: DataConfig, split: str = "train", repeat: bool = False) -> Iterator[str]:
    """The documents of a split, as plain strings, in the order the loaders see them.

    With ``repeat=True`` every source restarts when exhausted and the stream never ends (this
    is the train loaders' stream); with ``repeat=False`` an exhausted source drops out of the
    mix and the stream ends with the last source. Up to the first exhaustion both orders agree.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg.validate()
    active = [s for s in cfg.sources if s.weight > 0]
    streams = [source_stream(s, split, cfg.eval_every, repeat) for s in active]
    return mix(streams, [s.weight for s in active], cfg.seed)


def source_stream(src: SourceConfig, split: str, eval_every: int, repeat: bool) -> Iterator[str]:
    """One source's documents of ``split``; every ``eval_every``-th is held out for "eval"."""
    read = open_source(src)
    while True:
        count = 0
        for i, text in enumerate(read()):
            held_out = eval_every > 0 and i % eval_every == eval_every - 1
            if held_out == (split == "eval"):
                count += 1
                yield text
        if not repeat:
            return
        if count == 0:  # repeating an empty stream would spin forever
            raise ValueError(
                f"source {src.path!r} has no {split} documents (eval_every={eval_every})"
            )


def mix(streams: list[Iterator[str]], weights: list[float], seed: int) -> Iterator[str]:
    """Interleave streams by a seeded weighted draw; exhausted streams drop out (renormalised)."""
    probs = np.asarray(weights, dtype=np.float64) / sum(weights)
    rng = np.random.default_rng(seed)
    live: list[Iterator[str] | None] = list(streams)
    remaining = len(live)
    while remaining:
        for k in rng.choice(len(live), size=_MIX_DRAWS, p=probs):
            stream = live[k]
            if stream is None:  # rejection = drawing from the renormalised live sources
                continue
            text = next(stream, None)
            if text is not None:
                yield text
                continue
            live[k] = None
            remaining -= 1
            if not remaining:
                return


# ---- reading one source ---------------------------------------------------------------------
def open_source(src: SourceConfig) -> Callable[[], Iterator[str]]:
    """Open a source once (``load_dataset`` is slow to call); each call of the result is one
    pass over its non-empty documents, valid UTF-8, in a fixed order."""
    where = f"source {src.path!r}"
    files = local_files(src, where)
    fmt = "hub" if files is None else FORMATS[_suffix(files[0])]
    dataset = None if fmt == "json" else _load(src, fmt, files)
    text_field = "text" if fmt == "text" else src.text_field
    strip = (
        fmt == "text" and src.sample_by == "paragraph"
    )  # blank lines separate, they are not text

    reported = False  # the count is logged after the first pass, not after every epoch

    def read() -> Iterator[str]:
        nonlocal reported
        if dataset is None:
            texts = (t for f in files or [] for t in _read_json(f, text_field, src.encoding_errors))
        else:
            texts = _column(dataset, text_field, where)
        replaced = documents = 0
        try:
            for text in texts:
                text = text.strip("\n") if strip else text
                if text.strip():
                    replaced += text.count("\ufffd")
                    documents += "\ufffd" in text
                    yield text
        except UnicodeDecodeError:  # a text file, strictly decoded by datasets
            raise _not_utf8(files or [], where) from None
        if replaced and fmt == "text" and src.encoding_errors == "replace" and not reported:
            reported = True
            logger.warning(
                f"{where}: {replaced} U+FFFD characters in {documents} documents (invalid "
                "UTF-8 replaced, encoding_errors=replace)"
            )

    return read


def _not_utf8(files: list[Path], where: str) -> ValueError:
    """The error for a source with a file that is not UTF-8, naming the first such file."""
    for path in files:
        with _open_binary(path) as f:
            data = f.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            return ValueError(
                f"{path} is not UTF-8 text (byte {err.start}: {data[err.start : err.start + 4]!r}); "
                "convert it to UTF-8, remove it, or decode it with replacement: "
                "encoding_errors=replace on its data source"
            )
    return ValueError(f"{where}: not UTF-8 text")


def local_files(src: SourceConfig, where: str) -> list[Path] | None:
    """The sorted files of a local source, or None for a hub dataset name."""
    path = src.path
    if path in BUILTIN_SAMPLES:
        return [BUILTIN_SAMPLES[path]]
    if path.startswith("builtin:"):
        raise ValueError(
            f"{where}: unknown built-in corpus {path!r}; choose one of {sorted(BUILTIN_SAMPLES)}"
        )
    if not _looks_local(path):
        return None
    is_glob = any(c in path for c in "*?[")
    expanded = str(Path(path).expanduser())
    if is_glob:
        files = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if not Path(p).is_dir())
    else:
        files = [Path(expanded)] if Path(expanded).exists() else []
    if not files:
        raise ValueError(f"{where}: no file matches path={path!r}; fix the path (or glob)")
    for f in files:
        if f.is_dir():
            raise ValueError(f"{where}: {f} is a directory; use a glob such as '{f}/*.parquet'")
        if _suffix(f) not in FORMATS:
            raise ValueError(
                f"{where}: unknown format of {f}; use one of {sorted(FORMATS)} (optionally .gz for text/json)"
            )
    if len({FORMATS[_suffix(f)] for f in files}) > 1:
        raise ValueError(
            f"{where}: {path!r} matches files of several formats; use one source per format"
        )
    return files


def _looks_local(path: str) -> bool:
    """A path or glob of files, as opposed to a hub dataset name such as ``org/name``."""
    return (
        any(c in path for c in "*?[")
        or path.startswith(("/", ".", "~"))
        or Path(path).expanduser().exists()
        or _suffix(Path(path)) in FORMATS
    )


def _suffix(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes[-1:] == [".gz"] and len(suffixes) >= 2 and FORMATS.get(suffixes[-2]) != "parquet":
        return suffixes[-2].lower()
    return path.suffix.lower()


def _load(src: SourceConfig, fmt: str, files: list[Path] | None) -> Any:
    from datasets import config, load_dataset

    if files is None:
        try:
            return load_dataset(src.path, src.name, split=src.split, streaming=src.streaming)
        except Exception as err:  # offline, unknown name, gated, ...: datasets raises many kinds
            raise ValueError(
                f"source {src.path!r}: cannot open the hub dataset ({type(err).__name__}: {err}). "
                "Check the name and the network (offline: HF_DATASETS_OFFLINE=1 needs it cached), "
                "or give local files as the path"
            ) from None
    # invalid UTF-8 in text files becomes U+FFFD rather than failing inside the builder
    options = {"sample_by": src.sample_by, "encoding_errors": src.encoding_errors}
    options = options if fmt == "text" else {}
    # datasets pings the hub to count uses of its builders even for local files; offline that
    # blocks for up to 3 s per call (per source, per worker)
    counting, config.HF_UPDATE_DOWNLOAD_COUNTS = config.HF_UPDATE_DOWNLOAD_COUNTS, False
    try:
        data_files = [str(f) for f in files]
        return load_dataset(
            fmt, data_files=data_files, split="train", streaming=src.streaming, **options
        )
    finally:
        config.HF_UPDATE_DOWNLOAD_COUNTS = counting


def _column(dataset: Any, text_field: str, where: str) -> Iterator[str]:
    if text_field in (dataset.column_names or []):
        dataset = dataset.select_columns([text_field])  # skip decoding the other columns
    # .iter() rather than iter(dataset): in a torch DataLoader worker a datasets
    # IterableDataset reads only "its" shards, but every worker needs the whole stream
    for n, batch in enumerate(dataset.iter(batch_size=_READ_BATCH)):
        if text_field not in batch:
            raise ValueError(
                f"{where} has no field {text_field!r}; set text_field to one of {sorted(batch)}"
            )
        for i, text in enumerate(batch[text_field]):
            if not isinstance(text, str):
                raise ValueError(
                    f"{where}, record {n * _READ_BATCH + i}: {text_field!r} is {text!r}, not text"
                )
            yield text


def _text_of(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: expected an object with a {text_field!r} field, got {type(record).__name__}"
        )
    text = record.get(text_field)
    if not isinstance(text, str):
        fields = sorted(k for k, v in record.items() if isinstance(v, str))
        problem = "has no field" if text is None else f"has a non-string ({type(text).__name__})"
        raise ValueError(
            f"{where}: record {problem} {text_field!r}; set text_field to one of its text fields {fields}"
        )
    return text


def _read_json(path: Path, text_field: str, errors: str = "strict") -> Iterator[str]:
    """JSON lines (or one JSON array) read here: datasets' JSON builder fails deep inside pyarrow
    on invalid UTF-8 or lone surrogate escapes and cannot say which record lacks the field."""
    surrogates = 0
    with _open_binary(path) as f:
        is_array = f.peek(64).lstrip()[:1] == b"["
        if is_array:
            chunks = [(1, _decode(f.read(), errors, str(path))[0])]
        else:
            chunks = _decoded_lines(f, errors)
        for n, chunk in chunks:
            if not chunk.strip():
                continue
            try:
                parsed = json.loads(chunk)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}: not valid JSON ({err})") from None
            for i, record in enumerate(parsed if is_array else [parsed]):
                text = _text_of(
                    record, text_field, f"{path}, item {i}" if is_array else f"{path}, line {n}"
                )
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
                    text = text.encode("utf-8", "replace").decode("utf-8")
                    surrogates += 1
                yield text
    if surrogates:
        logger.warning(
            "%s: %d records had lone surrogate escapes (replaced by '?')", path, surrogates
        )


def _decode(data: bytes, errors: str, where: str) -> tuple[str, bool]:
    """UTF-8 text of ``data`` and whether bytes were replaced (``errors="replace"``); with
    ``errors="strict"`` invalid UTF-8 is an error naming ``where``."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError as err:
        if errors == "strict":
            raise ValueError(
                f"{where} is not UTF-8 text (byte {err.start}); convert it to UTF-8, or decode it "
                "with replacement: encoding_errors=replace on its data source"
            ) from None
        return data.decode("utf-8", "replace"), True


def _decoded_lines(f: IO[bytes], errors: str) -> Iterator[tuple[int, str]]:
    bad = 0
    for n, raw in enumerate(f, 1):
        text, replaced = _decode(raw, errors, f"{f.name}, line {n}")
        bad += replaced
        yield n, text
    if bad:
        logger.warning(
            "%s: %d lines were not valid UTF-8 (invalid bytes became U+FFFD)", f.name, bad
        )


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


MAX_AUTO_WORKERS = 8


def auto_workers(device_type: str, local_processes: int = 1) -> int:
    """Loader workers per training process when ``data.num_workers`` is null. None on a CPU:
    there packing is a few percent of a step and workers would take the model's cores. On an
    accelerator the step can be shorter than packing its batch in one process (~2 MB/s of
    text per process on a slow CPU, half of it in the splitter: docs/training.md), so each
    process gets the CPUs it can spare, keeping one for itself, up to ``MAX_AUTO_WORKERS``."""
    if device_type == "cpu":
        return 0
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(local_processes, 1) - 1))
