"""`selection`: deita's score-first, diversity-aware selection (roost.algorithms.selection): best score
first, keep a row only if its cosine similarity to every kept row is <= tau, up to a budget."""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from roost.stages.base import STAGES, Embedding, Option, SetDecision, SetStage, StageConfig, Survivors, View, setting


class SelectionConfig(StageConfig):
    kind: Literal["selection"]
    budget: int | None = Field(None, ge=1)
    tau: float = Field(0.9, gt=0, le=1)  # max cosine similarity to any already-kept row
    view: View = "auto"
    # a column written by an earlier stage (deita_score, reward, chosen_reward, ...) or "input"
    # for input.score_column; default: the score of the last scoring stage before this one
    score: str | None = None


@STAGES.register
class Selection(SetStage):
    kind = "selection"
    Config = SelectionConfig
    options = (
        Option("budget", int, "select at most this many rows, best score first (adds selection)", setting("budget")),
        Option("tau", float, "selection: max cosine similarity to an already selected row", setting("tau")),
    )

    def check(self) -> None:
        self.context.score_column(self, self.config.score)

    def features(self):
        return [Embedding(self.view)]

    def fields(self) -> list[pa.Field]:
        return [pa.field("selection_rank", pa.int64()), pa.field("nearest_kept_similarity", pa.float64())]

    def run(self, s: Survivors) -> SetDecision:
        from roost.algorithms.selection import select_diverse

        name, values = self.context.scores(self, s, self.config.score)
        result = select_diverse(s.features[Embedding(self.view)],
                                [None if np.isnan(v) else float(v) for v in values], self.config.budget, self.config.tau)
        keep = result.selected_mask
        reasons = np.full(len(s), None, dtype=object)
        reasons[~keep & result.considered] = "too_similar_to_selected"
        reasons[~keep & ~result.considered] = "over_budget"
        return SetDecision(
            keep=keep, reasons=reasons,
            measure=np.where(reasons == "over_budget", result.rank, result.nearest_kept_similarity).astype(np.float64),
            columns={"selection_rank": result.rank.astype(np.float64),
                     "nearest_kept_similarity": result.nearest_kept_similarity.astype(np.float64)},
            settings={**result.settings, "score": name, "view": self.view},
        )

    def detail(self, reason: str, measure: float) -> str:
        if reason == "over_budget":
            return f"budget {self.config.budget} filled before rank {int(measure)}"
        return f"cosine {measure:.4f} > tau {self.config.tau}"
