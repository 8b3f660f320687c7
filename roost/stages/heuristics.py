"""`heuristics`: cheap row rules (length, repeated n-grams, not a request, broken text)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from roost.algorithms.base import FilterStep
from roost.algorithms.heuristics import BrokenTextFilter, LengthFilter, NotARequestFilter, RepeatedNgramFilter
from roost.stages.base import STAGES, Drop, RowFilter, StageConfig


class HeuristicsConfig(StageConfig):
    kind: Literal["heuristics"]
    min_instruction_chars: int | None = Field(3, ge=0)
    max_instruction_chars: int | None = Field(8192, ge=1)
    min_response_chars: int | None = Field(1, ge=0)
    max_response_chars: int | None = Field(32768, ge=1)
    ngram: int = Field(3, ge=1)
    max_repeated_ngram_fraction: float = Field(0.3, gt=0, le=1)
    not_a_request: bool = True
    min_words: int = Field(2, ge=1)
    broken_text: bool = True


@STAGES.register
class Heuristics(RowFilter):
    kind = "heuristics"
    Config = HeuristicsConfig
    uses_embedder = False

    def __init__(self, config: HeuristicsConfig, context):
        super().__init__(config, context)
        c = config
        rules = [
            *([BrokenTextFilter()] if c.broken_text else []),
            *([NotARequestFilter(min_words=c.min_words)] if c.not_a_request else []),
            LengthFilter(c.min_instruction_chars, c.max_instruction_chars, c.min_response_chars, c.max_response_chars),
            RepeatedNgramFilter(n=c.ngram, max_fraction=c.max_repeated_ngram_fraction),
        ]
        self.step = FilterStep(rules, stage=self.kind)

    def filter(self, row) -> Drop | None:
        return self.step.first_drop(row)

    def settings(self) -> dict[str, Any]:
        return {f.name: f.settings() for f in self.step.filters}
