"""`exact_dedup`: one row per group with the same normalized text view (hash of NFKC,
casefolded, whitespace-collapsed text). Survivor: highest input priority, then input order."""
from __future__ import annotations

from typing import Literal

import numpy as np

from roost.algorithms.exact_dedup import dedup_digests
from roost.stages.base import STAGES, Digest, Option, SetDecision, SetStage, StageConfig, Survivors, View, setting


class ExactDedupConfig(StageConfig):
    kind: Literal["exact_dedup"]
    view: View = "auto"  # auto: first_instruction for SFT rows, prompt for preference rows


@STAGES.register
class ExactDedup(SetStage):
    kind = "exact_dedup"
    Config = ExactDedupConfig
    options = (Option("exact_field", str, "exact dedup view: first_instruction, prompt, conversation, ...", setting("view")),)

    def features(self):
        return [Digest(self.view)]

    def run(self, s: Survivors) -> SetDecision:
        keep, survivor = dedup_digests(s.features[Digest(self.view)], self.context.priority(s))
        removed = ~keep
        return SetDecision(
            keep=keep,
            reasons=np.where(removed, "exact_duplicate", None).astype(object),
            measure=np.where(removed, 1.0, np.nan),
            duplicate_of=np.where(removed, survivor, -1),
            settings={"view": self.view, "normalization": "NFKC, casefold, whitespace", "hash": "blake2b-128"},
        )

    def detail(self, reason: str, measure: float) -> str:
        return f"same normalized {self.view}"
