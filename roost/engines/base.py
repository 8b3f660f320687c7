"""The engine interface: what every synthesizer and scorer may ask of a model.

Synthesizers never import vLLM. They hand an `Engine` rendered prompt strings and a
`Sampling`, and get back `Generation`s. Today the only engine is the in-process vLLM one
(`roost.engines.vllm_engine`); an engine that talks to a running vLLM server's completions
endpoint, or one living in a Ray actor, only has to implement these few methods.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

# Seconds an engine's processes get to end when it is closed (None: the engine library's own
# default). A stopped run (roost.runtime.stopping) sets it low: nothing in flight is worth waiting for.
SHUTDOWN_GRACE: float | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters. `max_tokens` has no default on purpose (vLLM's is 16).

    Structured output (at most one of the two): `json_schema` (a JSON Schema, as a dict or its
    JSON text) makes every completion that finishes a JSON document valid under the schema,
    written compactly (no whitespace between tokens of the JSON); `choice` makes it exactly one
    of the strings. The engine enforces them while decoding (grammar-constrained sampling), so a
    weak model cannot leave the allowed set; a completion cut at `max_tokens` is still a prefix
    only (`finish_reason == "length"`), and is the caller's to treat as unreadable."""

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
    json_schema: str | None = None  # JSON text (a dict given here is stored as canonical JSON)
    choice: tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.json_schema, dict):
            import json

            object.__setattr__(self, "json_schema", json.dumps(self.json_schema, sort_keys=True))
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
            if not self.choice:
                raise ValueError("Sampling.choice must not be empty")
        if self.json_schema is not None and self.choice is not None:
            raise ValueError("Sampling: set json_schema or choice, not both")

    @property
    def structured(self) -> bool:
        return self.json_schema is not None or self.choice is not None

    def with_n(self, n: int) -> "Sampling":
        return Sampling(**{**asdict(self), "n": n})

    def record(self) -> dict[str, Any]:
        """What provenance keeps: everything that changes the output (structured-output fields
        only when set, so records of unconstrained sampling keep their shape)."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        d["stop_token_ids"] = list(self.stop_token_ids)
        for key in ("json_schema", "choice"):
            if d[key] is None:
                del d[key]
        if self.choice is not None:
            d["choice"] = list(self.choice)
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
        self,
        prompts: Sequence[str],
        sampling: Sampling | Sequence[Sampling],
        *,
        seed: int | None = None,
        progress: str | None = None,
    ) -> list[Generation]:
        """Complete raw prompt strings (already templated; no special tokens are added).

        `seed` (a non-negative int, e.g. from `derive_seed`): the outputs of this call depend
        only on (prompts, sampling, seed), not on what the engine ran before in the process.
        None: the engine's running random state (outputs then depend on earlier calls).

        `Sampling.json_schema` / `Sampling.choice` are enforced while decoding (structured
        output), or the call fails with a ModelError; an engine never ignores them."""

    def chat(
        self,
        conversations: Sequence[Sequence[dict]],
        sampling: Sampling | Sequence[Sampling],
        *,
        seed: int | None = None,
        progress: str | None = None,
    ) -> list[Generation]:
        """Generate the next assistant turn of each conversation through the model's chat
        template; `seed` as in `generate`."""

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


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from parts (recipe seed, shard index, stage...): the same parts
    always give the same seed, in any process, on any machine (no `hash()`, no PYTHONHASHSEED).

    Parts are ints or strings, typed: `derive_seed(1)` and `derive_seed("1")` differ. The result
    is in [0, 2**31), which every consumer accepts (numpy, torch, vLLM's per-request seeds, which
    add the sample index for n > 1)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise TypeError(f"derive_seed takes ints and strings, got {type(p).__name__}: {p!r}")
        tagged = (b"i" if isinstance(p, int) else b"s") + str(p).encode()
        h.update(len(tagged).to_bytes(8, "big") + tagged)
    return int.from_bytes(h.digest(), "big") & 0x7FFFFFFF


def generate_grouped(engine: Engine, prompts: Sequence[str], sampling: Sampling, *,
                     seed: int | None = None, progress: str | None = None) -> list[Completion]:
    """One completion per prompt, asking the engine once per distinct prompt with n = its
    count (vLLM then shares the prompt's prefill); results come back in input order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    if not groups:
        return []
    unique = list(groups)
    gens = engine.generate(unique, [sampling.with_n(len(groups[p])) for p in unique], seed=seed, progress=progress)
    out: list[Completion | None] = [None] * len(prompts)
    for prompt, gen in zip(unique, gens):
        for i, completion in zip(groups[prompt], gen.completions):
            out[i] = completion
    return out  # type: ignore[return-value]


# -- what release_all drops ------------------------------------------------------------------

_HELD: list[dict] = []  # caches of loaded models: closed first
_RELEASERS: list[Callable[[], None]] = []  # then whatever else holds references to them


def holds(cache: dict) -> dict:
    """Register a process-wide cache of loaded models (key -> engine or backend) with
    `roost.engines.release_all`, which closes what it holds and empties it; returns `cache`."""
    _HELD.append(cache)
    return cache


def on_release(release: Callable[[], None]) -> Callable[[], None]:
    """Register `release` (e.g. a cache of objects that reach models) to run on release_all,
    after the models are closed."""
    _RELEASERS.append(release)
    return release


def release_registered() -> None:
    for cache in _HELD:
        for held in list(cache.values()):
            close = getattr(held, "close", None)
            if close is not None:
                close()
        cache.clear()
    for release in list(_RELEASERS):
        release()
