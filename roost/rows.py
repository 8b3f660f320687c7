"""Row kinds: what a row of a dataset is, and the named text views stages read.

Two kinds today, both in the forms TRL and the alignment handbook load:
- `sft`: one conversation, a `messages` column (or `instruction` / `response` columns);
- `preference`: `prompt`, `chosen`, `rejected`, conversational (lists of messages) or plain
  strings; `chosen` / `rejected` may also hold the whole conversation (prompt included).

`parse(row)` turns an input row into a `Parsed` row (or says why it cannot), and every stage
reads text through `Parsed.view(name)`, so dedup, filters and scorers work on either kind:

    prompt              the conversation up to and including its last user turn
    first_instruction   the first user message
    response            the last assistant message (sft) / the chosen answer (preference)
    conversation        every message: the whole conversation / prompt + chosen
    chosen, rejected    the two answers of a preference row
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from roost.errors import InputError
from roost.schemas import check_messages, row_id

Kind = Literal["sft", "preference"]
VIEWS = ("prompt", "first_instruction", "response", "conversation", "chosen", "rejected")


@dataclass(frozen=True)
class Columns:
    messages: str = "messages"
    instruction: str = "instruction"
    response: str = "response"
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    id: str = "id"


@dataclass
class Parsed:
    kind: Kind
    messages: list[dict]  # sft: the conversation; preference: prompt + chosen
    prompt: list[dict]
    chosen: list[dict] | None = None
    rejected: list[dict] | None = None
    _cache: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        if self.kind == "sft":
            return row_id(self.messages)
        return row_id(self.prompt, self.chosen, self.rejected)

    def view(self, name: str) -> str:
        if name not in self._cache:
            self._cache[name] = self._view(name)
        return self._cache[name]

    def _view(self, name: str) -> str:
        if name == "prompt":
            return _join(self.prompt)
        if name == "first_instruction":
            return next((m["content"] for m in self.messages if m["role"] == "user"), "")
        if name == "response":
            return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")
        if name == "conversation":
            return _join(self.messages)
        if name in ("chosen", "rejected"):
            value = getattr(self, name)
            if value is None:
                raise InputError(f"the '{name}' view needs preference rows")
            return _join(value, roles=False)
        raise ValueError(f"unknown view {name!r}; one of {', '.join(VIEWS)}")


def _join(messages: list[dict], roles: bool = True) -> str:
    if len(messages) == 1 or not roles:
        return "\n".join(m["content"] for m in messages)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def detect_kind(schema: pa.Schema, cols: Columns) -> tuple[Kind, str]:
    """(kind, form) of an input from its columns; an InputError naming what is missing."""
    names = set(schema.names)
    if {cols.chosen, cols.rejected} <= names:
        return "preference", "preference"
    if cols.messages in names:
        return "sft", "messages"
    if cols.instruction in names:
        return "sft", "pair"
    raise InputError(
        f"input has no '{cols.messages}' column, no '{cols.instruction}' column and no "
        f"'{cols.chosen}'/'{cols.rejected}' columns (columns: {', '.join(sorted(names)) or 'none'}); "
        "set input.columns to name them"
    )


def parse(row: dict, form: str, cols: Columns) -> tuple[Parsed | None, str | None]:
    """The row as a `Parsed` row, or (None, why it cannot be one)."""
    if form == "messages":
        return _parse_messages(row.get(cols.messages), cols.messages)
    if form == "pair":
        return _parse_pair(row, cols)
    return _parse_preference(row, cols)


def _messages(value, name: str) -> tuple[list[dict] | None, str | None]:
    if value is None:
        return None, f"'{name}' is null"
    if not isinstance(value, list):
        return None, f"'{name}' is not a list"
    problem = check_messages(list(value), name=name)
    if problem:
        return None, problem
    return [{"role": m["role"], "content": m["content"]} for m in value], None


def _parse_messages(value, name: str):
    messages, problem = _messages(value, name)
    if problem:
        return None, problem
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        return None, f"'{name}' has no user message"
    return Parsed("sft", messages, messages[: last_user + 1]), None


def _parse_pair(row: dict, cols: Columns):
    instruction, response = row.get(cols.instruction), row.get(cols.response)
    if not isinstance(instruction, str) or not instruction.strip():
        return None, f"'{cols.instruction}' is null, empty or not a string"
    messages = [{"role": "user", "content": instruction}]
    if response is not None:
        if not isinstance(response, str):
            return None, f"'{cols.response}' is not a string"
        if response.strip():
            messages.append({"role": "assistant", "content": response})
    return Parsed("sft", messages, messages[:1]), None


def _answer(value, name: str) -> tuple[list[dict] | None, str | None]:
    """A chosen/rejected value as messages: a string is one assistant message."""
    if isinstance(value, str):
        value = [{"role": "assistant", "content": value}]
    if value is None:
        return None, f"'{name}' is null"
    if not isinstance(value, list) or not value:
        return None, f"'{name}' is empty or not a list or string"
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not m["content"].strip():
            return None, f"{name}[{i}]: empty or non-string content"
    return [{"role": m.get("role"), "content": m["content"]} for m in value], None


def _parse_preference(row: dict, cols: Columns):
    raw_prompt = row.get(cols.prompt)
    if isinstance(raw_prompt, str):
        prompt = [{"role": "user", "content": raw_prompt}]
    elif raw_prompt is None and cols.prompt not in row:
        prompt = []  # implicit prompt: chosen/rejected hold whole conversations
    else:
        prompt, problem = _messages(raw_prompt, cols.prompt)
        if problem:
            return None, problem
    chosen, problem = _answer(row.get(cols.chosen), cols.chosen)
    if problem:
        return None, problem
    rejected, problem = _answer(row.get(cols.rejected), cols.rejected)
    if problem:
        return None, problem
    if not prompt:  # implicit prompt: the common prefix of the two conversations
        common = 0
        while common < min(len(chosen), len(rejected)) - 1 and chosen[common] == rejected[common]:
            common += 1
        prompt, chosen, rejected = chosen[:common], chosen[common:], rejected[common:]
    elif chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
        chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    problem = check_messages(prompt, name=cols.prompt, must_end_with="user")
    if problem:
        return None, problem
    for name, answer in ((cols.chosen, chosen), (cols.rejected, rejected)):
        if not answer or any(m["role"] != "assistant" for m in answer):
            return None, f"'{name}' must be one or more assistant messages after the prompt"
    return Parsed("preference", prompt + chosen, prompt, chosen, rejected), None
