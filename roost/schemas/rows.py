"""Every row roost writes, as a pyarrow schema plus the checks pyarrow cannot express.

SFT rows use the conversational form TRL and the alignment handbook load as is
(`messages`: list of {role, content}); preference rows use TRL's conversational preference
form (`prompt`, `chosen`, `rejected`, each a list of messages). Metadata columns sit beside.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
ROLES = {"system", "user", "assistant", "tool"}  # tool: a tool's result, between assistant turns

SAMPLING = pa.struct(  # roost.config.SamplingConfig, as recorded on every row
    [("temperature", pa.float64()), ("top_p", pa.float64()), ("top_k", pa.int64()), ("min_p", pa.float64()),
     ("repetition_penalty", pa.float64()), ("max_tokens", pa.int64())]
)
GENERATION = pa.struct([("instruction", SAMPLING), ("response", SAMPLING), ("seed", pa.int64())])

SFT = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("messages", MESSAGES, nullable=False),
        pa.field("n_turns", pa.int32()),
        pa.field("system_prompt_key", pa.string()),
        pa.field("task", pa.string()),
        pa.field("language", pa.string()),
        pa.field("model", pa.string()),
        pa.field("pre_query_template", pa.string()),
        pa.field("generation", GENERATION),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
    ]
)

PREFERENCE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("chosen", MESSAGES, nullable=False),
        pa.field("rejected", MESSAGES, nullable=False),
        pa.field("method", pa.string()),  # what made the pair: reward_ranked, spin, sppo, step_dpo, ...
        pa.field("model", pa.string()),  # the policy that wrote the answers
        pa.field("iteration", pa.int64()),  # round of an iterative method (0 = first)
    ]
)

REJECT = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("record", pa.string()),  # the rejected row or text, as JSON
    ]
)


def row_id(*parts: Any) -> str:
    """Stable id from content: the same conversation always gets the same id."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def check_messages(messages: Any, *, name: str = "messages", must_end_with: str | None = None) -> str | None:
    """Why `messages` is not a valid conversation, or None."""
    if not isinstance(messages, list) or not messages:
        return f"{name}: empty or not a list"
    expected = "user"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f"{name}[{i}]: not a {{role, content}} message"
        if m["role"] not in ROLES:
            return f"{name}[{i}]: unknown role {m['role']!r}"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"{name}[{i}]: empty or non-string content"
        if m["role"] == "system":
            if i != 0:
                return f"{name}[{i}]: system message not first"
            continue
        if m["role"] == "tool":  # answers the assistant turn before it; the assistant speaks next
            if i == 0 or messages[i - 1]["role"] not in ("assistant", "tool"):
                return f"{name}[{i}]: a tool message must follow an assistant or tool message"
            expected = "assistant"
            continue
        if m["role"] != expected:
            return f"{name}[{i}]: expected role {expected!r}, got {m['role']!r}"
        expected = "assistant" if expected == "user" else "user"
    if must_end_with and messages[-1]["role"] != must_end_with:
        return f"{name}: last message must have role {must_end_with!r}"
    return None


def _check_sft(row: dict) -> str | None:
    reason = check_messages(row.get("messages"), must_end_with="assistant")
    if reason:
        return reason
    if row.get("id") != row_id(row["messages"]):
        return "id: does not match content"
    return None


def _check_preference(row: dict) -> str | None:
    for name, end in (("prompt", "user"), ("chosen", None), ("rejected", None)):
        value = row.get(name)
        if name == "prompt":
            reason = check_messages(value, name=name, must_end_with=end)
        else:
            if not isinstance(value, list) or not value or any(m.get("role") != "assistant" for m in value):
                return f"{name}: must be a non-empty list of assistant messages"
            reason = check_messages(row["prompt"] + value, name=f"prompt+{name}")
        if reason:
            return reason
    if row["chosen"] == row["rejected"]:
        return "chosen and rejected are identical"
    if row.get("id") != row_id(row["prompt"], row["chosen"], row["rejected"]):
        return "id: does not match content"
    return None


@dataclass(frozen=True)
class RowSchema:
    """A row kind as written: its arrow schema and the checks arrow cannot express."""

    name: str
    arrow: pa.Schema
    check: Callable[[dict], str | None] = field(default=lambda row: None)

    def semantic_problem(self, row: dict) -> str | None:
        """Required fields and the checks pyarrow cannot express (roles, ids, ...)."""
        missing = [f.name for f in self.arrow if not f.nullable and row.get(f.name) is None]
        if missing:
            return f"missing required field(s): {', '.join(missing)}"
        return self.check(row)

    def problem(self, row: dict) -> str | None:
        """Why this row must not be written, or None (including its types, checked by pyarrow)."""
        reason = self.semantic_problem(row)
        if reason:
            return reason
        try:
            pa.Table.from_pylist([row], schema=self.arrow)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            return f"type error: {str(e).splitlines()[0][:200]}"
        return None

    def extend(self, fields: list[pa.Field]) -> "RowSchema":
        """The same kind with more columns (a synthesizer's own metadata)."""
        return RowSchema(self.name, pa.schema(list(self.arrow) + list(fields)), self.check)


SFT_ROWS = RowSchema("sft", SFT, _check_sft)
PREFERENCE_ROWS = RowSchema("preference", PREFERENCE, _check_preference)
SCHEMAS = {s.name: s for s in (SFT_ROWS, PREFERENCE_ROWS)}
