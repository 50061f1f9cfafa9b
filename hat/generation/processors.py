"""Logits processors and warpers with ``transformers`` semantics, and ``build_processors``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hat.generation.config import GenerationConfig


class TemperatureLogitsWarper:
    """scores / temperature."""

    def __init__(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper:
    """Keep the ``top_k`` highest scores per row (ties with the k-th kept); others -> -inf."""

    def __init__(self, top_k: int, filter_value: float = -float("inf")) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k, self.filter_value = top_k, filter_value

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # [B, 1]
        return scores.masked_fill(scores < kth, self.filter_value)


class TopPLogitsWarper:
    """Nucleus: keep the smallest set of highest-probability ids whose mass reaches ``top_p``
    (at least one id: ``top_p=0`` keeps the most likely, as in transformers); others -> -inf."""

    def __init__(self, top_p: float, filter_value: float = -float("inf")) -> None:
        if not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        self.top_p, self.filter_value = top_p, filter_value

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1 - self.top_p  # the low tail whose total mass is <= 1 - top_p
        drop[..., -1] = False  # always keep the most likely id
        return scores.masked_fill(drop.scatter(-1, order, drop), self.filter_value)


class RepetitionPenaltyLogitsProcessor:
    """CTRL penalty on every id in ``input_ids``: positive scores / p, negative scores * p."""

    def __init__(self, penalty: float) -> None:
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = torch.gather(scores, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, input_ids, seen)


class LogitsProcessorList(list):
    """Applies each processor in order."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


def build_processors(
    config: GenerationConfig, custom: Sequence[Callable] | None = None, warpers: bool = True
) -> LogitsProcessorList:
    """Penalty first (also in greedy decoding), then the caller's ``custom`` processors, then
    (``warpers``) the sampling warpers: the order of ``transformers``' generate."""
    procs = LogitsProcessorList()
    if config.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    procs.extend(custom or [])
    if warpers:
        procs.extend(build_warpers(config))
    return procs


def build_warpers(config: GenerationConfig) -> LogitsProcessorList:
    """The sampling warpers of ``config`` (none when greedy): temperature, top-k, top-p. They
    read only the scores, not the ids so far."""
    procs = LogitsProcessorList()
    if config.do_sample:
        if config.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None:
            procs.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            procs.append(TopPLogitsWarper(config.top_p))
    return procs
