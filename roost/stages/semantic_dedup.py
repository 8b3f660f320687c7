"""`semantic_dedup`: near-duplicates by embedding similarity (sentence-transformers + FAISS,
see roost.algorithms.semantic_dedup); adds Magpie's diversity tags to every surviving row."""
from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from roost.stages.base import (
    STAGES,
    Embedding,
    Option,
    Panel,
    SetDecision,
    SetStage,
    StageConfig,
    Survivors,
    View,
    setting,
)


class SemanticDedupConfig(StageConfig):
    kind: Literal["semantic_dedup"]
    view: View = "auto"
    # cosine similarity at or above which rows duplicate; default: the embedding model's own
    # (0.9 for MiniLM, the mapped value for static embeddings: roost.engines.embeddings.dedup_threshold)
    threshold: float | None = Field(None, gt=0, le=1)
    k: int = Field(16, ge=1)
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"

    def as_fingerprinted(self, recipe) -> "SemanticDedupConfig":
        from roost.engines.embeddings import dedup_threshold

        if self.threshold is not None and self.threshold == dedup_threshold(recipe.embedding.model, recipe.embedding.kind):
            return self.model_copy(update={"threshold": None})
        return self


@STAGES.register
class SemanticDedup(SetStage):
    kind = "semantic_dedup"
    Config = SemanticDedupConfig
    options = (
        Option("semantic", bool, "semantic dedup on/off", lambda c, v: v, flag="--semantic/--no-semantic"),
        Option("threshold", float, "semantic dedup: cosine similarity that counts as duplicate (default 0.9; 0.94 "
               "with static embeddings)", setting("threshold")),
    )
    # rows it removed carry their similarity in the reject's detail (roost.report.columns.removed_similarity)
    report_panels = (Panel("similarity", "Semantic dedup: nearest-neighbour similarity", "dedup-similarity",
                           ("nearest_similarity", "removed_similarity"), marker="semantic_dedup",
                           labels={"nearest_similarity": "cosine similarity to the nearest other row"}),)

    def features(self):
        return [Embedding(self.view)]

    def fields(self) -> list[pa.Field]:
        return [
            pa.field("min_neighbor_distance", pa.float64()),  # cosine distance to the nearest other row
            pa.field("repeat_count", pa.int64()),  # other rows at or above the threshold
            pa.field("nearest_id", pa.string()),
            pa.field("nearest_similarity", pa.float64()),
        ]

    def refs(self) -> set[str]:
        return {"nearest_id"}

    @property
    def threshold(self) -> float:
        if self.config.threshold is not None:
            return self.config.threshold
        from roost.engines.embeddings import dedup_threshold

        cfg = self.context.recipe.embedding
        return dedup_threshold(cfg.model, cfg.kind)

    def run(self, s: Survivors) -> SetDecision:
        from roost.algorithms.semantic_dedup import semantic_dedup

        cfg = self.config
        n = len(s)
        priority = self.context.priority(s)
        result = semantic_dedup(
            s.features[Embedding(self.view)], [str(i) for i in range(n)], threshold=self.threshold,
            scores=None if priority is None else [None if np.isnan(v) else float(v) for v in priority],
            k=cfg.k, index=cfg.index,
        )
        near, dup = result.nearest_index, result.duplicate_index  # positions among the survivors
        removed = ~result.keep
        return SetDecision(
            keep=result.keep,
            reasons=np.where(removed, "semantic_duplicate", None).astype(object),
            measure=np.array([np.nan if v is None else v for v in result.similarity], dtype=np.float64),
            duplicate_of=dup,
            columns={
                "min_neighbor_distance": np.asarray(result.tags["min_neighbor_distance"], dtype=np.float64),
                "repeat_count": np.asarray(result.tags["repeat_count"], dtype=np.float64),
                "nearest_id": np.where(near >= 0, s.position[np.maximum(near, 0)], -1),
                "nearest_similarity": np.asarray(result.tags["nearest_similarity"], dtype=np.float64),
            },
            settings={**result.settings, "view": self.view, "embedding": self.context.embedder_info},
        )

    def detail(self, reason: str, measure: float) -> str:
        return f"cosine {measure:.4f} >= {self.threshold}"
