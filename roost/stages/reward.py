"""`reward`: a reward model's score as columns, with an optional minimum.

SFT rows get `reward` (the conversation's score), `reward_outputs` (every output of the
head) and `reward_reason` (why a score is null). Preference rows get `chosen_reward`,
`rejected_reward`, `reward_margin` = chosen - rejected, both output lists and the reason;
`min_margin` drops pairs the reward model does not agree with (margin below it).
"""
from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

from roost.engines.config import RewardModelConfig
from roost.stages.base import STAGES, Annotation, Annotator, Drop, Option, Panel, StageConfig, server_url


class RewardConfig(StageConfig):
    kind: Literal["reward"]
    model: RewardModelConfig
    min_reward: float | None = None  # SFT: reward; preference: chosen_reward
    min_margin: float | None = None  # preference rows only


@STAGES.register
class Reward(Annotator):
    kind = "reward"
    Config = RewardConfig
    score_columns = ("reward", "chosen_reward", "reward_margin")
    uses_embedder = False
    options = (
        Option("reward_model", str, "reward model (adds the reward stage)",
               lambda c, v: c.__setitem__("model", {**(c.get("model") or {}), "model": v})),
        Option("reward_server", str, "URL of a vLLM server serving the reward model (reward model's server)",
               lambda c, v: c.__setitem__("model", {**(c.get("model") or {}),
                                                    "server": server_url((c.get("model") or {}).get("server"), v)})),
    )
    report_panels = (
        Panel("reward", "Reward", "reward", ("reward",), labels={"reward": "reward"}),
        Panel("reward", "Reward: chosen vs rejected", "reward", ("chosen_reward", "rejected_reward"),
              xlabel="reward (curation's reward model)", labels={"chosen_reward": "reward", "rejected_reward": "reward"}),
        Panel("reward_margin", "Reward margin", "reward", ("reward_margin",), marker="zero",
              labels={"reward_margin": "reward margin (chosen - rejected)"}),
    )

    def __init__(self, config: RewardConfig, context):
        super().__init__(config, context)
        if config.min_margin is not None and context.kind != "preference":
            raise context.config_error(self, "min_margin needs preference rows")
        from roost.engines import ensure_available

        ensure_available(config.model.model, config.model.revision)
        if config.model.server is not None:  # down, not vLLM, another model, not a classifier: one line now
            from roost.engines.server_engine import check_server

            check_server(config.model.server, config.model.model, need="classify")
        self.batch_size = max(config.model.batch_size, 256)
        self._scorer = None

    @property
    def pairs(self) -> bool:
        return self.context.kind == "preference"

    def fields(self) -> list[pa.Field]:
        floats = pa.list_(pa.float64())
        if self.pairs:
            return [pa.field("chosen_reward", pa.float64()), pa.field("rejected_reward", pa.float64()),
                    pa.field("reward_margin", pa.float64()), pa.field("chosen_reward_outputs", floats),
                    pa.field("rejected_reward_outputs", floats), pa.field("reward_reason", pa.string())]
        return [pa.field("reward", pa.float64()), pa.field("reward_outputs", floats), pa.field("reward_reason", pa.string())]

    def scorer(self):
        if self._scorer is None:
            from roost.scorers.reward import get_reward_scorer

            self._scorer = get_reward_scorer(self.config.model)
        return self._scorer

    def annotate(self, rows) -> list[Annotation]:
        if not self.pairs:
            scores = self.scorer().score([r.messages for r in rows])
            return [self._check(Annotation({"reward": s.value, "reward_outputs": s.outputs, "reward_reason": s.reason}),
                                s.value, None) for s in scores]
        scores = self.scorer().score([r.prompt + r.chosen for r in rows] + [r.prompt + r.rejected for r in rows])
        chosen, rejected = scores[: len(rows)], scores[len(rows):]
        out = []
        for c, r in zip(chosen, rejected):
            margin = None if c.value is None or r.value is None else c.value - r.value
            reason = "; ".join(f"{k}: {s.reason}" for k, s in (("chosen", c), ("rejected", r)) if s.reason) or None
            values = {"chosen_reward": c.value, "rejected_reward": r.value, "reward_margin": margin,
                      "chosen_reward_outputs": c.outputs, "rejected_reward_outputs": r.outputs, "reward_reason": reason}
            out.append(self._check(Annotation(values), c.value, margin))
        return out

    def _check(self, a: Annotation, value: float | None, margin: float | None) -> Annotation:
        cfg = self.config
        if cfg.min_reward is not None and (value is None or value < cfg.min_reward):
            a.drop = Drop("low_reward", f"reward {_show(value)} < {cfg.min_reward}")
        elif cfg.min_margin is not None and (margin is None or margin < cfg.min_margin):
            a.drop = Drop("low_reward_margin", f"chosen - rejected = {_show(margin)} < {cfg.min_margin}")
        return a

    def settings(self) -> dict[str, Any]:
        info = self.scorer().describe() if self._scorer is not None else {}
        return {**super().settings(), "reward_model": info}


def _show(v: float | None) -> str:
    return "null" if v is None else f"{v:.4f}"
