"""The combined caption check that `build` and `filter-unsafe` run: the word lists OR the learned model.

A caption is unsafe when the rules fire or the model's probability reaches its threshold. The verdict says
which signal fired: the rules' category and term (with the model's score beside it when it fired too), or
category ``text-model`` with the score alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from styleprefs.safety.learned import BACKEND as MODEL_BACKEND
from styleprefs.safety.learned import PromptModel
from styleprefs.safety.report import TEXT_LISTS_BACKEND
from styleprefs.safety.text import TextFilter

MODEL_CATEGORY = "text-model"


@dataclass(frozen=True)
class CaptionVerdict:
    unsafe: bool
    category: str | None = None
    matched: str | None = None
    backend: str | None = None
    score: float | None = None  # the model's probability; None when the model is off


class CaptionCheck:
    """Rules (``text_filter``) OR ``model`` (None: rules only) at ``threshold`` (None: the model's own)."""

    def __init__(self, text_filter: TextFilter, model: PromptModel | None = None,
                 threshold: float | None = None) -> None:
        self.text_filter, self.model = text_filter, model
        self.threshold = threshold if threshold is not None or model is None else model.threshold
        self.model_backend = f"{MODEL_BACKEND}:{model.name}" if model else None

    @property
    def backends(self) -> list[str]:
        return [TEXT_LISTS_BACKEND] + ([self.model_backend] if self.model_backend else [])

    def check_many(self, texts: Iterable[str]) -> list[CaptionVerdict]:
        texts = list(texts)
        scores = self.model.scores(texts) if self.model else [None] * len(texts)
        return [self._verdict(rule, score) for rule, score in zip(self.text_filter.check_many(texts), scores)]

    def _verdict(self, rule, score: float | None) -> CaptionVerdict:
        model_fired = score is not None and score >= self.threshold
        if rule.unsafe:
            matched = f"{rule.term}; model {score:.3f}" if model_fired else rule.term
            backend = f"{TEXT_LISTS_BACKEND}+{self.model_backend}" if model_fired else TEXT_LISTS_BACKEND
            return CaptionVerdict(True, rule.category, matched, backend, score)
        if model_fired:
            return CaptionVerdict(True, MODEL_CATEGORY, f"score {score:.3f}", self.model_backend, score)
        return CaptionVerdict(False, score=score)
