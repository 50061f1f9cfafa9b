"""Continued pretraining on new data, e.g. a new language: what ``hat-continue`` runs.

The recipe of the continual-pretraining literature (Gupta et al. 2023, "Continual pre-training
of large language models: how to (re)warm your model"; Ibrahim et al. 2024): start from a
pretrained model, re-warm the learning rate to a peak and re-decay it over the new budget, and
replay a small share of the original data so the model keeps what it knew.

    ContinueConfig
      -> load_init(init_from)        the model (exported or a training checkpoint), HAT or twin,
                                     with what it was trained on (training.json / trainer_state)
      -> replay_mixture(...)         new sources + replay sources, weighted so that
                                     replay.fraction of the trained units (bytes for HAT, tokens
                                     for the twin) come from the replay sources
      -> ContinueTrainer(...).fit()  the ordinary Trainer on that mixture: the schedule re-warms
                                     to the peak (default: the pretraining peak) and re-decays;
                                     fresh AdamW or the checkpoint's moments; ``freeze`` keeps
                                     named modules fixed for the first steps; held-out bits per
                                     byte of every source at step 0 and on the way

The twin keeps the tokenizer it was pretrained with (that is the realistic comparison: its
vocabulary was fitted to the old language). Each source's backbone positions per byte (words per
byte for HAT, tokens per byte for the twin) are logged at the start and written to
``metrics.jsonl`` (``"kind": "data"``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from omegaconf import DictConfig, OmegaConf

from hat.auto import load_pretrained
from hat.batching import IGNORE
from hat.config_keys import check_known_keys
from hat.data import DataConfig, SourceConfig, iter_documents, pack_rows
from hat.data.packing import Document, Row
from hat.data.sources import local_files, mix, open_source, source_stream
from hat.modeling import CONFIG_FILE, WEIGHTS_FILE, PreTrainedLM
from hat.registry import config_from_dict, kind_of, load_config
from hat.tokenizer import TOKENIZER_FILE, BPETokenizer
from hat.training.checkpoint import (
    TRAINER_STATE_FILE,
    CheckpointError,
    list_checkpoints,
    read_trainer_state,
    verify_checkpoint,
)
from hat.training.config import (
    ConfigError,
    LoggerConfig,
    OptimConfig,
    ScheduleConfig,
    TokenizerConfig,
    TrainConfig,
    TrainerConfig,
    resolve_config,
)
from hat.training.optim import peak_lr
from hat.training.record import data_from_record, read_training_record
from hat.training.trainer import StepStats, Trainer, TrainResult, world_size

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.bin"  # accelerate's name for the optimizer state in a checkpoint
MEASURE_DOCS = 1000  # training documents per source read to measure its units per document
SHARE_BATCHES = 100  # global batches over which the replay share is counted at the start
POSITIONS_BYTES = 100_000  # held-out bytes per source read to measure positions per byte


# ---- configuration ---------------------------------------------------------------------------
@dataclass
class ReplayConfig:
    """The original data, mixed into the new so the model keeps what it knew."""

    # None: the data the model was trained on, as recorded beside it (training.json of an
    # export, trainer_state.json of a checkpoint); a source of weight 0 is evaluated only
    sources: list[SourceConfig] | None = None
    # share of the trained units (bytes for HAT, tokens for the twin) drawn from the replay
    # sources, in [0, 1); 0: they are evaluated (retention), never trained on
    fraction: float = 0.05


@dataclass
class FreezeConfig:
    """Modules trained only after the first ``steps`` optimizer steps (TFree-HAT trained only
    the new encoder and decoder first when it converted Llama)."""

    modules: list[str] = field(default_factory=list)  # e.g. [backbone]; dotted paths work too
    steps: int = 0  # steps they stay frozen (>= trainer.steps: frozen for the whole run)


@dataclass
class ContinueConfig:
    """Everything ``hat-continue`` needs; the config groups are ``hat-train``'s, minus the model
    (it comes from ``init_from``)."""

    init_from: str | None = None  # an exported model dir or a training checkpoint dir (required)
    model: Any = None  # leave unset: the architecture comes from init_from
    data: DataConfig = field(
        default_factory=lambda: DataConfig([SourceConfig("builtin:sample_es")])
    )  # the new data (language)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    # fresh: a new AdamW; init_from: the AdamW moments of init_from (a training checkpoint);
    # or the path of another training checkpoint of the same architecture
    optimizer_state: str = "fresh"
    optim: OptimConfig = field(default_factory=OptimConfig)  # lr null: the pretraining peak
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(name="wsd", min_lr_ratio=0.0)
    )
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(output_dir="outputs/continued", eval_interval=100)
    )
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def resolve_continue_config(cfg: ContinueConfig | DictConfig) -> ContinueConfig:
    """Plain dataclasses from hydra's node (or a ``ContinueConfig``), the continuation's own
    settings validated (the training settings are validated with the model, see
    ``ContinueTrainer``)."""
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    # hydra's +key=value adds keys the schema lacks, and to_object drops them: a misspelt
    # setting (+replay.fractoin=0.5) would run with the default unnoticed
    try:
        check_known_keys(conf)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out = OmegaConf.to_object(conf)
    if not out.init_from:
        raise ConfigError(
            "init_from is required: the model to continue, e.g. hat-continue "
            "init_from=outputs/small/model (an exported model) or "
            "init_from=outputs/small/checkpoints/step_00000400 (a training checkpoint)"
        )
    fraction = out.replay.fraction
    if not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
        raise ConfigError(
            f"replay.fraction must be in [0, 1) (the share of trained bytes drawn from the replay "
            f"data; 0: evaluate it only), got {fraction}"
        )
    freeze = out.freeze
    if freeze.steps < 0:
        raise ConfigError(f"freeze.steps must be >= 0, got {freeze.steps}")
    if freeze.modules and freeze.steps == 0:
        raise ConfigError(
            f"freeze.modules={list(freeze.modules)} needs freeze.steps >= 1: the optimizer steps "
            "they stay frozen"
        )
    if freeze.steps and not freeze.modules:
        raise ConfigError(
            f"freeze.steps={freeze.steps} but freeze.modules is empty; name the modules, "
            "e.g. freeze.modules=[backbone]"
        )
    state = out.optimizer_state
    if state not in ("fresh", "init_from") and not Path(state).is_dir():
        raise ConfigError(
            f"optimizer_state={state!r}: use fresh, init_from, or a training checkpoint directory"
        )
    return out


# ---- what init_from holds --------------------------------------------------------------------
@dataclass
class Pretrained:
    """The model to continue and what is known of its training."""

    model: PreTrainedLM
    directory: Path
    checkpoint: bool  # a training checkpoint (else an exported model)
    data: DataConfig | None  # the data it was trained on, where recorded
    peak_lr: float | None  # its peak learning rate, where recorded
    step: int | None  # optimizer steps it was trained for, where recorded


def load_init(path: str | Path, setting: str = "init_from") -> Pretrained:
    """The model in ``path``: an exported model (``config.json``) or a training checkpoint
    (``trainer_state.json``), of either kind. Errors name ``setting`` (``init_from``, or
    ``optimizer_state``, which needs a checkpoint) and say what to pass instead."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ValueError(
            f"{setting}={str(path)!r} does not exist (or is not a directory); pass an exported "
            "model (a run's model/) or a training checkpoint (a run's checkpoints/step_N/)"
        )
    if (directory / TRAINER_STATE_FILE).is_file():
        return _from_checkpoint(directory)
    if (directory / CONFIG_FILE).is_file():
        return _from_export(directory)
    hint = ""
    checkpoints = list_checkpoints(directory / "checkpoints")
    if setting == "init_from" and (directory / "model" / CONFIG_FILE).is_file():
        hint = f"; did you mean {setting}={directory / 'model'}?"
    elif checkpoints:  # optimizer_state: only a checkpoint holds AdamW's moments
        hint = f"; did you mean {setting}={checkpoints[-1]}?"
    raise ValueError(
        f"{setting}={str(path)!r} is not a model: it holds neither {CONFIG_FILE} (an exported "
        f"model) nor {TRAINER_STATE_FILE} (a training checkpoint){hint}"
    )


def _from_export(directory: Path) -> Pretrained:
    model = load_pretrained(directory)
    record = read_training_record(directory) or {}
    data = data_from_record(record["data"]) if "data" in record else None
    return Pretrained(model, directory, False, data, record.get("peak_lr"), record.get("step"))


def _from_checkpoint(directory: Path) -> Pretrained:
    verify_checkpoint(directory)  # a damaged checkpoint is an error naming the file
    state = read_trainer_state(directory)
    config = state.get("config") or {}
    where = f"{directory / TRAINER_STATE_FILE}"
    if "model" not in config:
        raise CheckpointError(f"{where} records no model config; pass the run's exported model/")
    data = data_from_record(config["data"]) if "data" in config else None
    if (directory / CONFIG_FILE).is_file():  # checkpoints carry the model's config and tokenizer
        model = load_pretrained(directory)
        lr = peak_lr(OptimConfig(**config["optim"]), model.config) if "optim" in config else None
        return Pretrained(model, directory, True, data, lr, state.get("step"))
    # checkpoints written before they carried config.json: rebuild from the recorded config
    init_from = config.get("init_from")
    if init_from and (Path(init_from) / CONFIG_FILE).is_file():
        model_config = load_config(Path(init_from) / CONFIG_FILE)  # hat-train kept that one
    else:
        model_config = config_from_dict(config["model"], f"{where} (config.model)")
    kind = kind_of(model_config)
    tokenizer = _checkpoint_tokenizer(directory, config) if kind.uses_tokenizer else None
    model = kind.build(model_config, tokenizer)
    model.load_weights(directory / WEIGHTS_FILE, described_by=f"{where} (config.model)")
    lr = peak_lr(OptimConfig(**config["optim"]), model_config) if "optim" in config else None
    return Pretrained(model, directory, True, data, lr, state.get("step"))


def _checkpoint_tokenizer(directory: Path, config: dict[str, Any]) -> BPETokenizer:
    """A twin checkpoint's tokenizer: its init_from's, the configured one, or the one the run
    trained at start (``<run>/tokenizer.model``)."""
    candidates = [
        Path(config["init_from"]) / TOKENIZER_FILE if config.get("init_from") else None,
        Path(p) if (p := (config.get("tokenizer") or {}).get("path")) else None,
        directory.parent.parent / TOKENIZER_FILE,
    ]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            return BPETokenizer(candidate)
    raise CheckpointError(
        f"cannot find the tokenizer of the BPE checkpoint {directory} (looked for "
        f"{[str(c) for c in candidates if c is not None]}); pass the run's exported model/ instead"
    )


def check_model_choice(chosen: Any, pre: Pretrained) -> None:
    """``model=`` is not needed; if given, it must be of the kind init_from holds."""
    if chosen is None:
        return
    chosen_type = chosen.get("model_type", "hat") if isinstance(chosen, dict) else chosen.model_type
    saved = pre.model.config
    if kind_of(chosen_type) is not kind_of(saved):
        raise ValueError(
            f"init_from={pre.directory} holds a {saved.model_type!r} model but model= is a "
            f"{chosen_type!r} model; hat-continue takes the architecture and kind from init_from: "
            "drop model= (or point init_from at a model of that kind)"
        )
    logger.warning("model= is ignored: hat-continue takes the architecture from init_from")


# ---- replay ----------------------------------------------------------------------------------
@dataclass
class Mixture:
    """The continuation's data: new sources then replay sources, with their labels."""

    data: DataConfig
    new: list[str]  # labels of the new sources
    replay: list[str]  # labels of the replay sources
    fraction: float  # asked share of trained units from the replay sources


def _identity(src: SourceConfig) -> tuple:
    path = src.path
    if not path.startswith("builtin:") and local_files(src, "") is not None:
        # training.json records local paths absolute; the new data may name them relative
        path = str(Path(path).expanduser().absolute())
    return (path, src.name, src.split, src.text_field, src.sample_by)


def replay_mixture(
    data: DataConfig,
    replay: list[SourceConfig],
    fraction: float,
    fmt: Any,
    where: str = "replay.sources",
) -> Mixture:
    """New and replay sources in one ``DataConfig`` whose document weights make ``fraction``
    of the trained units come from the replay sources.

    The data pipeline draws *documents* by weight, so each group's weight is its share of units
    divided by its mean units per document (measured with ``fmt``, the model's data format, on
    the first training documents of each source). Within a group the sources keep their relative
    weights; a weight-0 source stays evaluated only. A weight-0 source that is also in the other
    list is dropped (e.g. the new language, evaluated only while pretraining).
    """
    data.validate()
    for i, src in enumerate(replay):
        try:
            DataConfig([dataclasses.replace(src, weight=1.0)], data.eval_every).validate()
        except ValueError as err:
            raise ValueError(f"{where}[{i}] ({src.path}): {err}") from None
        if not (math.isfinite(src.weight) and src.weight >= 0):
            raise ValueError(f"{where}[{i}].weight must be a finite number >= 0, got {src.weight}")
        if next(iter(open_source(src)()), None) is None:
            raise ValueError(
                f"{where}[{i}] ({src.path}) is empty: it has no documents; fix its path or "
                "text_field, or leave it out"
            )
    # a source in both lists is listed once: as the one that is trained on (as the replay
    # source when neither is), so it is evaluated once
    replayed = {_identity(s) for s in replay}
    new = [s for s in data.sources if not (s.weight == 0 and _identity(s) in replayed)]
    kept = {_identity(s) for s in new}
    replay = [s for s in replay if not (s.weight == 0 and _identity(s) in kept)]
    if fraction > 0 and sum(s.weight for s in replay) <= 0:
        raise ValueError(
            f"replay.fraction={fraction} but no replay source has a weight > 0; give one a "
            "weight, or set replay.fraction=0 (evaluate them only)"
        )
    new_units = _mean_units(new, data.eval_every, fmt)
    replay_units = _mean_units(replay, data.eval_every, fmt, where) if fraction > 0 else 1.0
    new_total = sum(s.weight for s in new)
    replay_total = sum(s.weight for s in replay) or 1.0
    # document weights: group share of units / mean units per document of the group
    new_scale = (1.0 - fraction) / new_units / new_total
    replay_scale = fraction / replay_units / replay_total
    norm = sum(s.weight * new_scale for s in new) + sum(s.weight * replay_scale for s in replay)
    labels: set[str] = set()
    new_sources = [_labelled(s, s.weight * new_scale / norm, labels, "") for s in new]
    replay_sources = [
        _labelled(s, s.weight * replay_scale / norm, labels, "replay-") for s in replay
    ]
    mixed = DataConfig(
        [*new_sources, *replay_sources], data.eval_every, data.seed, data.num_workers
    )
    return Mixture(
        mixed,
        [s.label for s in new_sources],
        [s.label for s in replay_sources],
        fraction,
    )


def _labelled(src: SourceConfig, weight: float, taken: set[str], prefix: str) -> SourceConfig:
    label = src.display_name()
    if label in taken:
        label = prefix + label
    while label in taken:
        label += "'"
    taken.add(label)
    return dataclasses.replace(src, weight=weight, label=label)


def _mean_units(
    sources: list[SourceConfig], eval_every: int, fmt: Any, where: str = "data.sources"
) -> float:
    """Mean units (bytes + document marker for HAT, tokens + BOS for the twin) per training
    document of the weighted sources, weighted as the mix draws them."""
    total = weight = 0.0
    for i, src in enumerate(sources):
        if src.weight <= 0:
            continue
        docs = source_stream(src, "train", eval_every, repeat=False)
        lengths = [len(fmt.encode(text).ids) for _, text in zip(range(MEASURE_DOCS), docs)]
        if not lengths:
            raise ValueError(
                f"{where}[{i}] ({src.path}) has no training documents (every document is held "
                f"out with data.eval_every={eval_every}); add text or raise data.eval_every"
            )
        total += src.weight * float(np.mean(lengths))
        weight += src.weight
    return total / weight


class _Tagged(str):
    """A document that remembers the index of its source."""

    source: int


class _SourceTagFormat:
    """A data format whose rows hold, in place of each unit, the index of its document's
    source: the same documents, lengths and cuts as the wrapped format, so packing them shows
    which source every trained unit of a batch comes from."""

    def __init__(self, fmt: Any) -> None:
        self.fmt, self.kind = fmt, fmt.kind

    def encode(self, text: _Tagged) -> Document:
        doc = self.fmt.encode(text)
        return Document(np.full(len(doc.ids), text.source, np.int64), doc.labels, doc.word_lens)

    def empty_row(self, seq_len: int) -> Row:
        row = self.fmt.empty_row(seq_len)
        return Row(np.full(seq_len, -1, np.int64), row.labels, row.word_lengths)


def _tagged_documents(data: DataConfig) -> Iterator[_Tagged]:
    """``iter_documents(data, "train", repeat=True)``, each document tagged with its source."""
    data.validate()

    def tagged(index: int, src: SourceConfig) -> Iterator[_Tagged]:
        for text in source_stream(src, "train", data.eval_every, repeat=True):
            doc = _Tagged(text)
            doc.source = index
            yield doc

    active = [(i, s) for i, s in enumerate(data.sources) if s.weight > 0]
    return mix([tagged(i, s) for i, s in active], [s.weight for _, s in active], data.seed)


def trained_units_by_source(
    data: DataConfig, fmt: Any, seq_len: int, global_rows: int, batches: int
) -> list[float]:
    """Units trained on (targets: bytes for HAT, tokens for the twin) from each source of
    ``data`` in the first ``batches`` global batches of the train loader, counted by packing
    the loader's document stream with each unit replaced by its source's index."""
    counts = np.zeros(len(data.sources))
    rows_iter = pack_rows(
        _tagged_documents(data), _SourceTagFormat(fmt), range(global_rows), global_rows, seq_len
    )
    for _, rows in zip(range(batches), rows_iter):
        for row in rows:
            trained = (row.labels != IGNORE) & (row.ids >= 0)
            counts += np.bincount(row.ids[trained], minlength=len(data.sources))
    return counts.tolist()


def positions_per_byte(
    model: PreTrainedLM, data: DataConfig, max_bytes: int = POSITIONS_BYTES
) -> float | None:
    """Backbone positions per byte of held-out text (words per byte for HAT, tokens per byte
    for the twin), the document markers not counted; None without held-out text."""
    fmt = model.data_format()
    positions = n_bytes = 0
    for text in iter_documents(data, "eval"):
        doc = fmt.encode(text)
        batch = fmt.collate([Row(doc.ids, doc.labels, doc.word_lens)])
        positions += model.backbone_positions(batch) - 1  # minus the document marker
        n_bytes += len(text.encode("utf-8"))
        if n_bytes >= max_bytes:
            break
    return positions / n_bytes if n_bytes else None


# ---- the run ---------------------------------------------------------------------------------
def find_modules(model: torch.nn.Module, names: list[str]) -> list[torch.nn.Module]:
    """The modules ``names`` name (``backbone``, ``decoder.transformer``); an error lists the
    top-level ones when a name matches none."""
    found = []
    for name in names:
        try:
            found.append(model.get_submodule(name))
        except AttributeError:
            top = [n for n, _ in model.named_children()]
            dotted = next((n for n, _ in model.named_modules() if n.count(".") == 1), "")
            raise ValueError(
                f"freeze.modules: {name!r} names no module of this {kind_of(model).name} model; "
                f"its modules are {top} (dotted paths such as {dotted!r} work too)"
            ) from None
    return found


class Freezer:
    """Keeps the parameters of some modules out of training for the first ``steps`` steps.

    On one process they stop requiring gradients: none is computed, AdamW skips them, clipping
    ignores them. A model wrapped for several processes (DDP, FSDP) keeps reducing the
    parameters it was wrapped with, so there ``wrapped`` is set: the gradients are computed and
    reduced as usual and ``frozen_parameters`` lists what the trainer drops before clipping,
    which leaves clipping and AdamW exactly as on one process. Parameters are looked up by
    module name at each use: FSDP replaces the ones of the modules it shards.
    """

    def __init__(self, model: torch.nn.Module, names: list[str], steps: int) -> None:
        self.names, self.steps = list(names), steps
        params = self.parameters(model)
        if params and len(params) == len({id(p) for p in model.parameters()}):
            raise ValueError(
                f"freeze.modules={self.names} freezes every parameter; leave some module to train"
            )
        self.frozen = False
        self.wrapped = False  # set by the trainer once it knows how the model is wrapped

    def parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters of the named modules of ``model`` (unwrapped), each once."""
        params = {id(p): p for m in find_modules(model, self.names) for p in m.parameters()}
        return list(params.values())

    def update(self, step: int, model: torch.nn.Module) -> None:
        """Freeze before step ``steps``, release from then on (``step``: steps done)."""
        frozen = step < self.steps
        if frozen == self.frozen or not self.names:
            return
        if not self.wrapped:
            for p in self.parameters(model):
                p.requires_grad_(not frozen)
        self.frozen = frozen
        if frozen:
            logger.info(f"step {step}: {self.names} frozen until step {self.steps}")
        else:
            logger.info(f"step {step}: {self.names} released: every module trains from now on")

    def frozen_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """What the trainer must drop the gradients of this step (only when ``wrapped``)."""
        return self.parameters(model) if self.frozen and self.wrapped else []


class ContinueTrainer(Trainer):
    """``Trainer`` set up for continued pretraining from ``ContinueConfig``; ``.fit()`` runs it."""

    def __init__(self, cfg: ContinueConfig | DictConfig) -> None:
        self.continue_cfg = ccfg = resolve_continue_config(cfg)
        self.init = pre = load_init(ccfg.init_from)
        model, kind = pre.model.train(), kind_of(pre.model)
        check_model_choice(ccfg.model, pre)
        self.freezer = Freezer(model, ccfg.freeze.modules, ccfg.freeze.steps)
        optimizer_from = self._optimizer_source(ccfg, pre)
        optim = ccfg.optim
        if optim.lr is None and pre.peak_lr is not None:
            optim = dataclasses.replace(optim, lr=pre.peak_lr)
        train_cfg = TrainConfig(
            model=model.config,
            init_from=None if pre.checkpoint else str(pre.directory),
            tokenizer=TokenizerConfig(),
            data=ccfg.data,
            optim=optim,
            schedule=ccfg.schedule,
            trainer=ccfg.trainer,
            logger=ccfg.logger,
        )
        resolve_config(train_cfg, world_size())  # bad settings fail before work
        replay, recorded = ccfg.replay.sources, False
        if replay is None:
            replay, recorded = (list(pre.data.sources) if pre.data else []), True
            if not replay and ccfg.replay.fraction > 0:
                raise ValueError(
                    f"init_from={pre.directory} records no training data (no training.json "
                    "beside it); name the replay data, e.g. replay.sources='[{path: "
                    "/data/en/*.txt}]', or set replay.fraction=0"
                )
        if recorded and pre.data and pre.data.eval_every != ccfg.data.eval_every:
            logger.warning(
                f"the model was pretrained with data.eval_every={pre.data.eval_every}, this run "
                f"holds out every {ccfg.data.eval_every}th document: replayed documents may "
                f"include its held-out ones; set data.eval_every={pre.data.eval_every}"
            )
        self.mixture = replay_mixture(
            ccfg.data, replay, ccfg.replay.fraction, model.data_format(), "replay.sources"
        )
        train_cfg.data = self.mixture.data
        super().__init__(train_cfg, model=model)  # from here this run holds its directory
        try:
            self.freezer.wrapped = self.accelerator.distributed_type != DistributedType.NO
            if self.step == 0 and self.accelerator.is_main_process and kind.uses_tokenizer:
                model.tokenizer.save(self.out_dir)  # the run's directory holds its tokenizer
            if self.step == 0 and optimizer_from is not None:
                load_optimizer_moments(self.optimizer, optimizer_from, model)
        except BaseException:  # no lock left behind (a notebook's retry would find it held)
            self.lock.release()
            raise

    @staticmethod
    def _optimizer_source(ccfg: ContinueConfig, pre: Pretrained) -> Path | None:
        if ccfg.optimizer_state == "fresh":
            return None
        if ccfg.optimizer_state == "init_from":
            if not pre.checkpoint:
                raise ValueError(
                    f"optimizer_state=init_from needs init_from to be a training checkpoint "
                    f"(a run's checkpoints/step_N/); {pre.directory} is an exported model, which "
                    "has no optimizer state"
                )
            return pre.directory
        path = Path(ccfg.optimizer_state)
        other = load_init(path, "optimizer_state")
        if not other.checkpoint:
            raise ValueError(
                f"optimizer_state={path} is an exported model, which has no optimizer state; "
                "pass a training checkpoint (a run's checkpoints/step_N/)"
            )
        ours, theirs = pre.model.config, other.model.config
        if kind_of(theirs) is not kind_of(ours):
            raise ValueError(
                f"optimizer_state={path} is a checkpoint of a {theirs.model_type!r} model; "
                f"init_from holds a {ours.model_type!r} model"
            )
        if {**theirs.to_dict(), "name": ""} != {**ours.to_dict(), "name": ""}:
            raise ValueError(
                f"optimizer_state={path} is a checkpoint of another architecture than init_from"
            )
        return path

    def _fit(self) -> TrainResult:
        """Report the data and evaluate at step 0 (unless resumed), then train (``fit``
        releases the run's lock however this ends)."""
        if self.step == 0:
            self.metrics.truncate_after(-1)  # lines of an earlier attempt that saved nothing
            self.report_data()
            self.evaluate()
        return super()._fit()

    def report_data(self) -> None:
        """Log and record where the run starts: the mixture, the replay share counted from the
        data pipeline, positions per byte of every source, the learning rate."""
        mix, pre, kind = self.mixture, self.init, self.kind
        weights = ", ".join(f"{s.label} {s.weight:.3f}" for s in mix.data.sources)
        logger.info(
            f"continuing the {kind.name} model {self.model_cfg.name} from {pre.directory} "
            f"(trained {pre.step if pre.step is not None else '?'} steps); new data: "
            f"{mix.new}, replay: {mix.replay} ({mix.fraction:.1%} of trained {kind.unit}); "
            f"document weights: {weights}"
        )
        record: dict[str, Any] = {"step": 0, "kind": "data", "replay_fraction": mix.fraction}
        if mix.replay:
            batches = min(self.cfg.trainer.steps, SHARE_BATCHES)
            counts = trained_units_by_source(
                mix.data,
                self.plain_model.data_format(),
                self.seq_len,
                self.cfg.trainer.global_rows,
                batches,
            )
            replayed = sum(counts[len(mix.new) :])
            share = replayed / max(sum(counts), 1.0)
            record["replay_share"] = share
            logger.info(
                f"replay: {share:.1%} of the {kind.unit} trained in the first {batches} batches "
                f"come from {mix.replay} (asked {mix.fraction:.1%})"
            )
        per_byte = {}
        for name, data in self.eval_sets.items():
            value = positions_per_byte(self.plain_model, data)
            if value is not None:
                per_byte[name] = value
                record[f"positions_per_byte{'/' + name if name else ''}"] = value
        shown = ", ".join(
            f"{name or 'mixture'} {v:.3f} ({1 / v:.2f} bytes/{kind.position})"
            for name, v in per_byte.items()
        )
        logger.info(f"{kind.position}s per byte of held-out text: {shown}")
        origin = "optim.lr" if self.continue_cfg.optim.lr is not None else "pretraining peak"
        if self.continue_cfg.optim.lr is None and pre.peak_lr is None:
            origin = "the paper's rule: nothing recorded"
        s = self.cfg.schedule
        logger.info(
            f"learning rate: re-warms over {s.warmup_steps} steps to {self.peak_lr:.3g} "
            f"({origin}), then {s.name} to {s.min_lr_ratio:g} x that by step "
            f"{self.cfg.trainer.steps}"
        )
        self.metrics.write(record)

    def train_step(self) -> tuple[StepStats, float]:
        self.freezer.update(self.step, self.plain_model)
        return super().train_step()

    def frozen_parameters(self) -> list[torch.nn.Parameter]:
        return self.freezer.frozen_parameters(self.plain_model)

    def training_record(self) -> dict[str, Any]:
        record = super().training_record()
        record["continued_from"] = {
            "init_from": str(self.init.directory.absolute()),
            "init_step": self.init.step,
            "new": self.mixture.new,
            "replay": self.mixture.replay,
            "replay_fraction": self.mixture.fraction,
        }
        return record


def load_optimizer_moments(optimizer: Any, checkpoint: Path, model: PreTrainedLM) -> None:
    """AdamW's moments from a training checkpoint of the same architecture; the learning
    rate, betas and weight decay stay this run's."""
    path = checkpoint / OPTIMIZER_FILE
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot read the optimizer state {path}: {err}") from None
    current = optimizer.state_dict()
    sizes = [len(g["params"]) for g in current["param_groups"]]
    saved_sizes = [len(g["params"]) for g in saved.get("param_groups", [])]
    if sizes != saved_sizes:
        raise CheckpointError(
            f"{path} holds the optimizer of another model ({saved_sizes} parameters per group, "
            f"this one has {sizes}); use optimizer_state=fresh"
        )
    optimizer.load_state_dict({**current, "state": saved["state"]})
    logger.info(f"AdamW moments loaded from {path}")


def continue_training(cfg: ContinueConfig | DictConfig) -> TrainResult:
    """Continue pretraining a model as configured; returns where things ended up."""
    return ContinueTrainer(cfg).fit()


__all__ = [
    "ContinueConfig",
    "ContinueTrainer",
    "FreezeConfig",
    "Freezer",
    "Mixture",
    "Pretrained",
    "ReplayConfig",
    "continue_training",
    "load_init",
    "positions_per_byte",
    "replay_mixture",
    "resolve_continue_config",
    "trained_units_by_source",
]
