"""A pairwise LLM judge: P(response a is better than response b), from any chat model.

Why: SPPO needs, per prompt, a K x K matrix of win probabilities from a pairwise preference
model; its code knows one, PairRM (a 0.4B DeBERTa ranker). Any chat model can play that
part: ask it which of two responses is better and read the probability of its answer from
the logprobs of the two answer tokens at its first generated position. Nothing is sampled
and no free text is parsed, so a tiny offline model works the same way as a real judge.

How:
- the question: a template with `{conversation}` (the prompt as plain "User: ..." /
  "Assistant: ..." lines), `{response_a}` and `{response_b}`. The default is
  `templates/pairwise.txt` (after MT-Bench's pairwise judge prompt); a recipe can point to
  its own file. Placeholders are filled in one pass, so braces or placeholder names inside a
  response are left as they are. The filled text is one user message, rendered through the
  judge model's own chat template with the generation prompt;
- the answer: `engine.choice_logprobs(prompts, [id("A"), id("B")])`, renormalized over the
  two tokens (a 2-way softmax): pA = the probability that the response shown first is better.
  "A" and "B" must each be exactly one token right after the generation prompt (checked on
  the judge's tokenizer, else ModelError);
- position bias: LLM judges favour a position. Every pair is asked in both orders and
  P(a beats b) = (pA(a, b) + 1 - pA(b, a)) / 2, which makes the matrix exactly
  complementary: P(b beats a) = 1 - P(a beats b), and P(a beats a) = 1/2;
- batching: every question of a batch goes to the engine in one call. A win matrix over K
  responses asks the K(K-1) ordered pairs, the prompts a hand-written loop would send;
- unreadable: a question longer than the judge's context, or an answer token the engine did
  not return, gives None with the reason (never a made-up 0.5).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import field_validator

from roost.config import Strict
from roost.engines.base import render_chat
from roost.engines.config import EngineConfig
from roost.errors import ConfigError, ModelError
from roost.scorers.deita import _encode_with, engine_max_model_len

TEMPLATE_FILE = Path(__file__).resolve().parent / "templates" / "pairwise.txt"
TEMPLATE_VERSION = "roost-pairwise-1"  # of the default template file; a user's file is "custom"
PLACEHOLDERS = ("conversation", "response_a", "response_b")
ANSWERS = ("A", "B")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
_PROBE = {"conversation": "User: Say hi.", "response_a": "Hi.", "response_b": "Hello."}


# -- the template --------------------------------------------------------------------------------


def default_template() -> str:
    return TEMPLATE_FILE.read_text()


def check_template(text: str, *, source: str = "the judge template", field: str | None = None) -> None:
    """ConfigError naming the field (when given) if a placeholder is missing."""
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        where = f"field '{field}': " if field else ""
        raise ConfigError(f"{where}{source} has no {', '.join('{' + p + '}' for p in missing)} placeholder "
                          f"(a judge template needs {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")


def load_template(path: str | None, *, field: str | None = None) -> str:
    """The template text of a file (None: the default), checked."""
    if path is None:
        return default_template()
    where = f"field '{field}': " if field else ""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"{where}cannot read judge template {path} ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}cannot read judge template {path} (not UTF-8 text)") from None
    check_template(text, source=str(path), field=field)
    return text


def fill(template: str, conversation: str, response_a: str, response_b: str) -> str:
    """The template with its placeholders replaced in one pass (values are not re-scanned)."""
    values = {"conversation": conversation, "response_a": response_a, "response_b": response_b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def plain_conversation(messages: Sequence[dict]) -> str:
    """'User: ...' / 'Assistant: ...' lines, one per message (what `{conversation}` holds)."""
    return "\n".join(f"{_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)


# -- the answer ----------------------------------------------------------------------------------


def first_is_better(logprobs: Sequence[float] | None) -> tuple[float | None, str | None]:
    """(P("A"), None) by a 2-way softmax over the logprobs of "A" and "B", or (None, reason)."""
    if logprobs is None:
        return None, "the judge engine returned no logprob for 'A' or 'B'"
    a, b = (float(v) for v in logprobs)
    if not (math.isfinite(a) and math.isfinite(b)):
        return None, f"non-finite answer logprobs {a}, {b}"
    d = b - a
    return (1.0 / (1.0 + math.exp(d)) if d < 0 else math.exp(-d) / (1.0 + math.exp(-d))), None


def both_orders(p_ab: float | None, p_ba: float | None) -> float | None:
    """P(a beats b) from pA with a shown first and pA with b shown first."""
    if p_ab is None or p_ba is None:
        return None
    return 0.5 * (p_ab + (1.0 - p_ba))


def answer_token_ids(tokenizer, template: str, encode=None) -> list[int]:
    """Token ids of "A" and "B" as the judge emits them right after its generation prompt:
    encode(prompt + letter) must be encode(prompt) plus exactly one token, else ModelError.
    Needs only the tokenizer, so a build checks it before any engine starts."""
    encode = encode or _encode_with(tokenizer)
    name = getattr(tokenizer, "name_or_path", "the judge model")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"pairwise judge: {name} has no chat template to ask its question with")
    filled = fill(template, _PROBE["conversation"], _PROBE["response_a"], _PROBE["response_b"])
    prompt = render_chat(tokenizer, [{"role": "user", "content": filled}], add_generation_prompt=True)
    base = encode(prompt)
    ids = []
    for letter in ANSWERS:
        full = encode(prompt + letter)
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ModelError(f"pairwise judge: with {name}'s tokenizer the answer {letter!r} is not exactly one "
                             f"token after the generation prompt (encode(prompt + {letter!r}) ends with "
                             f"{full[max(0, len(base) - 2):]}, encode(prompt) with {base[-2:]})")
        ids.append(full[-1])
    if ids[0] == ids[1]:
        raise ModelError(f"pairwise judge: 'A' and 'B' are the same token {ids[0]} for {name}")
    return ids



class PairwiseJudgeConfig(Strict):
    """A chat model asked which of two answers is better, both orders averaged: the judge of
    sppo's `judge` preference and of `roost eval`'s open-ended `pairwise` judge."""

    model: EngineConfig | None = None  # None: the model whose answers are judged judges them
    template: str | None = None  # a template file with {conversation}, {response_a}, {response_b}

    @field_validator("template")
    @classmethod
    def _readable(cls, path: str | None) -> str | None:
        load_template(path)
        return path

@dataclass
class Preference:
    """P(a beats b), both orders averaged; the single-order answers; why None, if it is."""

    value: float | None
    a_first: float | None  # pA with a shown first
    b_first: float | None  # pA with b shown first
    reason: str | None = None


@dataclass
class WinMatrix:
    """One prompt's responses against each other. probs[i][j] = P(i beats j) (both orders);
    first[i][j] = pA with i shown first and j second (one order). Rows and columns of a
    response given as None are all None; so is an entry whose question was unreadable."""

    probs: list[list[float | None]]
    first: list[list[float | None]]
    reasons: list[str]  # one per unreadable ordered pair


class PairwiseJudge:
    """A chat model as a pairwise preference model (see the module docstring).

    `engine`: a roost engine (`choice_logprobs`, `tokenizer`, `describe`, `max_model_len`);
    `template`: the template text (None: the default file; `load_template(path)` reads one)."""

    def __init__(self, engine, template: str | None = None, *, source: str | None = None,
                 progress: str | None = None):
        self.engine = engine
        self.template = default_template() if template is None else template
        check_template(self.template, field="template")
        self.source = source or (str(TEMPLATE_FILE) if template is None else "custom")
        self.tokenizer = engine.tokenizer
        self._encode = getattr(engine, "encode", None) or _encode_with(self.tokenizer)
        self.token_ids = answer_token_ids(self.tokenizer, self.template, self._encode)
        limit = engine_max_model_len(engine)
        self.max_prompt_tokens = limit - 1 if limit else None  # one token is generated
        self.progress = progress
        self._describe: dict[str, Any] | None = None

    # -- questions --------------------------------------------------------------------------------

    def _render(self, conversation: str, first: str, second: str) -> str:
        filled = fill(self.template, conversation, first, second)
        return render_chat(self.tokenizer, [{"role": "user", "content": filled}], add_generation_prompt=True)

    def prompt(self, conversation: Sequence[dict], first: str, second: str) -> str:
        """The question (as the engine gets it) with `first` shown as A and `second` as B."""
        return self._render(plain_conversation(conversation), first, second)

    def _too_long(self, prompt: str) -> str | None:
        limit = self.max_prompt_tokens
        # Every tokenizer here spends at least one UTF-8 byte per token (a SentencePiece
        # prefix space aside), so short prompts skip the tokenizer.
        if limit is None or len(prompt.encode()) + 8 <= limit:
            return None
        n = len(self._encode(prompt))
        return f"judge prompt has {n} tokens, over the judge's limit of {limit}" if n > limit else None

    def _ask(self, prompts: Sequence[str]) -> list[tuple[float | None, str | None]]:
        """(pA, None) or (None, reason) per prompt, all in one engine call."""
        out: list[tuple[float | None, str | None]] = [(None, None)] * len(prompts)
        runnable = []
        for i, p in enumerate(prompts):
            problem = self._too_long(p)
            if problem:
                out[i] = (None, problem)
            else:
                runnable.append(i)
        kwargs = {"progress": self.progress} if self.progress else {}
        logprobs = self.engine.choice_logprobs([prompts[i] for i in runnable], self.token_ids, **kwargs) if runnable else []
        for i, lp in zip(runnable, logprobs):
            out[i] = first_is_better(lp)
        return out

    # -- public API -------------------------------------------------------------------------------

    def prob_first_better(self, items: Sequence[tuple[Sequence[dict], str, str]]) -> list[float | None]:
        """pA per (conversation, first, second): one order only, position bias included."""
        return [p for p, _ in self._ask([self.prompt(*item) for item in items])]

    def compare(self, items: Sequence[tuple[Sequence[dict], str, str]]) -> list[Preference]:
        """P(a beats b) per (conversation, a, b), both orders asked in one engine call."""
        prompts = []
        for conv, a, b in items:
            plain = plain_conversation(conv)
            prompts += [self._render(plain, a, b), self._render(plain, b, a)]
        answers = self._ask(prompts)
        out = []
        for n in range(len(items)):
            (ab, why_ab), (ba, why_ba) = answers[2 * n], answers[2 * n + 1]
            out.append(Preference(both_orders(ab, ba), ab, ba, why_ab or why_ba))
        return out

    def win_matrices(self, groups: Sequence[tuple[Sequence[dict], Sequence[str | None]]]) -> list[WinMatrix]:
        """Per (conversation, responses): the win matrix of its responses (None: left out).
        Every ordered pair of every group goes to the engine in one call."""
        asks, prompts = [], []
        for g, (conv, responses) in enumerate(groups):
            plain = plain_conversation(conv)
            valid = [i for i, r in enumerate(responses) if r is not None]
            for i in valid:
                for j in valid:
                    if i != j:
                        asks.append((g, i, j))
                        prompts.append(self._render(plain, responses[i], responses[j]))
        answers = self._ask(prompts)
        firsts = [[[None] * len(r) for _ in r] for _, r in groups]
        reasons: list[list[str]] = [[] for _ in groups]
        for (g, i, j), (p, why) in zip(asks, answers):
            firsts[g][i][j] = p
            if why:
                reasons[g].append(f"({i}, {j}): {why}")
        return [WinMatrix(_combine(first, responses), first, why)
                for first, (_, responses), why in zip(firsts, groups, reasons)]

    def describe(self) -> dict[str, Any]:
        if self._describe is None:
            engine = self.engine.describe()
            self._describe = {
                "kind": "pairwise_judge",
                "model": engine.get("model", getattr(self.engine, "model", None)),
                "revision": engine.get("revision"),
                "engine": engine,
                "template_version": TEMPLATE_VERSION if self.template == default_template() else "custom",
                "template_sha256": hashlib.sha256(self.template.encode()).hexdigest()[:16],
                "template_source": self.source,
                "answer_token_ids": dict(zip(ANSWERS, self.token_ids)),
                "orders": "both, averaged: P(a beats b) = (pA(a, b) + 1 - pA(b, a)) / 2",
                "max_prompt_tokens": self.max_prompt_tokens,
            }
        return self._describe


def _combine(first: list[list[float | None]], responses: Sequence[str | None]) -> list[list[float | None]]:
    """P[i][j] from both orders; P[j][i] = 1 - P[i][j] exactly; P[i][i] = 0.5."""
    k = len(responses)
    probs: list[list[float | None]] = [[None] * k for _ in range(k)]
    for i in range(k):
        if responses[i] is None:
            continue
        probs[i][i] = 0.5
        for j in range(i + 1, k):
            p = both_orders(first[i][j], first[j][i]) if responses[j] is not None else None
            if p is not None:
                probs[i][j], probs[j][i] = p, 1.0 - p
    return probs
