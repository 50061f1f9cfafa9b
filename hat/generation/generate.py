"""``GenerationMixin.generate()`` for HAT and its BPE twin, with Hugging Face argument names,
and the generic loop behind it (``run_generation``).

Contract (docs/generation.md has the long form):

* tensors in -> tensor out. ``input_ids`` [B, T] (+ optional ``attention_mask``), every row
  starting with the document-start id (EOD byte for HAT, BOS for the twin), padded on the left
  or the right. Returns [B * num_return_sequences, T + steps]: each prompt right-aligned in the
  first T columns (left padding: exactly ``input_ids``), then its new ids (the end-of-document id
  included when generated), then PAD.
* a string in -> the continuation as a string; bytes in -> bytes (a bytes prompt may end inside
  a UTF-8 character); a list in -> a list out (``num_return_sequences`` consecutive per prompt).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hat.generation.choose import Chooser
from hat.generation.config import GENERATION_CONFIG_FILE, GenerateOutput, GenerationConfig
from hat.generation.processors import build_processors, build_warpers
from hat.generation.specs import ModelSpec
from hat.generation.streamer import TextStreamer
from hat.generation.utf8 import UTF8_NEED, VocabAutomaton, incomplete_tail, utf8_advance


# ==== the generic loop ================================================================
@dataclass
class _Row:
    """Host-side state of one output row."""

    prompt_len: int
    budget: int  # new ids allowed (max_new_tokens, capped by the context)
    tokens: list[int] = field(default_factory=list)
    content: bytearray = field(default_factory=bytearray)  # new bytes (ends excluded)
    done: bool = False
    streamed: int = 0


def _prepare_prompts(
    spec: ModelSpec, inputs: Any, input_ids: Any, attention_mask: Any, pad_id: int | None = None
) -> tuple[list[list[int]], list[type] | None, bool, int | None]:
    """-> (rows of ids, per-prompt type (str/bytes; None for tensors), single prompt?, width).
    Without an ``attention_mask``, PAD (and ``pad_id``, unless it is the document start) is
    padding."""
    if inputs is not None and input_ids is not None:
        raise ValueError("pass the prompt once: as `inputs` or as `input_ids`")
    inputs = input_ids if inputs is None else inputs
    if inputs is None:
        inputs = ""
    if isinstance(inputs, str | bytes | bytearray):
        return [spec.encode(inputs)], [type(inputs)], True, None
    if isinstance(inputs, list | tuple) and all(
        isinstance(x, str | bytes | bytearray) for x in inputs
    ):
        if not inputs:
            raise ValueError("empty list of prompts")
        return [spec.encode(x) for x in inputs], [type(x) for x in inputs], False, None
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"prompt must be a str, bytes, a list of them or an input_ids tensor, got "
            f"{type(inputs).__name__}"
        )
    ids = inputs[None] if inputs.dim() == 1 else inputs
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(inputs.shape)}")
    pads = torch.tensor([spec.pad_id] + ([pad_id] if pad_id not in (None, spec.start_id) else []))
    mask = ~torch.isin(ids.cpu(), pads) if attention_mask is None else attention_mask.bool()
    mask = mask.reshape(ids.shape).cpu()
    rows = []
    for r, (row, keep) in enumerate(zip(ids.cpu().tolist(), mask.tolist())):
        where = [i for i, k in enumerate(keep) if k]
        if not where or where != list(range(where[0], where[-1] + 1)):
            raise ValueError(f"row {r}: attention_mask must be one contiguous run of 1s")
        real = row[where[0] : where[-1] + 1]
        if real[0] != spec.start_id:
            raise ValueError(
                f"row {r} must start with the document-start id {spec.start_id} (the tokenizer "
                f"adds it), got {real[0]}"
            )
        rows.append(real)
    return rows, None, False, ids.shape[1]


def _check_prompt(spec: ModelSpec, r: int, row: list[int]) -> int:
    """Validate one prompt row; return its UTF-8 reader state."""
    if len(row) > spec.max_len:
        unit = "bytes" if spec.byte_level else "tokens"
        raise ValueError(
            f"prompt {r} is {len(row)} {unit} (document start included), longer than the "
            f"model's context of {spec.max_len}; shorten it (e.g. keep its end)"
        )
    vocab = len(spec.token_bytes)
    if spec.byte_level and all(0 <= t < 256 for t in row):
        incomplete_tail(bytes(row[1:]))  # EOD / PAD inside are invalid UTF-8 too: say so
    bad = [t for t in row[1:] if not 0 <= t < vocab or t in spec.banned or t == spec.start_id]
    if bad:
        raise ValueError(f"prompt {r} contains ids that are not text: {bad[:5]}")
    content = b"".join(spec.token_bytes[t] for t in row[1:])
    incomplete_tail(content)  # raises on invalid UTF-8
    return utf8_advance(0, content)


def run_generation(
    model: Any,
    spec: ModelSpec,
    rows: list[list[int]],
    config: GenerationConfig,
    generator: torch.Generator | None,
    streamer: Any,
    extra_processors: Sequence[Callable] | None,
    keep_scores: bool,
    keep_logits: bool,
) -> tuple[list[_Row], list[torch.Tensor], list[torch.Tensor]]:
    """Decode every row until it ends or runs out of budget -> (each row's state, the
    scores of each step if ``keep_scores``, its logits if ``keep_logits``).

    Each step: the ids are chosen from the logits (here, or inside a fused engine step),
    each row's host bookkeeping takes its id (ends, words, stop strings, budget), and the
    engine writes the ids and computes the next logits."""
    device = model.device
    states = [_check_prompt(spec, r, row) for r, row in enumerate(rows)]
    out = [_Row(len(row), min(config.max_new_tokens, spec.max_len - len(row))) for row in rows]
    for row in out:
        row.done = row.budget <= 0
    if streamer is not None:
        streamer.put(torch.tensor(rows[0]))
    scores_out, logits_out = [], []
    steps = max(r.budget for r in out)
    if steps <= 0:
        if streamer is not None:
            streamer.end()
        return out, scores_out, logits_out

    end_ids, banned = _end_and_banned_ids(spec, config)
    stops = [s.encode("utf-8") for s in _as_list(config.stop_strings or [])]
    # processors that read the ids so far (the penalty, the caller's) run on the host side of
    # a step, after the UTF-8 mask; the sampling warpers after them are the chooser's
    processors = build_processors(config, extra_processors, warpers=False)
    chooser = Chooser(
        _automaton(spec, end_ids, banned, device),
        build_warpers(config),
        config.do_sample,
        config.min_new_tokens,
        spec.pad_id,
    )
    state = torch.tensor(states, device=device)  # [B] UTF-8 reader state
    width = max(map(len, rows))
    history = _history(spec, rows, width, steps, device)
    done = torch.tensor([r.done for r in out], device=device)
    n_done = int(done.sum())  # while 0, the per-step where(done, ...) are skipped
    budgets = torch.tensor([r.budget for r in out], device=device)
    # a budget only refuses ids once a row has <= max(UTF8_NEED) ids left (the mask's `cap`)
    tight_from = min(r.budget for r in out if not r.done) - max(UTF8_NEED)
    every_row = torch.ones(len(rows), dtype=torch.bool, device=device)

    per_step_outputs = keep_scores or keep_logits or streamer is not None
    wait = _backbone_wait(model, spec, config, len(rows), per_step_outputs)
    # when nothing on the host reads the scores, a compiled step may choose the ids itself
    host_reads_scores = bool(processors) or keep_scores or keep_logits
    engine = _start_engine(
        model, spec, rows, steps, config, wait, None if host_reads_scores else chooser
    )
    # fused: the engine's step returns the next ids and reader states, not logits
    fused = getattr(engine, "choose", None) is not None
    step_index = torch.arange(steps + 1, device=device)  # 0-d views: no copy to the device
    logits = engine.prefill()
    vocab_size = logits.shape[-1]  # the noise's width when sampling
    if wait > 1:  # rows with no budget (a prompt as long as the context) set no one's pace
        for r in (r for r, row in enumerate(out) if row.done):
            engine.retire(r)
    # with waiting, rows write at their own pace: `counts` holds each row's new ids and
    # `ready` says which rows' logits are new this step (the others sit it out)
    ready: list[bool] | None = None
    counts = [0] * len(rows)
    for step in range(steps if wait == 1 else sum(r.budget for r in out)):
        if logits is not None:  # not chosen by the step (or the prefill's): choose here
            at = step if ready is None else torch.tensor(counts, device=device)
            left = (budgets - at).clamp(min=1) if step >= tight_from else None  # done: any
            if ready is None:
                early = every_row if step < config.min_new_tokens else None
                idle = done if n_done else None
            else:
                early = at < config.min_new_tokens if min(counts) < config.min_new_tokens else None
                idle = done | ~torch.tensor(ready, device=device)
            process = None
            if processors:  # they see each row's ids so far (a row that waited is behind)
                seen = history[:, : width - 1 + (step if ready is None else max(counts))]
                process = functools.partial(processors, seen)
            noise = chooser.noise(len(rows), vocab_size, device, generator)
            tokens, state, scores = chooser.choose(logits, state, left, early, idle, noise, process)
            if keep_scores:
                scores_out.append(scores)
            if keep_logits:
                logits_out.append(logits.float())
        if processors:
            _write_history(history, tokens, width - 1, step, ready, counts, out)
        host_state = state.tolist() if streamer is not None else None
        for r, token in enumerate(tokens.tolist()):
            if not out[r].done and (ready is None or ready[r]):
                counts[r] += 1
                _advance_row(out[r], r, token, spec, engine, config, end_ids, stops)
                if out[r].done and wait > 1:
                    engine.retire(r)
                if streamer is not None and host_state[r] == 0:
                    _stream(streamer, spec, out[r])
        if sum(r.done for r in out) != n_done:
            done = torch.tensor([r.done for r in out], device=device)
            n_done = int(done.sum())
        if n_done == len(out):
            break
        if fused:  # the step chooses the next ids
            noise = chooser.noise(len(rows), vocab_size, device, generator)
            at = step_index[step + 1] if wait == 1 else torch.tensor(counts, device=device)
            (tokens, state), logits = engine.step(tokens, (state, at, budgets, done, noise)), None
        else:
            logits = engine.step(tokens)
        ready = getattr(engine, "ready", None)
    if streamer is not None:
        _stream(streamer, spec, out[0])
        streamer.end()
    return out, scores_out, logits_out


def _end_and_banned_ids(spec: ModelSpec, config: GenerationConfig) -> tuple[set[int], set[int]]:
    """The ids that end a row and the ids never generated; an error when no id is left."""
    end_ids = set(spec.end_ids) | (
        set(_as_list(config.eos_token_id)) if config.eos_token_id is not None else set()
    )
    banned = spec.banned | set(config.suppress_tokens or [])
    vocab = set(range(len(spec.token_bytes)))
    for name, ids in (("eos_token_id", end_ids), ("suppress_tokens", banned)):
        outside = sorted(i for i in ids if i not in vocab)
        if outside:  # an id the model never produces would silently end or ban nothing
            raise ValueError(
                f"{name}: {outside} outside the model's ids 0..{len(vocab) - 1}"
                + (" (HAT's are bytes)" if len(vocab) == 256 else "")
            )
    if vocab <= banned or (config.min_new_tokens and vocab <= banned | end_ids):
        raise ValueError(
            "suppress_tokens (with min_new_tokens) leave no id that can be generated; "
            "suppress fewer ids"
        )
    return end_ids, banned


def _backbone_wait(
    model: Any, spec: ModelSpec, config: GenerationConfig, batch: int, per_step_outputs: bool
) -> int:
    """How many HAT rows that finished a word wait for one shared backbone pass (1: none
    waits). Not with per-step outputs (scores, logits, a streamer), whose steps would no
    longer be each row's ids; "auto": HAT's engine decides from its model and the batch."""
    if not config.use_cache or per_step_outputs:
        return 1
    if config.backbone_wait != "auto":
        return config.backbone_wait
    auto_wait = getattr(spec.engines[0], "auto_wait", None)  # the twin's engine: none
    return auto_wait(model, batch) if auto_wait is not None else 1


def _start_engine(
    model: Any,
    spec: ModelSpec,
    rows: list[list[int]],
    steps: int,
    config: GenerationConfig,
    wait: int,
    choose: Chooser | None,
) -> Any:
    """The cached engine (``wait``: rows per shared backbone pass; ``choose``: the chooser a
    compiled step may run in its graph) or, with ``use_cache=False``, the uncached one."""
    if not config.use_cache:
        return spec.engines[1](model, rows, steps)
    options: dict[str, Any] = {"wait": wait} if wait > 1 else {}
    if choose is not None:
        options["choose"] = choose
    return spec.engines[0](model, rows, steps, compile=config.compile_step, **options)


def _history(
    spec: ModelSpec, rows: list[list[int]], width: int, steps: int, device: Any
) -> torch.Tensor:
    """What processors see as input_ids [B, width - 1 + steps]: each prompt's content (the
    document start is not content) left-padded to the widest prompt's (``width`` ids with its
    start), then room for ``steps`` new ids (transformers' layout)."""
    history = torch.full((len(rows), width - 1 + steps), spec.pad_id, device=device)
    for r, row in enumerate(rows):
        history[r, width - len(row) : width - 1] = torch.tensor(row[1:], dtype=torch.long)
    return history


def _write_history(
    history: torch.Tensor,
    tokens: torch.Tensor,
    first: int,
    step: int,
    ready: list[bool] | None,
    counts: list[int],
    out: list[_Row],
) -> None:
    """The step's ids into ``history`` (new ids from column ``first``): every row's at
    ``step``, or with ``ready`` each moving row's after its own (a row that waited is
    behind)."""
    if ready is None:
        history[:, first + step] = tokens
        return
    moved = [r for r in range(len(out)) if ready[r] and not out[r].done]
    history[moved, [first + counts[r] for r in moved]] = tokens[moved]


def _advance_row(
    row: _Row,
    r: int,
    token: int,
    spec: ModelSpec,
    engine: Any,
    config: GenerationConfig,
    end_ids: set[int],
    stops: list[bytes],
) -> None:
    """Host bookkeeping for one new id: ends, word counting, stop strings, budget."""
    row.tokens.append(token)
    if token in end_ids:
        row.done = True
        return
    row.content += spec.token_bytes[token]
    starts = engine.observe(r, token)
    if config.max_new_words is not None:
        first_new = bisect.bisect_left(starts, row.prompt_len)  # words started in new text
        if len(starts) - first_new > config.max_new_words:
            cut = starts[first_new + config.max_new_words] - row.prompt_len
            del row.tokens[cut:]  # drop the word that would be one too many
            del row.content[cut:]
            row.done = True
            return
    if any(row.content.endswith(s) for s in stops):
        row.done = True
    if len(row.tokens) >= row.budget:
        row.done = True


def _stream(streamer: Any, spec: ModelSpec, row: _Row) -> None:
    """Put the ids not yet streamed (HAT: bytes, at character boundaries only, so a byte that
    ``max_new_words`` later drops is never shown)."""
    if spec.byte_level:
        new = list(row.content[row.streamed :])
        row.streamed = len(row.content)
    else:
        new = [t for t in row.tokens[row.streamed :] if spec.token_bytes[t]]
        row.streamed = len(row.tokens)
    if new:
        streamer.put(torch.tensor(new))


_AUTOMATA: dict = {}


def _automaton(spec: ModelSpec, end_ids: set[int], banned: set[int], device) -> VocabAutomaton:  # noqa: ANN001
    key = (hash(tuple(spec.token_bytes)), frozenset(end_ids), frozenset(banned), str(device))
    if key not in _AUTOMATA:
        if len(_AUTOMATA) > 16:
            _AUTOMATA.clear()
        _AUTOMATA[key] = VocabAutomaton(spec.token_bytes, end_ids, banned, device)
    return _AUTOMATA[key]


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


# ==== the mixin =======================================================================
class GenerationMixin:
    """Adds ``generate``, ``generation_config`` and saving/loading ``generation_config.json``
    to ``HATForCausalLM`` and ``BPEForCausalLM`` (list it before ``PreTrainedLM``)."""

    @property
    def generation_config(self) -> GenerationConfig:
        config = self.__dict__.get("_generation_config")
        if config is None:
            config = self.__dict__["_generation_config"] = GenerationConfig()
        return config

    @generation_config.setter
    def generation_config(self, value: Any) -> None:
        """Ours, or a ``transformers.GenerationConfig`` (its settings over the defaults, as
        transformers reads a model's); its call flags belong in ``generate``'s arguments."""
        if not isinstance(value, GenerationConfig):
            if not hasattr(value, "to_diff_dict"):
                raise TypeError(
                    "generation_config must be a hat.GenerationConfig or a "
                    f"transformers.GenerationConfig, got {type(value).__name__}"
                )
            value, flags = GenerationConfig.from_transformers(value)
            if any(flags.values()):
                raise ValueError(
                    f"{sorted(k for k, v in flags.items() if v)} are generate() arguments, "
                    "not a model's default: pass them to generate()"
                )
        self.__dict__["_generation_config"] = value.validate()

    def _save_extras(self, directory: Path) -> list[str]:
        self.generation_config.save_pretrained(directory)
        return [*super()._save_extras(directory), GENERATION_CONFIG_FILE]

    def _load_extras(self, directory: Path) -> None:
        super()._load_extras(directory)
        if (directory / GENERATION_CONFIG_FILE).is_file():
            self.generation_config = GenerationConfig.from_pretrained(directory)

    def check_generation_config(self, config: GenerationConfig) -> GenerationConfig:
        """``config`` validated, for this model: ValueError names a setting out of range, or
        one for the other kind of model (words are HAT's)."""
        config.validate()
        if not self.generation_spec().byte_level:
            if config.max_new_words is not None:
                raise ValueError("max_new_words is for HAT; the BPE twin counts max_new_tokens")
            if config.backbone_wait not in ("auto", 1):
                raise ValueError(
                    "backbone_wait is for HAT (its backbone runs per word); the twin's per token"
                )
        return config

    @torch.no_grad()
    def generate(
        self,
        inputs: str | bytes | Sequence[str | bytes] | torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        streamer: Any = None,
        logits_processor: Sequence[Callable] | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        return_dict_in_generate: bool = False,
        output_scores: bool = False,
        output_logits: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Continue prompts. Tensors in -> ids out (prompt + new); text in -> new text out.

        kwargs override ``generation_config`` (``max_new_tokens``, ``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``eos_token_id``,
        ``stop_strings``, ``num_return_sequences``, ``use_cache``, ``max_new_words``, ...).
        ``seed`` or ``generator`` make sampling reproducible. ``streamer`` (``put``/``end``)
        receives the prompt, then the new ids as they come; batch size 1 only.

        transformers' conventions hold: ``generation_config`` may be a
        ``transformers.GenerationConfig`` (the options it sets, over the model's own),
        ``max_length`` counts the prompt (its padded width) plus the new ids, ``pad_token_id``
        fills finished rows; ``streamer`` may be a transformers streamer and
        ``logits_processor`` transformers ``LogitsProcessor``s (run after the repetition
        penalty, before the sampling warpers). Options that cannot apply to this decoding
        (beam search, ...) are an error that says so.
        """
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            generation_config, flags = GenerationConfig.from_transformers(
                generation_config, self.generation_config
            )
            return_dict_in_generate |= flags.get("return_dict_in_generate", False)
            output_scores |= flags.get("output_scores", False)
            output_logits |= flags.get("output_logits", False)
        config = self.check_generation_config(
            (generation_config or self.generation_config).update(**kwargs)
        )
        spec = self.generation_spec()
        rows, kinds, single, width = _prepare_prompts(
            spec, inputs, input_ids, attention_mask, config.pad_token_id
        )
        if config.max_new_tokens is None:  # max_length: the prompt's (padded) width + new ids
            prompt_width = width if width is not None else max(map(len, rows))
            config = dataclasses.replace(
                config, max_new_tokens=max(0, config.max_length - prompt_width)
            )
        rows = [row for row in rows for _ in range(config.num_return_sequences)]
        if streamer is not None:
            if len(rows) != 1:
                raise ValueError("streaming needs a single prompt and num_return_sequences=1")
            if isinstance(streamer, TextStreamer) and streamer.tokenizer is None:
                streamer.tokenizer = spec.tokenizer
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            # inference mode: ~20% less per small op than no_grad (no version counters)
            with torch.inference_mode():
                out, scores, logits = run_generation(
                    self,
                    spec,
                    rows,
                    config,
                    generator,
                    streamer,
                    logits_processor,
                    output_scores,
                    output_logits,
                )
        finally:
            self.train(was_training)
        # clones are ordinary tensors: callers may modify them in place, unlike inference ones
        scores, logits = [t.clone() for t in scores], [t.clone() for t in logits]
        prompt = input_ids if inputs is None else inputs
        given = prompt.reshape(-1, prompt.shape[-1]).cpu() if kinds is None else None
        sequences = _format(spec, rows, out, kinds, single, width, config.pad_token_id, given)
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.to(self.device)
        if not return_dict_in_generate:
            return sequences
        return GenerateOutput(
            sequences,
            tuple(scores) if output_scores else None,
            tuple(logits) if output_logits else None,
        )


def _format(
    spec: ModelSpec,
    rows: list[list[int]],
    out: list[_Row],
    kinds: list[type] | None,
    single: bool,
    width: int | None,
    pad_id: int | None = None,
    given: torch.Tensor | None = None,
) -> Any:
    """Rows -> the contract's output (see the module docstring); ``pad_id`` (default: the
    model's PAD) fills the new columns after a row has finished and the columns before a
    right-aligned prompt, except that a left-padded row of the ``input_ids`` ``given``
    [B, T] (on the CPU) comes back exactly as given."""
    if kinds is not None:
        per_row = [k for k in kinds for _ in range(len(out) // len(kinds))]
        texts = [
            r.content.decode("utf-8", errors="replace") if k is str else bytes(r.content)
            for r, k in zip(out, per_row)
        ]
        return texts[0] if single and len(texts) == 1 else texts
    steps = max(len(r.tokens) for r in out)
    seq = torch.full((len(rows), width + steps), spec.pad_id if pad_id is None else pad_id)
    copies = len(rows) // len(given) if given is not None else 1  # num_return_sequences
    for i, (prompt, row) in enumerate(zip(rows, out)):
        lead = width - len(prompt)  # padding columns before the right-aligned prompt
        ids = prompt + row.tokens
        seq[i, lead : lead + len(ids)] = torch.tensor(ids)
        source = given[i // copies] if given is not None else None
        if source is not None and source[lead:].tolist() == prompt:  # left-padded input:
            seq[i, :lead] = source[:lead]  # its padding comes back as given, whatever its ids
    return seq
