"""What HAT and its BPE twin share: outputs, weight init, scoring, save/load."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

from hat.batching import IGNORE, row_groups
from hat.hub import resolve_model_dir
from hat.manifest import DamagedFileError, verify_manifest, write_manifest
from hat.splitter import as_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class CausalLMOutput:
    """What a forward pass returns; with labels, the sums for the loss and for bits per byte.

    ``loss`` is the mean nats per target, every target included (the model learns to end
    documents). Bits per byte count text only, one definition everywhere (the trainer's
    ``eval_bpb``, ``hat-eval``, ``hat.evaluation.bits_per_byte``): the nats of the targets that
    are text (not the end-of-document marker) over the bytes those targets spell.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    sum_nll: torch.Tensor | None = None  # total nats over all targets
    n_targets: torch.Tensor | None = None  # number of predicted positions
    text_nll: torch.Tensor | None = None  # nats over the targets that are text
    text_bytes: torch.Tensor | None = None  # bytes those text targets spell

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(float(self.text_nll), float(self.text_bytes))


def bits_per_byte(nats: float, num_bytes: float) -> float:
    """Total nats of some text over its UTF-8 byte count, in bits per byte."""
    return nats / math.log(2) / max(num_bytes, 1.0)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)


def next_unit_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood [B, T] in nats (0 where label == IGNORE)."""
    nll = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return nll.view(labels.shape)


def causal_lm_output(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    end_id: int,
    label_bytes: torch.Tensor | None = None,
) -> CausalLMOutput:
    """Attach the loss and the sums for bits per byte. ``end_id``: the label that ends a
    document (not text); ``label_bytes`` [B, T]: bytes each target spells (default 1)."""
    if labels is None:
        return CausalLMOutput(loss=None, logits=logits)
    nll = next_unit_nll(logits, labels)  # [B, T]
    n_targets = (labels != IGNORE).sum()
    is_text = (labels != IGNORE) & (labels != end_id)
    spelt = is_text if label_bytes is None else label_bytes.masked_fill(~is_text, 0)
    sum_nll = nll.sum()
    return CausalLMOutput(
        loss=sum_nll / n_targets.clamp_min(1),
        logits=logits,
        sum_nll=sum_nll,
        n_targets=n_targets,
        text_nll=nll.masked_fill(~is_text, 0.0).sum(),
        text_bytes=spelt.sum(),
    )


def rolling_windows(doc: bytes, first_target: int, window: int) -> list[tuple[int, int, int]]:
    """Cut a long document into pieces the model can score: ``(context_start, start, end)``
    byte offsets, each ``end - context_start <= window``, the targets ``[start, end)`` covering
    ``[first_target, len(doc))`` once, every offset on a UTF-8 character start.

    The first piece takes as much as fits; each later one predicts ``window // 2`` bytes from
    the ``window - window // 2`` bytes before them.
    """
    if len(doc) <= window:
        return [(0, first_target, len(doc))] if first_target < len(doc) else []
    stride = window // 2
    pieces, start = [], first_target
    while start < len(doc):
        context_start = _char_ceil(doc, max(0, start - (window - stride)))
        end = _char_floor(doc, min(len(doc), context_start + window))
        pieces.append((context_start, start, end))
        start = end
    return pieces


def _char_floor(data: bytes, i: int) -> int:
    while 0 < i < len(data) and (data[i] & 0xC0) == 0x80:  # a UTF-8 continuation byte
        i -= 1
    return i


def _char_ceil(data: bytes, i: int) -> int:
    while i < len(data) and (data[i] & 0xC0) == 0x80:
        i += 1
    return i


class PreTrainedLM(nn.Module):
    """Base of ``HATForCausalLM`` and ``BPEForCausalLM``.

    Subclasses set ``config_class`` and implement ``forward(**batch)`` plus
    ``_encode_for_scoring`` and ``_collate_for_scoring``.
    """

    config_class: type

    # ---- initialisation -------------------------------------------------------------
    def init_weights(self) -> None:
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                # residual output projections scaled down with depth (GPT-2 / Llama practice)
                scale = 1.0
                if name.endswith(("o_proj", "down")):
                    scale = 1.0 / math.sqrt(2 * self._depth_of(name))
                nn.init.normal_(module.weight, std=std * scale)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)

    def _depth_of(self, name: str) -> int:
        stack = name.split(".")[0]
        return len(getattr(self, stack).transformer.layers) if hasattr(self, stack) else 1

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def empty_copy(self) -> PreTrainedLM:
        """The same class and config with weights on the meta device (no memory): a shell to
        ``load_state_dict(..., assign=True)`` into."""
        with torch.device("meta"):
            return type(self)(self.config)

    # ---- scoring --------------------------------------------------------------------
    @torch.no_grad()
    def score(
        self,
        texts: Sequence[str | bytes],
        contexts: Sequence[str | bytes] | None = None,
        batch_size: int = 16,
        rolling: bool = False,
        window_bytes: int | None = None,
        return_greedy: bool = False,
    ) -> list[float] | list[tuple[float, bool]]:
        """Total log-likelihood (nats) of each text's bytes given its context.

        Each (context + text) is its own document, starting from the end-of-document marker;
        with no context the text starts a new document. Empty texts score 0.0.

        A document longer than the model's context is an error unless ``rolling=True``: then
        it is scored in windows of at most ``window_bytes`` bytes (default: the most the model
        takes), each predicting the next half window from the half window before it (the
        first window predicts all of its bytes). A document that fits is scored in one piece,
        exactly as without ``rolling``. Pass the same ``window_bytes`` to models you compare.

        ``return_greedy=True`` returns ``(log-likelihood, is_greedy)`` pairs, computed in the same
        forward passes: ``is_greedy`` says whether every predicted unit (byte for HAT, token for
        the twin) of the text is the model's most likely one given everything before it, i.e.
        greedy decoding would produce the text (lm-evaluation-harness's flag).

        Texts are scored longest first, ``batch_size`` per batch; on a CPU a batch of long
        texts runs as several forwards of at most ``hat.batching.CPU_FORWARD_POSITIONS``
        positions (the same scores, faster there: ``hat.batching.row_groups``).
        """
        if isinstance(texts, str | bytes):
            raise TypeError("score() takes a list of texts; wrap a single text in a list")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        texts = [as_text(t) for t in texts]
        contexts = [as_text(c) for c in contexts] if contexts is not None else [""] * len(texts)
        if len(contexts) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(contexts)} contexts")
        window = self.check_window_bytes(window_bytes)  # without rolling too: never ignored
        if not rolling:
            return self._score_pieces(texts, contexts, batch_size, return_greedy)
        owners, piece_texts, piece_contexts = [], [], []
        for i, (text, context) in enumerate(zip(texts, contexts)):
            doc = (context + text).encode("utf-8")
            for ctx_start, start, end in rolling_windows(doc, len(context.encode()), window):
                owners.append(i)
                piece_contexts.append(doc[ctx_start:start].decode("utf-8"))
                piece_texts.append(doc[start:end].decode("utf-8"))
        scores, greedy = [0.0] * len(texts), [True] * len(texts)
        pieces = self._score_pieces(piece_texts, piece_contexts, batch_size, return_greedy)
        for i, piece in zip(owners, pieces):
            value, piece_greedy = piece if return_greedy else (piece, True)
            scores[i] += value
            greedy[i] = greedy[i] and piece_greedy
        return list(zip(scores, greedy)) if return_greedy else scores

    def check_window_bytes(self, window_bytes: int | None) -> int:
        """``window_bytes`` for rolling scoring (None: the longest this model takes); a
        ValueError names the range otherwise."""
        window = self.max_window_bytes() if window_bytes is None else window_bytes
        if not isinstance(window, int) or not 8 <= window <= self.max_window_bytes():
            raise ValueError(
                f"window_bytes={window_bytes} must be in [8, {self.max_window_bytes()}] for this model"
            )
        return window

    def max_window_bytes(self) -> int:
        """The longest context + text (in UTF-8 bytes) that ``score`` always accepts."""
        raise NotImplementedError

    def _score_pieces(
        self, texts: list[str], contexts: list[str], batch_size: int, return_greedy: bool = False
    ) -> list[float] | list[tuple[float, bool]]:
        """Score (context, text) pairs that each fit the model, longest first, in batches."""
        items = [self._encode_for_scoring(t, c) if t else None for t, c in zip(texts, contexts)]
        scores, greedy = [0.0] * len(texts), [True] * len(texts)
        todo = sorted(
            (i for i, it in enumerate(items) if it is not None), key=lambda i: -items[i][2]
        )
        was_training = self.training
        self.eval()
        try:
            chunks = []  # batches of at most batch_size; on a CPU, a few long rows at a time
            for start in range(0, len(todo), batch_size):
                rows = todo[start : start + batch_size]  # longest first
                chunks += [rows[g] for g in row_groups([items[i][2] for i in rows], self.device)]
            for chunk in chunks:
                batch = self._collate_for_scoring([items[i] for i in chunk])
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out = self(**batch)
                labels = batch["labels"]
                logprob = -next_unit_nll(out.logits, labels).sum(dim=1)
                for i, value in zip(chunk, logprob.tolist()):
                    scores[i] = value
                if return_greedy:  # every target is the argmax (ignored positions pass)
                    hit = (out.logits.argmax(dim=-1) == labels) | (labels == IGNORE)
                    for i, value in zip(chunk, hit.all(dim=1).tolist()):
                        greedy[i] = value
        finally:
            self.train(was_training)
        return list(zip(scores, greedy)) if return_greedy else scores

    def _encode_for_scoring(self, text: str, context: str) -> tuple[Any, int, int]:
        """-> (units, index of the first target unit, length in units)."""
        raise NotImplementedError

    def _collate_for_scoring(self, items: list[tuple[Any, int, int]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ---- save / load ----------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` (no pickle), the subclass's extra files
        and, last, ``manifest.json`` (each file's size and checksum) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / WEIGHTS_FILE))
        write_manifest(directory, [WEIGHTS_FILE, *self.save_config(directory)])
        return directory

    def save_config(self, directory: Path) -> list[str]:
        """Everything ``from_pretrained`` reads but the weights: ``config.json`` and the
        subclass's files. Returns the file names written. (Training checkpoints get these
        beside accelerate's ``model.safetensors``, so they load like an exported model.)"""
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return [CONFIG_FILE, *self._save_extras(directory)]

    def _save_extras(self, directory: Path) -> list[str]:
        """Write what the subclass needs besides config and weights (tokenizer, generation
        config); return the file names written."""
        return []

    def _load_extras(self, directory: Path) -> None:
        """Read back what ``_save_extras`` wrote that the constructor does not take (the
        generation config); ``directory`` is local (a Hub id already downloaded)."""

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload to the Hugging Face Hub with a generated model card (``hat.hub.push_to_hub``:
        ``private``, ``token``, ``revision``, ``commit_message``, ``create_pr``, ``run_dir``)."""
        from hat.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        verify: bool = True,
        config: Any = None,
        **hub_kwargs: Any,
    ) -> PreTrainedLM:
        """Load a model written by ``save_pretrained`` (or a training checkpoint) from a
        directory or the Hugging Face Hub (``org/name`` or ``org/name@revision``; ``revision``,
        ``cache_dir``, ``token``, ``local_files_only``, ``force_download`` as in
        ``huggingface_hub``: see ``hat.hub``). Its files are checked against ``manifest.json``
        first (``verify=False`` skips that; directories saved before manifests existed load
        unchecked). ``config``: use it instead of the saved ``config.json`` (the weights must
        fit it). Errors name the file that is wrong."""
        name, directory = str(directory), resolve_model_dir(directory, **hub_kwargs)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: is {directory} a saved hat model?")
        if verify:
            try:
                verify_manifest(directory, required=False)
            except DamagedFileError as err:
                raise DamagedFileError(
                    err.path, f"{err.problem}; save or download it again"
                ) from None
        if config is None:
            try:
                data = json.loads(config_path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{config_path} is not valid JSON ({err})") from None
            try:
                config = cls.config_class.from_dict(data)
            except ValueError as err:
                raise ValueError(f"{config_path}: {err}") from None
        try:
            config = config.validate()
        except ValueError as err:
            raise ValueError(f"{config_path}: {err}") from None
        model = cls._from_config_and_dir(config, directory)
        model._load_extras(directory)
        model.name_or_path = name  # where it came from (a directory or a Hub id)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file() and (directory / "trainer_state.json").is_file():
            raise ValueError(
                f"{directory} is a sharded (FSDP) training checkpoint without {WEIGHTS_FILE}; "
                "load the run's exported model instead (<output_dir>/model or exports/step_N)"
            )
        model.load_weights(weights, described_by=str(config_path))
        return model.to(device=device, dtype=dtype)

    def load_weights(self, weights: Path, described_by: str) -> None:
        """Load a ``model.safetensors`` (an export's, or a training checkpoint's) into this
        model; an unreadable file or one whose names differ from the architecture
        ``described_by`` is an error naming it."""
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{weights} cannot be read ({err}); the file is truncated or corrupt"
            ) from None
        # a training checkpoint of a torch.compile'd model prefixes every weight name
        state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        # tied weights are stored once; anything else missing means a mismatched checkpoint
        missing = [k for k in missing if k not in self._tied_keys()]
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match {described_by}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )

    @classmethod
    def _from_config_and_dir(cls, config: Any, directory: Path) -> PreTrainedLM:
        return cls(config)

    def _tied_keys(self) -> set[str]:
        return set()
