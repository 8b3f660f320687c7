"""An absolute LLM judge, Prometheus style: feedback, then a score from 1 to 5 under a rubric.

Prometheus (prometheus-eval) asks its judge for "Feedback: ... [RESULT] <1-5>" and reads the
score with a regex. Here the answer is JSON decoded under the schema
`{"feedback": string, "score": integer 1..5}` by the engine's structured output
(roost.judges.structured), feedback first so the model reasons before it scores. A finished
answer therefore always holds a score in 1..5; an answer that cannot be read (cut at
`max_tokens`, a question longer than the judge's context) is a null score with the reason,
never a default. `max_feedback_chars` caps the feedback in the schema (a rambling model is
made to close it and score); None leaves it to `max_tokens`.

Template: a file with `{instruction}` (the user's message, or for a multi-turn prompt the
conversation as "User: ..." / "Assistant: ..." lines), `{response}` and `{rubric}`, filled in
one pass; default templates/absolute.txt (after Prometheus' absolute grading prompt). Rubric:
a text file (criterion, then what each score means); default templates/rubric_helpfulness.txt.
Both are recorded as a version (the shipped files) or "custom", with their sha256.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from roost.errors import ConfigError
from roost.judges.pairwise import plain_conversation

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE_FILE = TEMPLATES / "absolute.txt"
RUBRIC_FILE = TEMPLATES / "rubric_helpfulness.txt"
TEMPLATE_VERSION = "roost-absolute-1"  # of the default template file; a user's file is "custom"
RUBRIC_VERSION = "roost-rubric-helpfulness-1"
PLACEHOLDERS = ("instruction", "response", "rubric")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
SCORES = (1, 5)


def default_template() -> str:
    return TEMPLATE_FILE.read_text()


def default_rubric() -> str:
    return RUBRIC_FILE.read_text()


def check_template(text: str, *, source: str = "the judge template") -> None:
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        raise ConfigError(f"{source} has no {', '.join('{' + p + '}' for p in missing)} placeholder "
                          f"(an absolute judge template needs {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")


def _read(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path} ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {what} {path} (not UTF-8 text)") from None


def load_template(path: str | None) -> str:
    """The template text of a file (None: the default), checked."""
    if path is None:
        return default_template()
    text = _read(path, "judge template")
    check_template(text, source=str(path))
    return text


def load_rubric(path: str | None) -> str:
    if path is None:
        return default_rubric()
    text = _read(path, "rubric")
    if not text.strip():
        raise ConfigError(f"rubric {path} is empty")
    return text


def fill(template: str, instruction: str, response: str, rubric: str) -> str:
    values = {"instruction": instruction, "response": response, "rubric": rubric.strip()}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def answer_schema(max_feedback_chars: int | None) -> dict:
    feedback: dict[str, Any] = {"type": "string"}
    if max_feedback_chars is not None:
        feedback["maxLength"] = max_feedback_chars
    return {"type": "object",
            "properties": {"feedback": feedback, "score": {"type": "integer", "minimum": SCORES[0], "maximum": SCORES[1]}},
            "required": ["feedback", "score"], "additionalProperties": False}


def instruction_text(prompt: Sequence[dict]) -> str:
    """What `{instruction}` holds: the user's message, or the conversation as plain lines."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return plain_conversation(prompt)


@dataclass
class Verdict:
    score: int | None
    feedback: str | None
    reason: str | None = None  # why score is None
    code: str | None = None  # context_overflow, truncated, not_json, schema_mismatch, no_response


class AbsoluteJudge:
    """Any chat model as a 1-5 judge of a response to a prompt (see the module docstring)."""

    def __init__(self, engine, template: str | None = None, rubric: str | None = None, *, max_tokens: int = 1024,
                 max_feedback_chars: int | None = 1000, template_source: str | None = None,
                 rubric_source: str | None = None, progress: str | None = None):
        from roost.judges.structured import StructuredAsker

        self.template = default_template() if template is None else template
        check_template(self.template, source=template_source or "the judge template")
        self.rubric = default_rubric() if rubric is None else rubric
        self.template_source = template_source or ("default" if template is None else "custom")
        self.rubric_source = rubric_source or ("default" if rubric is None else "custom")
        self.schema = answer_schema(max_feedback_chars)
        self.asker = StructuredAsker(engine, max_tokens=max_tokens, seed_name="absolute_judge", progress=progress)

    def prompt(self, prompt: Sequence[dict], response: str) -> str:
        """The question's user message."""
        return fill(self.template, instruction_text(prompt), response, self.rubric)

    def judge(self, items: Sequence[tuple[Sequence[dict], str | None]]) -> list[Verdict]:
        """A verdict per (prompt messages, response text); None response: nothing to judge."""
        asked = [i for i, (_, r) in enumerate(items) if r is not None and r.strip()]
        answers = self.asker.ask([(self.prompt(items[i][0], items[i][1]), self.schema) for i in asked])
        out = [Verdict(None, None, "no response to judge", "no_response") for _ in items]
        for i, a in zip(asked, answers):
            out[i] = (Verdict(a.value["score"], a.value["feedback"]) if a.value is not None
                      else Verdict(None, None, a.reason, a.code))
        return out

    def describe(self) -> dict[str, Any]:
        engine = self.asker.describe()
        return {
            "kind": "absolute_judge",
            "model": engine.get("model"),
            "revision": engine.get("revision"),
            "engine": engine,
            "template_version": TEMPLATE_VERSION if self.template == default_template() else "custom",
            "template_sha256": _sha(self.template),
            "template_source": self.template_source,
            "rubric_version": RUBRIC_VERSION if self.rubric == default_rubric() else "custom",
            "rubric_sha256": _sha(self.rubric),
            "rubric_source": self.rubric_source,
            "answer_schema": self.schema,
            "scores": list(SCORES),
        }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class JudgeRewardScorer:
    """The absolute judge in a reward model's place (reward_pairs' `scorer: {kind: judge}`):
    `score(conversations)` gives each final assistant turn its 1-5 score as the reward."""

    def __init__(self, judge: AbsoluteJudge):
        self.judge = judge

    def score(self, conversations: Sequence[Sequence[dict]], *, progress: str | None = None) -> list:
        from roost.scorers.reward import Reward

        verdicts = self.judge.judge([(c[:-1], c[-1]["content"]) for c in conversations])
        return [Reward(float(v.score) if v.score is not None else None, None, v.reason) for v in verdicts]

    def describe(self) -> dict[str, Any]:
        return self.judge.describe()
