"""Ask a chat model questions whose answers are JSON under a schema, and read them honestly.

The taggers (roost.judges.tags) and the absolute judge (roost.judges.absolute) share this:
- each question is one user message rendered through the model's own chat template;
- the answer is decoded greedily (temperature 0) under the question's JSON schema with the
  engine's structured output (`Sampling(json_schema=...)`), so a finished answer is valid JSON
  of the schema's shape whatever the model;
- every question of a batch goes to the engine in one call, seeded (`seed`: on CPU the call's
  batches are then fixed, see roost.engines.vllm_engine);
- an answer that cannot be read is None with a reason, never a default: a question longer than
  the model's context, or an answer cut by the context's end (`context_overflow`), an answer
  cut at `max_tokens` before its JSON closed (`truncated`), text that is not JSON (`not_json`)
  or JSON the schema refuses (`schema_mismatch`; the last two should not happen under
  structured output, and are checked anyway, with `jsonschema`, so a backend that drifts is
  caught, not trusted).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from roost.engines.base import Sampling, derive_seed, render_chat
from roost.errors import ConfigError
from roost.scorers.deita import _encode_with, engine_max_model_len


@dataclass
class Answer:
    value: dict | None
    reason: str | None = None  # why value is None, in words
    code: str | None = None  # the kind of reason: context_overflow, truncated, not_json, schema_mismatch


def check_schema(schema: Any, *, source: str, field: str | None = None) -> None:
    """ConfigError naming the field unless `schema` is a valid JSON Schema for an object."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    where = f"field '{field}': " if field else ""
    if not isinstance(schema, dict):
        raise ConfigError(f"{where}{source} is not a JSON Schema (a JSON object is expected)")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise ConfigError(f"{where}{source} is not valid JSON Schema (at {at}: {e.message})") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise ConfigError(f"{where}{source}: the answer schema must be an object with properties "
                          "(\"type\": \"object\", \"properties\": {...})")


def load_schema(path: str, *, field: str | None = None) -> dict:
    """A JSON Schema file, read and checked (ConfigError naming the field otherwise)."""
    from pathlib import Path

    where = f"field '{field}': " if field else ""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"{where}cannot read schema {path} ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}cannot read schema {path} (not UTF-8 text)") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}{path} is not JSON (line {e.lineno}: {e.msg})") from None
    check_schema(schema, source=str(path), field=field)
    return schema


@lru_cache(maxsize=64)
def _validator(schema_json: str):
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    return validator_for(schema)(schema)


def read_answer(text: str, finish_reason: str, schema_json: str, max_tokens: int, *, n_tokens: int | None = None,
                prompt_tokens: int | None = None, context: int | None = None) -> Answer:
    """The answer as a dict, or None with the reason (see the module doc). With the token counts
    and the context length, an answer cut by the context's end says so."""
    if finish_reason == "length":
        if n_tokens is not None and n_tokens < max_tokens and prompt_tokens is not None and context:
            return Answer(None, f"answer cut at the end of the model's context ({context} tokens: {prompt_tokens} of "
                                f"question, {n_tokens} of answer) before its JSON was complete", "context_overflow")
        return Answer(None, f"answer cut at max_tokens ({max_tokens}) before its JSON was complete "
                            f"({len(text)} characters)", "truncated")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return Answer(None, f"answer is not JSON ({e.msg} at character {e.pos})", "not_json")
    error = next(iter(_validator(schema_json).iter_errors(value)), None)
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return Answer(None, f"answer does not match the schema (at {at}: {error.message})", "schema_mismatch")
    return Answer(value)


class StructuredAsker:
    """Questions (a user message + an answer schema) to one chat model, answers read as above.

    `engine`: a roost engine (`generate`, `tokenizer`, `max_model_len`, `describe`)."""

    def __init__(self, engine, *, max_tokens: int, seed_name: str, progress: str | None = None):
        self.engine = engine
        self.max_tokens = max_tokens
        self.tokenizer = engine.tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            from roost.errors import ModelError

            name = getattr(self.tokenizer, "name_or_path", getattr(engine, "model", "the model"))
            raise ModelError(f"{seed_name}: {name} has no chat template to ask its questions with")
        self._encode = getattr(engine, "encode", None) or _encode_with(self.tokenizer)
        self.context = limit = engine_max_model_len(engine)
        self.max_prompt_tokens = limit - 1 if limit else None  # at least one token is generated
        self.seed = derive_seed("roost-structured", seed_name)
        self.progress = progress

    def render(self, message: str) -> str:
        return render_chat(self.tokenizer, [{"role": "user", "content": message}], add_generation_prompt=True)

    def _too_long(self, prompt: str) -> str | None:
        limit = self.max_prompt_tokens
        # every tokenizer here spends at least one UTF-8 byte per token: short prompts skip it
        if limit is None or len(prompt.encode()) + 8 <= limit:
            return None
        n = len(self._encode(prompt))
        return f"question has {n} tokens, over the model's limit of {limit}" if n > limit else None

    def ask(self, questions: Sequence[tuple[str, dict | str]]) -> list[Answer]:
        """One answer per (user message, JSON schema); all runnable questions in one engine call."""
        out: list[Answer | None] = [None] * len(questions)
        prompts, samplings, where = [], [], []
        for i, (message, schema) in enumerate(questions):
            prompt = self.render(message)
            problem = self._too_long(prompt)
            if problem:
                out[i] = Answer(None, problem, "context_overflow")
                continue
            prompts.append(prompt)
            samplings.append(Sampling(max_tokens=self.max_tokens, temperature=0.0, json_schema=schema))
            where.append(i)
        if prompts:
            kwargs = {"progress": self.progress} if self.progress else {}
            gens = self.engine.generate(prompts, samplings, seed=self.seed, **kwargs)
            for i, s, gen in zip(where, samplings, gens):
                c = gen.completions[0]
                out[i] = read_answer(c.text, c.finish_reason, s.json_schema, self.max_tokens, n_tokens=c.n_tokens,
                                     prompt_tokens=gen.prompt_tokens, context=self.context)
        return out  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {**self.engine.describe(),
                "structured_outputs": getattr(self.engine, "structured_outputs", None),
                "decoding": {"temperature": 0.0, "max_tokens": self.max_tokens},
                "max_prompt_tokens": self.max_prompt_tokens}
