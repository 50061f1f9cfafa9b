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

from hat.batching import IGNORE
from hat.hub import resolve_model_dir
from hat.splitter import as_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class CausalLMOutput:
    """``loss`` is mean nats per target; ``sum_nll / ln 2 / n_target_bytes`` is bits per byte."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    sum_nll: torch.Tensor | None = None  # total nats over all targets
    n_targets: torch.Tensor | None = None  # number of predicted positions
    n_target_bytes: torch.Tensor | None = None  # bytes those targets spell (== n_targets for HAT)

    @property
    def bits_per_byte(self) -> float:
        return float(self.sum_nll) / math.log(2) / max(float(self.n_target_bytes), 1.0)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)


def next_unit_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood [B, T] in nats (0 where label == IGNORE)."""
    nll = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return nll.view(labels.shape)


def causal_lm_output(
    logits: torch.Tensor, labels: torch.Tensor | None, label_bytes: torch.Tensor | None = None
) -> CausalLMOutput:
    """Attach loss (mean nats per target) and the sums needed for bits per byte."""
    if labels is None:
        return CausalLMOutput(loss=None, logits=logits)
    nll = next_unit_nll(logits, labels)
    n_targets = (labels != IGNORE).sum()
    n_bytes = (
        n_targets if label_bytes is None else label_bytes.masked_fill(labels == IGNORE, 0).sum()
    )
    sum_nll = nll.sum()
    return CausalLMOutput(
        loss=sum_nll / n_targets.clamp_min(1),
        logits=logits,
        sum_nll=sum_nll,
        n_targets=n_targets,
        n_target_bytes=n_bytes,
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
        """
        if isinstance(texts, str | bytes):
            raise TypeError("score() takes a list of texts; wrap a single text in a list")
        texts = [as_text(t) for t in texts]
        contexts = [as_text(c) for c in contexts] if contexts is not None else [""] * len(texts)
        if len(contexts) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(contexts)} contexts")
        if not rolling:
            return self._score_pieces(texts, contexts, batch_size, return_greedy)
        window = self.max_window_bytes() if window_bytes is None else window_bytes
        if not 8 <= window <= self.max_window_bytes():
            raise ValueError(
                f"window_bytes={window_bytes} must be in [8, {self.max_window_bytes()}] for this model"
            )
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
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
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
        """Write ``config.json`` and ``model.safetensors`` (no pickle) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_model(self, str(directory / WEIGHTS_FILE))
        self._save_extras(directory)
        return directory

    def _save_extras(self, directory: Path) -> None:
        """Tokenizer files, generation config: whatever the subclass needs besides weights."""

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
        *,
        config: Any = None,
        **hub_kwargs: Any,
    ) -> PreTrainedLM:
        """Load a model written by ``save_pretrained`` from a directory or the Hugging Face Hub
        (``org/name`` or ``org/name@revision``; ``revision``, ``cache_dir``, ``token``,
        ``local_files_only``, ``force_download`` as in ``huggingface_hub``: see ``hat.hub``).
        ``config``: use it instead of the saved ``config.json`` (the weights must fit it).
        Errors name the file that is wrong."""
        name, directory = str(directory), resolve_model_dir(directory, **hub_kwargs)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: is {directory} a saved hat model?")
        if config is None:
            try:
                data = json.loads(config_path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{config_path} is not valid JSON ({err})") from None
            config = cls.config_class.from_dict(data)
        config = config.validate()
        model = cls._from_config_and_dir(config, directory)
        model.name_or_path = name  # where it came from (a directory or a Hub id)
        weights = directory / WEIGHTS_FILE
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{weights} cannot be read ({err}); the file is truncated or corrupt"
            ) from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        # tied weights are stored once; anything else missing means a mismatched checkpoint
        missing = [k for k in missing if k not in model._tied_keys()]
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match {config_path}: missing {missing}, unexpected {unexpected}"
            )
        return model.to(device=device, dtype=dtype)

    @classmethod
    def _from_config_and_dir(cls, config: Any, directory: Path) -> PreTrainedLM:
        return cls(config)

    def _tied_keys(self) -> set[str]:
        return set()
