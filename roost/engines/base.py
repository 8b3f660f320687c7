"""The engine interface: what every synthesizer and scorer may ask of a model.

Synthesizers never import vLLM. They hand an `Engine` rendered prompt strings and a
`Sampling`, and get back `Generation`s. Today the only engine is the in-process vLLM one
(`roost.engines.vllm_engine`); an engine that talks to a running vLLM server's completions
endpoint, or one living in a Ray actor, only has to implement these few methods.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters. `max_tokens` has no default on purpose (vLLM's is 16)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def with_n(self, n: int) -> "Sampling":
        return Sampling(**{**asdict(self), "n": n})

    def record(self) -> dict[str, Any]:
        """What provenance keeps: everything that changes the output."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        d["stop_token_ids"] = list(self.stop_token_ids)
        return d


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end-of-turn, stop string or token) or "length" (hit max_tokens)
    stop_reason: str | int | None = None
    logprobs: list[dict[int, float]] | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Generation:
    prompt: str
    prompt_tokens: int
    completions: list[Completion] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    model: str
    revision: str | None

    @property
    def tokenizer(self): ...

    def generate(
        self, prompts: Sequence[str], sampling: Sampling | Sequence[Sampling], *, progress: str | None = None
    ) -> list[Generation]:
        """Complete raw prompt strings (already templated; no special tokens are added)."""

    def chat(
        self, conversations: Sequence[Sequence[dict]], sampling: Sampling | Sequence[Sampling], *, progress: str | None = None
    ) -> list[Generation]:
        """Generate the next assistant turn of each conversation through the model's chat template."""

    @property
    def max_model_len(self) -> int: ...

    def choice_logprobs(
        self, prompts: Sequence[str], token_ids: Sequence[int], *, progress: str | None = None
    ) -> list[list[float] | None]:
        """Log-probabilities of `token_ids` at the first generated position, renormalized over
        exactly those tokens; None for a prompt where any of them was not returned."""

    def describe(self) -> dict[str, Any]:
        """Provenance: model, resolved revision, dtype, seed, engine kind and version."""


def render_chat(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
    """The model's own chat template, as text (special tokens included, nothing added later)."""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
