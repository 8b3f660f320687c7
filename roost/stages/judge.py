"""`judge`: an LLM as judge of the responses, as columns, with optional minimums.

`mode: absolute` (Prometheus style, roost.judges.absolute): the model writes feedback, then a
1-5 score under a rubric, as JSON enforced by structured output.
- SFT rows: `judge_score`, `judge_feedback` for the response (the assistant turns after the
  last user turn; a row without one gets a null score, reason "no response to judge");
- preference rows: `chosen_judge_score`, `rejected_judge_score`, `judge_score_margin` (chosen -
  rejected) and both feedbacks (UltraFeedback style ratings of both answers);
- `min_score` drops rows whose score (preference: the chosen's) is below it or null (reason
  `low_judge_score`, detail "judge_score 2 < 3"); `min_margin` (preference) drops pairs whose
  margin is below it (`low_judge_margin`).

`mode: pairwise` (preference rows; roost.judges.pairwise, the judge SPPO uses): the
probability that chosen beats rejected, asked in both orders and averaged, from the logprobs of
the answer letters, as `judge_chosen_win`; `min_win` drops the pairs the judge disagrees with
(`judge_disagrees`, detail "judge_chosen_win 0.4123 < 0.5").

Every mode adds `judge_reason` (why a value is null: a question longer than the judge's
context, an answer cut at max_tokens; never a default score) and `judge_model`. The manifest
records the model, its revision, the template and rubric versions and sha256s, and the
unreadable answers by kind.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator, model_validator

from roost.config import throughput
from roost.engines.config import EngineConfig
from roost.stages.base import STAGES, Annotation, Annotator, Drop, StageConfig, engine_config


class JudgeConfig(StageConfig):
    kind: Literal["judge"]
    mode: Literal["absolute", "pairwise"] = "absolute"
    model: EngineConfig  # the judge (any chat model); a string is its path or hub id
    # absolute: a file with {instruction}, {response}, {rubric}; pairwise: {conversation}, {response_a}, {response_b}
    template: str | None = None
    rubric: str | None = None  # absolute: a rubric file (criterion, then what each score means)
    max_tokens: int = Field(1024, ge=1)  # absolute: per answer; an answer cut here is null, with the reason
    max_feedback_chars: int | None = Field(1000, ge=1)  # absolute: cap on the feedback (None: max_tokens only)
    min_score: int | None = Field(None, ge=1, le=5)  # absolute
    min_margin: float | None = None  # absolute, preference rows: chosen - rejected score
    min_win: float | None = Field(None, ge=0.0, le=1.0)  # pairwise: P(chosen beats rejected)
    batch_size: int = throughput(128, ge=1)  # rows per engine call

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        return engine_config(value)

    @field_validator("template")
    @classmethod
    def _template(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is None or "mode" not in info.data:
            return path
        if info.data["mode"] == "absolute":
            from roost.judges.absolute import load_template
        else:
            from roost.judges.pairwise import load_template
        load_template(path)
        return path

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, path: str | None) -> str | None:
        from roost.judges.absolute import load_rubric

        if path is not None:
            load_rubric(path)
        return path

    @model_validator(mode="after")
    def _mode_options(self) -> "JudgeConfig":
        wrong = {"absolute": ("min_win",), "pairwise": ("rubric", "min_score", "min_margin")}[self.mode]
        given = [name for name in wrong if getattr(self, name) is not None]
        if given:
            raise ValueError(f"{given[0]} is not an option of mode {self.mode}")
        return self

    def contents(self) -> dict[str, str]:
        """Digests of the template and rubric files: editing one makes this a new recipe."""
        from roost.config import file_digest

        files = {"template": self.template, "rubric": self.rubric}
        return {k: d for k, path in files.items() if path and (d := file_digest(path)) is not None}


@STAGES.register
class Judge(Annotator):
    kind = "judge"
    Config = JudgeConfig
    score_columns = ("judge_score", "chosen_judge_score", "judge_chosen_win")

    def __init__(self, config: JudgeConfig, context):
        super().__init__(config, context)
        if config.mode == "pairwise" and context.kind != "preference":
            raise context.config_error(self, "mode pairwise needs preference rows (chosen and rejected)")
        if config.min_margin is not None and context.kind != "preference":
            raise context.config_error(self, "min_margin needs preference rows")
        from roost.engines import ensure_available

        ensure_available(config.model.model, config.model.revision)
        self.batch_size = config.batch_size
        self._judge = None
        self.unreadable: Counter = Counter()
        self.examples: dict[str, str] = {}

    @property
    def pairs(self) -> bool:
        return self.context.kind == "preference"

    def fields(self) -> list[pa.Field]:
        tail = [pa.field("judge_reason", pa.string()), pa.field("judge_model", pa.string())]
        if self.config.mode == "pairwise":
            return [pa.field("judge_chosen_win", pa.float64()), *tail]
        if self.pairs:
            return [pa.field("chosen_judge_score", pa.int64()), pa.field("rejected_judge_score", pa.int64()),
                    pa.field("judge_score_margin", pa.float64()), pa.field("chosen_judge_feedback", pa.string()),
                    pa.field("rejected_judge_feedback", pa.string()), *tail]
        return [pa.field("judge_score", pa.int64()), pa.field("judge_feedback", pa.string()), *tail]

    def judge(self):
        if self._judge is None:
            from roost.engines import get_engine

            cfg = self.config
            engine = get_engine(cfg.model)
            if cfg.mode == "pairwise":
                from roost.judges.pairwise import PairwiseJudge, load_template

                template = load_template(cfg.template) if cfg.template else None
                self._judge = PairwiseJudge(engine, template, source=cfg.template, progress="judge")
            else:
                from roost.judges.absolute import AbsoluteJudge, load_rubric, load_template

                self._judge = AbsoluteJudge(
                    engine, load_template(cfg.template) if cfg.template else None,
                    load_rubric(cfg.rubric) if cfg.rubric else None, max_tokens=cfg.max_tokens,
                    max_feedback_chars=cfg.max_feedback_chars, template_source=cfg.template,
                    rubric_source=cfg.rubric, progress="judge")
        return self._judge

    def _count(self, code: str | None, reason: str | None) -> None:
        if code:
            self.unreadable[code] += 1
            self.examples.setdefault(code, reason or "")

    def annotate(self, rows) -> list[Annotation]:
        model = self.config.model.model
        if self.config.mode == "pairwise":
            prefs = self.judge().compare([(r.prompt, r.view("chosen"), r.view("rejected")) for r in rows])
            out = []
            for p in prefs:
                if p.value is None:
                    self._count(_pairwise_code(p.reason), p.reason)
                a = Annotation({"judge_chosen_win": p.value, "judge_reason": p.reason, "judge_model": model})
                out.append(self._check(a, win=p.value, reason=p.reason))
            return out
        if not self.pairs:
            verdicts = self.judge().judge([(r.prompt, _response(r)) for r in rows])
            out = []
            for v in verdicts:
                self._count(v.code, v.reason)
                a = Annotation({"judge_score": v.score, "judge_feedback": v.feedback, "judge_reason": v.reason,
                                "judge_model": model})
                out.append(self._check(a, score=v.score, reason=v.reason, name="judge_score"))
            return out
        verdicts = self.judge().judge([(r.prompt, r.view("chosen")) for r in rows] +
                                      [(r.prompt, r.view("rejected")) for r in rows])
        chosen, rejected = verdicts[: len(rows)], verdicts[len(rows):]
        out = []
        for c, rj in zip(chosen, rejected):
            self._count(c.code, c.reason)
            self._count(rj.code, rj.reason)
            margin = None if c.score is None or rj.score is None else float(c.score - rj.score)
            reason = "; ".join(f"{k}: {v.reason}" for k, v in (("chosen", c), ("rejected", rj)) if v.reason) or None
            a = Annotation({"chosen_judge_score": c.score, "rejected_judge_score": rj.score, "judge_score_margin": margin,
                            "chosen_judge_feedback": c.feedback, "rejected_judge_feedback": rj.feedback,
                            "judge_reason": reason, "judge_model": model})
            out.append(self._check(a, score=c.score, reason=reason, name="chosen_judge_score", margin=margin))
        return out

    def _check(self, a: Annotation, *, score: int | None = None, win: float | None = None, margin: float | None = None,
               reason: str | None = None, name: str = "judge_score") -> Annotation:
        cfg = self.config
        null = f"null ({reason})" if reason else "null"
        if cfg.min_score is not None and (score is None or score < cfg.min_score):
            a.drop = Drop("low_judge_score", f"{name} {null if score is None else score} < {cfg.min_score}")
        elif cfg.min_margin is not None and (margin is None or margin < cfg.min_margin):
            shown = null if margin is None else f"{margin:g}"
            a.drop = Drop("low_judge_margin", f"judge_score_margin {shown} < {cfg.min_margin}")
        elif cfg.min_win is not None and (win is None or win < cfg.min_win):
            a.drop = Drop("judge_disagrees", f"judge_chosen_win {null if win is None else f'{win:.4f}'} < {cfg.min_win}")
        return a

    def settings(self) -> dict[str, Any]:
        out = {**super().settings()}
        if self._judge is not None:
            out["judge"] = self._judge.describe()
        out["unreadable"] = dict(sorted(self.unreadable.items()))
        out["unreadable_examples"] = self.examples
        return out


def _response(row) -> str | None:
    """The SFT row's response: the assistant turns after its last user turn (None: none)."""
    after = [m["content"] for m in row.messages[len(row.prompt):] if m["role"] == "assistant"]
    return "\n".join(after) if after else None


def _pairwise_code(reason: str | None) -> str:
    return "context_overflow" if reason and "over the judge's limit" in reason else "no_answer_logprobs"
