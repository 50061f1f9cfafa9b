"""lm-evaluation-harness adapter: ``--model hat`` runs HAT and its BPE twin alike.

    pip install -e ".[eval]"
    hat-lm-eval --model hat --model_args pretrained=outputs/small/model --tasks my_task \\
        --include_path tasks/ --batch_size 16
    hat-lm-eval --model hat --model_args pretrained=org/name@v1,dtype=bfloat16,device=cuda ...

    import hat, lm_eval                # importing hat registers "hat" in lm-eval's registry
    lm_eval.simple_evaluate(model="hat", model_args={"pretrained": "outputs/small/model"}, ...)

``hat-lm-eval`` is lm-eval's own command line (every flag) with ``hat`` registered: lm-eval
finds models only in its registry, which nothing outside lm-eval fills before its CLI runs.

Each request type maps onto one primitive of the models, batched:

* ``loglikelihood``: ``model.score(continuations, contexts, return_greedy=True)`` — the
  log-likelihood of the continuation's bytes (HAT) or tokens (twin) and whether greedy decoding
  would produce it, from the same forward passes. Trailing whitespace of a context moves to
  the continuation (lm-eval's rule for its HF models), so both models score the same bytes; a
  context too long for the model keeps its end.
* ``loglikelihood_rolling``: ``model.score(texts, rolling=True)`` — each text a document of
  its own, long ones in windows (``window_bytes``, default the model's context).
* ``generate_until``: batched ``model.generate(contexts, stop_strings=until, ...)``, the text
  cut before the first stop string; ``max_gen_toks`` counts the model's units (bytes for HAT,
  tokens for the twin), as ``max_new_tokens`` does.

Model args: ``pretrained`` (a saved directory, a Hub id ``org/name[@revision]``, or a loaded
model object), ``revision``, ``device`` (default: cuda if available), ``dtype`` (``auto``: as
saved; ``float32``, ``bfloat16``, ...), ``batch_size`` (``auto`` = 16), ``max_gen_toks``,
``window_bytes``, ``backbone_wait`` (HAT: ``generate(backbone_wait=K)`` in
``generate_until``'s batches, default ``auto``; docs/generation.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text
from tqdm.auto import tqdm

from hat.auto import load_pretrained
from hat.hub import resolve_model_dir, split_revision
from hat.integrations import resolve_dtype
from hat.modeling import WEIGHTS_FILE, PreTrainedLM
from hat.registry import kind_of

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


@register_model("hat")
class HATEvalLM(LM):
    """lm-eval's ``LM`` for ``HATForCausalLM`` and ``BPEForCausalLM`` (see the module doc)."""

    def __init__(
        self,
        pretrained: str | PreTrainedLM,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        max_gen_toks: int = 256,
        window_bytes: int | None = None,
        backbone_wait: int | str | None = None,
        trust_remote_code: bool | None = None,  # lm-eval's flag; hat runs no remote code
    ) -> None:
        super().__init__()
        if isinstance(pretrained, PreTrainedLM):
            self.model = pretrained.eval()
            if device is not None:
                self.model.to(device)
        else:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            name, revision = split_revision(str(pretrained), revision)
            local = resolve_model_dir(name, revision=revision)  # a Hub id: its snapshot
            dtype = resolve_dtype(dtype, local / WEIGHTS_FILE)
            self.model = load_pretrained(local, device=device, dtype=dtype)
            self.model.name_or_path = str(pretrained)
        self._device = self.model.device
        self.batch_size = _batch_size(batch_size, max_batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.window_bytes = None if window_bytes in (None, "") else int(window_bytes)
        if self.window_bytes is not None:  # now, not at a long run's first rolling request
            self.model.check_window_bytes(self.window_bytes)
        cfg = self.model.config
        self.byte_level = kind_of(cfg).unit == "bytes"
        self.max_units = cfg.max_seq_bytes if self.byte_level else cfg.max_seq_tokens
        # generate_until's batches: HAT's rows may wait for a shared backbone pass (checked
        # here, by the model's own rules, not after a long evaluation)
        self.generate_options = {}
        if backbone_wait not in (None, "", "auto"):
            self.generate_options["backbone_wait"] = int(backbone_wait)
            self.model.check_generation_config(
                self.model.generation_config.update(**self.generate_options)
            )
        self._warned = False

    # ---- lm-eval's request types --------------------------------------------------------
    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        pairs = [self._fit_request(*req.args) for req in requests]
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        chunk = self.batch_size * 8  # long to short, so batches stay as score() forms them
        with tqdm(total=len(pairs), disable=disable_tqdm, desc="loglikelihood") as bar:
            for start in range(0, len(order), chunk):
                part = order[start : start + chunk]
                scored = self.model.score(
                    [pairs[i][1] for i in part],
                    [pairs[i][0] for i in part],
                    batch_size=self.batch_size,
                    return_greedy=True,
                )
                for i, (logprob, greedy) in zip(part, scored):
                    results[i] = (float(logprob), bool(greedy))
                    self.cache_hook.add_partial("loglikelihood", requests[i].args, results[i])
                bar.update(len(part))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        results = []
        with tqdm(total=len(texts), disable=disable_tqdm, desc="loglikelihood_rolling") as bar:
            for start in range(0, len(texts), self.batch_size):
                part = texts[start : start + self.batch_size]
                scores = self.model.score(
                    part, batch_size=self.batch_size, rolling=True, window_bytes=self.window_bytes
                )
                for text, value in zip(part, scores):
                    results.append(float(value))
                    self.cache_hook.add_partial("loglikelihood_rolling", (text,), float(value))
                bar.update(len(part))
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}  # requests with the same generation settings
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        results = [""] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until") as bar:
            for members in groups.values():
                options = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
                # "" stops nothing (lm-eval's postprocessing skips it; its seq2seq models add
                # an empty EOS text): generate() refuses empty stop strings
                until = [stop for stop in options.pop("until") if stop]
                new = options.pop("max_gen_toks")
                options = _generation_options(options)
                members = sorted(members, key=lambda i: -len(requests[i].args[0]))
                for start in range(0, len(members), self.batch_size):
                    part = members[start : start + self.batch_size]
                    contexts = [self._fit_context(requests[i].args[0], new) for i in part]
                    texts = self.model.generate(
                        contexts,
                        max_new_tokens=new,
                        stop_strings=until or None,
                        **options,
                        **self.generate_options,
                    )
                    for i, text in zip(part, texts):
                        results[i] = postprocess_generated_text(text, until, None)
                        self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                    bar.update(len(part))
        return results

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model_type": self.model.config.model_type,
            "model_num_parameters": self.model.num_parameters(),
            "model_dtype": str(self.model.dtype),
            "model_name_or_path": getattr(self.model, "name_or_path", None),
        }

    # ---- fitting requests into the model's context --------------------------------------
    def _fit_request(self, context: str, continuation: str) -> tuple[str, str]:
        """Trailing whitespace of the context moves to the continuation; a context too long
        for the model keeps its end."""
        stripped = context.rstrip()
        context, continuation = stripped, context[len(stripped) :] + continuation
        return self._fit_context(context, 0, continuation), continuation

    def _fit_context(self, context: str, reserve: int, continuation: str = "") -> str:
        """The longest end of ``context`` that fits with ``continuation`` and ``reserve`` more
        units (the document start takes one)."""
        budget = self.max_units - 1 - reserve - self._units(continuation)
        if len((context + continuation).encode()) + reserve < self.max_units:
            return context  # every unit spells at least one byte: it fits
        if self._units(context) <= budget:
            return context
        if budget < 0:
            raise ValueError(
                f"a continuation of {self._units(continuation)} units (+{reserve} to generate) "
                f"does not fit the model's context of {self.max_units}"
            )
        lo, hi = 0, len(context)  # the smallest start whose suffix fits
        while lo < hi:
            mid = (lo + hi) // 2
            if self._units(context[mid:]) <= budget:
                hi = mid
            else:
                lo = mid + 1
        if not self._warned:
            logger.warning("contexts longer than the model's context are cut to their end")
            self._warned = True
        return context[lo:]

    def _units(self, text: str) -> int:
        if self.byte_level:
            return len(text.encode("utf-8"))
        return len(self.model.tokenizer.encode(text))


def _batch_size(value: int | str | None, max_batch_size: int | None) -> int:
    """lm-eval's ``--batch_size``: a number, or ``auto`` (a fixed default here)."""
    if value is None or str(value).startswith("auto"):
        size = DEFAULT_BATCH_SIZE
    else:
        size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value}")
    return min(size, int(max_batch_size)) if max_batch_size else size


def _generation_options(options: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's normalised generation kwargs -> ``generate()`` options (greedy: no warpers;
    lm-eval spells greedy as temperature 0)."""
    # one answer per request, as long as max_gen_toks allows: a saved generation config's
    # num_return_sequences would pair answers with the wrong requests, its max_new_words
    # would cut them short (a task's gen_kwargs may still set either)
    options = {"num_return_sequences": 1, "max_new_words": None, **options}
    if not options.get("do_sample"):
        for name in ("temperature", "top_p", "top_k"):
            options.pop(name, None)
        options["do_sample"] = False
    return options


def cli_main(argv: list[str] | None = None) -> None:
    """``hat-lm-eval``: lm-eval's command line with ``--model hat`` registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["hat-lm-eval", *argv]
    cli_evaluate()
