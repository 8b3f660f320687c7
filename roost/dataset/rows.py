"""Row kinds: what a row of a dataset is, the shapes inputs come in, and the named text views
stages read.

Two kinds, both in the forms TRL and the alignment handbook load:
- `sft`: one conversation;
- `preference`: `prompt`, `chosen`, `rejected`, conversational (lists of messages) or plain
  strings; `chosen` / `rejected` may also hold the whole conversation (prompt included), as
  UltraFeedback's binarized sets do.

An input's `Shape` (`detect(schema)`) is its format and the columns it is read from:

    messages    a column of {role, content} turns (OpenAI / TRL / the handbook)
    sharegpt    a column of {from, value} turns (human, gpt, system, tool, ...)
    alpaca      instruction, input, output: the input joined to the instruction after a blank
                line, the order Alpaca's own template puts them in
    pair        a prompt column and a response column (prompt/completion, question/answer, ...)
    prompt      a prompt column alone (prompt, instruction, question, ...)
    preference  chosen and rejected (and a prompt, or none)

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
    """The input's column for each part of a row (None: the input has no such column)."""

    messages: str | None = "messages"  # a conversation: {role, content} or ShareGPT {from, value} turns
    prompt: str | None = "prompt"  # the user turn's text (pair, prompt, alpaca's instruction) or a preference prompt
    input: str | None = None  # alpaca: context joined to the instruction
    response: str | None = None  # the answer's text (pair, alpaca's output)
    chosen: str | None = "chosen"
    rejected: str | None = "rejected"
    system: str | None = None  # a system prompt per row (LLaMA-Factory's ShareGPT and Alpaca forms)
    id: str = "id"


COLUMN_KEYS = tuple(f for f in Columns.__dataclass_fields__)
FORMATS = ("messages", "sharegpt", "alpaca", "pair", "prompt", "preference")
_KIND: dict[str, Kind] = {"preference": "preference"}
_NAMES = {
    "messages": "messages ({role, content} turns)",
    "sharegpt": "ShareGPT ({from, value} turns)",
    "alpaca": "Alpaca (instruction, input, output)",
    "pair": "prompt/response pairs",
    "prompt": "prompts",
    "preference": "preference pairs",
}
# the column names each part goes by in the datasets people have, tried in this order
_CONVERSATION = ("messages", "conversations", "conversation", "chat", "dialog")
_PROMPT = ("prompt", "instruction", "question", "query", "problem")
_RESPONSE = ("response", "completion", "output", "answer", "solution")
# ShareGPT speakers -> roles (FastChat's, LLaMA-Factory's and the Hub's sets)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool",
                  "function_call": "assistant"}


@dataclass(frozen=True)
class Shape:
    """What the input's rows are: a format (FORMATS) and the columns it is read from."""

    format: str
    cols: Columns = Columns()

    @property
    def kind(self) -> Kind:
        return _KIND.get(self.format, "sft")

    def used(self) -> dict[str, str]:
        """part -> column, for the parts this format reads."""
        parts = {"messages": ("messages",), "sharegpt": ("messages",), "alpaca": ("prompt", "input", "response"),
                 "pair": ("prompt", "response"), "prompt": ("prompt",),
                 "preference": ("prompt", "chosen", "rejected")}[self.format]
        return {p: getattr(self.cols, p) for p in (*parts, "system") if getattr(self.cols, p)}

    def describe(self) -> dict:
        return {"format": self.format, "columns": self.used()}

    def line(self) -> str:
        """One line for the terminal: the format and the columns used."""
        cols = ", ".join(f"{part}={name!r}" if part != name else repr(name) for part, name in self.used().items())
        return f"{_NAMES[self.format]} from {cols}"


def detect(schema: pa.Schema, format: str = "auto", columns: dict[str, str] | None = None) -> Shape:
    """The input's Shape from its columns (and, for a conversation column, its turns' fields).
    `format` and `columns` (part -> column name) override what is detected; an InputError
    says what is missing and how to name it."""
    names = list(schema.names)
    given = dict(columns or {})
    if "instruction" in given:  # alpaca's word for the user turn
        given.setdefault("prompt", given.pop("instruction"))
    for part, name in given.items():
        if part not in COLUMN_KEYS:
            raise InputError(f"input.columns: unknown part {part!r}; one of {', '.join(COLUMN_KEYS)}")
        if part != "id" and name not in names:
            raise InputError(f"input.columns.{part}: no column {name!r} (columns: {_listed(names)})")

    def pick(part: str, candidates: tuple[str, ...]) -> str | None:
        return given[part] if part in given else next((c for c in candidates if c in names), None)

    def shape(fmt: str, **cols) -> Shape:
        system = pick("system", ("system",))
        if system and not pa.types.is_string(schema.field(system).type) and not pa.types.is_large_string(
                schema.field(system).type):
            system = None
        return Shape(fmt, Columns(**{"messages": None, "prompt": None, "chosen": None, "rejected": None,
                                     **cols, "system": system, "id": given.get("id", "id")}))

    fmt = format
    if fmt == "auto":
        fmt = _detect_format(schema, names, given, pick)
    if fmt == "preference":
        chosen, rejected = pick("chosen", ("chosen",)), pick("rejected", ("rejected",))
        if not (chosen and rejected):
            raise InputError(f"format preference: no 'chosen'/'rejected' columns (columns: {_listed(names)}); "
                             "name them in input.columns")
        return shape(fmt, prompt=pick("prompt", ("prompt",)), chosen=chosen, rejected=rejected)
    if fmt in ("messages", "sharegpt"):
        column = pick("messages", _CONVERSATION)
        if column is None:
            raise InputError(f"format {fmt}: no conversation column (columns: {_listed(names)}); "
                             "name it in input.columns.messages")
        return shape(fmt, messages=column)
    if fmt == "alpaca":
        prompt, response = pick("prompt", ("instruction",)), pick("response", ("output",))
        if not prompt:
            raise InputError(f"format alpaca: no 'instruction' column (columns: {_listed(names)})")
        return shape(fmt, prompt=prompt, input=pick("input", ("input",)), response=response)
    if fmt in ("pair", "prompt"):
        prompt = pick("prompt", _PROMPT)
        if not prompt:
            raise InputError(f"format {fmt}: no prompt column (none of {', '.join(_PROMPT)}; columns: "
                             f"{_listed(names)}); name it in input.columns.prompt")
        response = pick("response", _RESPONSE) if fmt == "pair" else None
        if fmt == "pair" and not response:
            raise InputError(f"format pair: no response column (none of {', '.join(_RESPONSE)}; columns: "
                             f"{_listed(names)}); name it in input.columns.response")
        return shape(fmt, prompt=prompt, response=response)
    raise InputError(f"input.format: {format!r} is not one of auto, {', '.join(FORMATS)}")


def _detect_format(schema: pa.Schema, names: list[str], given: dict, pick) -> str:
    if pick("chosen", ("chosen",)) and pick("rejected", ("rejected",)):
        return "preference"
    conversation = pick("messages", _CONVERSATION)
    if conversation is not None:
        fields = _turn_fields(schema.field(conversation).type)
        if {"from", "value"} <= fields:
            return "sharegpt"
        if {"role", "content"} <= fields or fields == set():
            return "messages"
        if "messages" in given:
            raise InputError(f"input.columns.messages: {conversation!r} holds turns with fields "
                             f"{_listed(sorted(fields))}, neither {{role, content}} nor ShareGPT's {{from, value}}")
    if pick("prompt", ("instruction",)) and pick("response", ("output",)) and "prompt" not in given:
        return "alpaca"
    prompt = pick("prompt", _PROMPT)
    if prompt is not None:
        return "pair" if pick("response", _RESPONSE) else "prompt"
    raise InputError(
        f"cannot tell what the rows are (columns: {_listed(names)}): roost reads messages, ShareGPT "
        "conversations, Alpaca, prompt/response or prompt columns and chosen/rejected pairs; set "
        "input.format (one of " + ", ".join(FORMATS) + ") and input.columns (e.g. {prompt: my_column})")


def _turn_fields(dtype: pa.DataType) -> set[str] | None:
    """The fields of a list-of-structs column's turns; set() when the type cannot tell (nulls)."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        value = dtype.value_type
        if pa.types.is_struct(value):
            return {value.field(i).name for i in range(value.num_fields)}
        return set() if pa.types.is_null(value) else {str(value)}
    return set() if pa.types.is_null(dtype) else {str(dtype)}


def _listed(names) -> str:
    return ", ".join(names) or "none"


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


def parse(row: dict, shape: Shape) -> tuple[Parsed | None, str | None]:
    """The row as a `Parsed` row, or (None, why it cannot be one)."""
    cols = shape.cols
    if shape.format == "preference":
        return _parse_preference(row, cols)
    if shape.format == "messages":
        messages, problem = _messages(row.get(cols.messages), cols.messages)
    elif shape.format == "sharegpt":
        messages, problem = _sharegpt(row.get(cols.messages), cols.messages)
    else:
        messages, problem = _pair(row, cols, alpaca=shape.format == "alpaca")
    if problem:
        return None, problem
    system = row.get(cols.system) if cols.system else None
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        return None, f"'{cols.messages or cols.prompt}' has no user message"
    return Parsed("sft", messages, messages[: last_user + 1]), None


def _messages(value, name: str) -> tuple[list[dict] | None, str | None]:
    if value is None:
        return None, f"'{name}' is null"
    if not isinstance(value, list):
        return None, f"'{name}' is not a list"
    problem = check_messages(list(value), name=name)
    if problem:
        return None, problem
    return [{"role": m["role"], "content": m["content"]} for m in value], None


def _sharegpt(value, name: str) -> tuple[list[dict] | None, str | None]:
    if value is None:
        return None, f"'{name}' is null"
    if not isinstance(value, list):
        return None, f"'{name}' is not a list"
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return None, f"{name}[{i}]: not a {{from, value}} turn"
        role = SHAREGPT_ROLES.get(str(turn["from"]).strip().lower())
        if role is None:
            return None, f"{name}[{i}]: unknown speaker {turn['from']!r}"
        turns.append({"role": role, "content": turn["value"]})
    return _messages(turns, name)


def _pair(row: dict, cols: Columns, alpaca: bool) -> tuple[list[dict] | None, str | None]:
    prompt = row.get(cols.prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        return None, f"'{cols.prompt}' is null, empty or not a string"
    context = row.get(cols.input) if alpaca and cols.input else None
    if context is not None and not isinstance(context, str):
        return None, f"'{cols.input}' is not a string"
    if context and context.strip():  # Alpaca's template: the instruction, a blank line, then the input
        prompt = f"{prompt.rstrip()}\n\n{context.strip()}"
    messages = [{"role": "user", "content": prompt}]
    response = row.get(cols.response) if cols.response else None
    if response is not None:
        if not isinstance(response, str):
            return None, f"'{cols.response}' is not a string"
        if response.strip():
            messages.append({"role": "assistant", "content": response})
    return messages, None


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
    raw_prompt = row.get(cols.prompt) if cols.prompt else None
    if isinstance(raw_prompt, str):
        prompt = [{"role": "user", "content": raw_prompt}]
    elif raw_prompt is None and (cols.prompt is None or cols.prompt not in row):
        prompt = []  # implicit prompt: chosen/rejected hold whole conversations
    else:
        prompt, problem = _messages(raw_prompt, cols.prompt)  # type: ignore[arg-type]
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
    problem = check_messages(prompt, name=cols.prompt or "prompt", must_end_with="user")
    if problem:
        return None, problem
    for name, answer in ((cols.chosen, chosen), (cols.rejected, rejected)):
        if not answer or any(m["role"] != "assistant" for m in answer):
            return None, f"'{name}' must be one or more assistant messages after the prompt"
    return Parsed("preference", prompt + chosen, prompt, chosen, rejected), None


def check_share(rows, shape: Shape, max_bad: float, where: str, *, sampled: bool = False) -> None:
    """Refuse an input when more than `max_bad` of `rows` cannot be read as `shape`: a run
    over it would keep little or nothing. Names the first bad row and its reason."""
    n = bad = 0
    first = None
    for n, row in enumerate(rows, start=1):
        _, problem = parse(row, shape)
        if problem:
            bad += 1
            first = first or (n - 1, problem)
    if n and bad / n > max_bad:
        of = f"{bad} of the first {n}" if sampled else f"{bad} of {n}"
        raise InputError(f"{where}: {of} rows cannot be read as {shape.line()} (over {max_bad:.0%}); first: "
                         f"row {first[0]}: {first[1]}; set input.format / input.columns (or input.max_bad_share)")
