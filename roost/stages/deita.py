"""`deita`: deita's complexity and quality scores (roost.scorers.deita) as columns.

SFT rows are scored as their conversation; preference rows as prompt + chosen.
"""
from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from roost.config import throughput
from roost.engines.config import ServerConfig
from roost.stages.base import STAGES, Annotation, Annotator, Option, Panel, StageConfig, server_url, setting


class DeitaConfig(StageConfig):
    kind: Literal["deita"]
    complexity_model: str | None = None  # e.g. hkust-nlp/deita-complexity-scorer
    quality_model: str | None = None  # e.g. hkust-nlp/deita-quality-scorer
    dtype: str = "auto"
    max_model_len: int = Field(2048, ge=16)
    overflow: Literal["truncate", "null"] = "truncate"
    backend: Literal["auto", "vllm", "transformers"] = throughput("auto")  # same scores either way (< 1e-4)
    batch_size: int = throughput(2048, ge=1)  # conversations per engine call
    # a vLLM server serving complexity_model (and quality_model, unless quality_server is set);
    # where the scorer runs is not part of the fingerprint (same scores, < 1e-4)
    server: ServerConfig | None = throughput(None)
    quality_server: ServerConfig | None = throughput(None)


@STAGES.register
class Deita(Annotator):
    kind = "deita"
    Config = DeitaConfig
    score_columns = ("deita_score",)
    options = (
        Option("scorer", str, "one model for both deita scores (adds the deita stage)",
               lambda c, v: c.update(complexity_model=v, quality_model=v)),
        Option("complexity_model", str, "deita complexity scorer (adds the deita stage)", setting("complexity_model")),
        Option("quality_model", str, "deita quality scorer (adds the deita stage)", setting("quality_model")),
        Option("scorer_server", str, "URL of a vLLM server serving the deita scorer model (deita stage's server)",
               lambda c, v: c.__setitem__("server", server_url(c.get("server"), v))),
    )
    report_panels = (Panel("deita", "Deita score", "deita", ("deita_score",),
                           labels={"deita_score": "deita score (complexity x quality)"}),)
    uses_embedder = False

    def __init__(self, config: DeitaConfig, context):
        super().__init__(config, context)
        if not config.complexity_model or not config.quality_model:
            raise context.config_error(self, "needs complexity_model and quality_model (or --scorer)")
        from roost.engines import ensure_available

        for model in {config.complexity_model, config.quality_model}:
            ensure_available(model)
        for model, server in self._servers():
            if server is not None:  # down, not vLLM, another model: one line now, before any row is read
                from roost.engines.server_engine import check_server

                check_server(server, model)
        self.batch_size = config.batch_size
        self._scorers: tuple | None = None
        self.info: dict[str, Any] = {}

    def fields(self) -> list[pa.Field]:
        return [
            pa.field("complexity_scores", pa.list_(pa.float64())),
            pa.field("quality_scores", pa.list_(pa.float64())),
            pa.field("deita_score", pa.float64()),
            pa.field("deita_score_reason", pa.string()),
        ]

    def scorers(self):
        if self._scorers is None:
            from roost.engines import EngineConfig
            from roost.engines.hf_scoring import get_scoring_engine
            from roost.scorers.deita import DeitaScorer

            cfg = self.config
            made: dict[str, DeitaScorer] = {}
            for role, (model, server) in zip(("complexity", "quality"), self._servers()):
                if model not in made:  # one model for both scores: one scorer, one engine call per batch
                    engine = get_scoring_engine(
                        EngineConfig(model=model, dtype=cfg.dtype, max_model_len=cfg.max_model_len, server=server),
                        cfg.backend)
                    made[model] = DeitaScorer(engine, overflow=cfg.overflow)
                self.info[role] = {**made[model].engine.describe(), **made[model].settings()}
            self._scorers = (made[cfg.complexity_model], made[cfg.quality_model])
        return self._scorers

    def _servers(self) -> list[tuple[str, ServerConfig | None]]:
        """(model, server) for complexity and quality."""
        cfg = self.config
        return [(cfg.complexity_model, cfg.server), (cfg.quality_model, cfg.quality_server or cfg.server)]

    def annotate(self, rows) -> list[Annotation]:
        complexity, quality = self.scorers()
        results = complexity.score_conversations([r.messages for r in rows],
                                                 quality_scorer=None if quality is complexity else quality)
        out = []
        for r in results:
            # a score that exists but was computed on cut text says so; a null score says why
            reason = r["deita_score_reason"] or ("; ".join(r["score_notes"]) if r["score_notes"] else None)
            out.append(Annotation({"complexity_scores": r["complexity_scores"], "quality_scores": r["quality_scores"],
                                   "deita_score": r["deita_score"], "deita_score_reason": reason}))
        return out

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), **self.info}

