"""deita complexity and quality scoring (hkust-nlp/deita), batched over one engine call.

What is the same as deita (see /work/shared/reference/deita.md §1):
- the two prompt templates, verbatim (spaces included: they are load-bearing);
- the prompt text starts with the tokenizer's BOS token if it has one (deita's HF path uses
  `tokenizer.encode`, which adds BOS; our engine adds no special tokens, so we put it in the text);
- the score is the expected value sum_k k * softmax(logit_k) over the six tokens "1".."6" at the
  first generated position. The engine returns log-probs renormalized over exactly those six
  tokens, which *is* that softmax;
- multi-turn: each user/assistant pair is scored alone, without history; a final user turn
  without an answer is scored with response ""; deita_score = sum over turns of c * q.

What differs, on purpose:
- the six token ids come from the model's own tokenizer (`score_token_ids`), not LLaMA-1's
  hard-coded ids; a tokenizer where a digit after the prompt is not exactly one new token is
  refused with a clear error instead of being scored wrong;
- a score that cannot be computed is `None` with a reason. deita returns exactly 3.0 on a
  missing logprob (deita issue #36: every row scored 3); we never return a constant;
- all prompts of a batch go to the engine in one call (deita sends one prompt per call);
- prompts longer than the engine's context (deita issue #31, unanswered upstream): by default
  the texts are cut by tokens to fit, keeping the *beginning* of each text. The quality prompt
  cuts the response first, but never below half of the room for text, then the instruction.
  The score is kept and flagged (`truncated=True`, reason says what was cut).
  `overflow="null"` gives a null score with a reason instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

COMPLEXITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the complexity score of the following user query. "
    "\n##Query: {instruction}  \n##Complexity: "
)
QUALITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding "
    "to the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
SCORE_DIGITS = ("1", "2", "3", "4", "5", "6")
SCORE_WEIGHTS = (1, 2, 3, 4, 5, 6)


class ScoreTokenError(ValueError):
    """The tokenizer cannot express a score digit as exactly one token after the prompt."""


@dataclass(frozen=True)
class Score:
    value: float | None
    reason: str | None = None  # why value is None, or what was truncated
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "truncated": self.truncated}


def _encode_with(tokenizer):
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return encode


def prompt_prefix(tokenizer) -> str:
    """BOS as text if the tokenizer has one (the engine adds no special tokens itself)."""
    return tokenizer.bos_token or ""


def score_token_ids(tokenizer, encode=None) -> list[int]:
    """Token ids of "1".."6" as this tokenizer emits them right after the deita prompts.

    For each template and digit d, encode(prompt + d) must equal encode(prompt) + [one token].
    The six tokens must be distinct and the same for both templates. Raises ScoreTokenError
    otherwise (e.g. a GPT-2-style tokenizer that merges the prompt's trailing space with the
    digit: scoring the prompt's next token would then ask the wrong question).
    """
    encode = encode or _encode_with(tokenizer)
    bos = prompt_prefix(tokenizer)
    probes = {
        "complexity": bos + COMPLEXITY_TEMPLATE.format(instruction="Say hi."),
        "quality": bos + QUALITY_TEMPLATE.format(instruction="Say hi.", output="Hi."),
    }
    found: dict[str, list[int]] = {}
    for name, prompt in probes.items():
        base = encode(prompt)
        ids = []
        for d in SCORE_DIGITS:
            full = encode(prompt + d)
            if full[: len(base)] != base or len(full) != len(base) + 1:
                tail = full[max(0, len(base) - 2):]
                raise ScoreTokenError(
                    f"deita scoring needs the digit {d!r} to be exactly one new token after the "
                    f"{name} prompt, but encode(prompt + {d!r}) ends with {tail} "
                    f"({_show(tokenizer, tail)}) while encode(prompt) ends with "
                    f"{base[-2:]} ({_show(tokenizer, base[-2:])}). This tokenizer merges the digit "
                    "with the text before it; the deita score is undefined for it."
                )
            ids.append(full[-1])
        if len(set(ids)) != len(ids):
            raise ScoreTokenError(f"score digits map to repeated token ids {ids} ({name} prompt)")
        found[name] = ids
    if found["complexity"] != found["quality"]:
        raise ScoreTokenError(f"score digit ids differ between the two prompts: {found}")
    return found["complexity"]


def _show(tokenizer, ids: Sequence[int]) -> str:
    try:
        return repr(tokenizer.convert_ids_to_tokens(list(ids)))
    except Exception:  # pragma: no cover - display only
        return "?"


def expected_score(logprobs: Sequence[float] | None) -> Score:
    """sum_k k * softmax(logprobs)_k over the six digits; null with a reason if unavailable.

    Pure function. The softmax is taken again even though the engine already renormalized
    (softmax of log-probs = renormalized probabilities, so it is idempotent).
    """
    if logprobs is None:
        return Score(None, "logprobs of the six score digits unavailable (at least one was not returned)")
    values = [float(v) for v in logprobs]
    if len(values) != len(SCORE_WEIGHTS):
        return Score(None, f"expected {len(SCORE_WEIGHTS)} digit logprobs, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        return Score(None, f"non-finite digit logprob in {values}")
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return Score(sum(w * e for w, e in zip(SCORE_WEIGHTS, exps)) / total)


def deita_score(complexity: Sequence[float | None], quality: Sequence[float | None]) -> tuple[float | None, str | None]:
    """sum over turns of complexity * quality; (None, reason) if any turn's score is null."""
    if len(complexity) != len(quality):
        return None, f"{len(complexity)} complexity vs {len(quality)} quality scores"
    if not complexity:
        return None, "no user turn to score"
    missing = [i for i, (c, q) in enumerate(zip(complexity, quality)) if c is None or q is None]
    if missing:
        return None, f"turn(s) {missing} have a null complexity or quality score"
    return float(sum(c * q for c, q in zip(complexity, quality))), None


def conversation_turns(messages: Sequence[dict]) -> list[tuple[str, str]]:
    """(instruction, response) per user turn, as deita pairs them.

    System messages are skipped. Each user message opens a turn; the next assistant message is
    its response; a user message with no assistant message after it gets response "".
    An assistant message with no user message before it raises ValueError.
    """
    turns: list[list[str]] = []
    open_turn = False
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system":
            continue
        if role == "user":
            turns.append([m.get("content") or "", ""])
            open_turn = True
        elif role == "assistant":
            if not open_turn:
                raise ValueError(f"message {i}: assistant message without a user message before it")
            turns[-1][1] = m.get("content") or ""
            open_turn = False
        else:
            raise ValueError(f"message {i}: unknown role {role!r}")
    return [(a, b) for a, b in turns]


def engine_max_model_len(engine) -> int | None:
    """The engine's context length (`Engine.max_model_len`), else its config's, else None."""
    value = getattr(engine, "max_model_len", None)
    if isinstance(value, int):
        return value
    config = getattr(engine, "config", None)
    value = getattr(config, "max_model_len", None)
    return int(value) if value else None


@dataclass
class _Prompt:
    text: str | None  # None: could not be built (reason says why)
    reason: str | None = None
    truncated: bool = False


class DeitaScorer:
    """Score instructions (complexity) and instruction/response pairs (quality) with one engine.

    `engine` is a roost scoring engine (`choice_logprobs`, `tokenizer`, `encode`,
    `max_model_len`, `describe`): the vLLM engine or the batched transformers one, both from
    `roost.engines.hf_scoring.get_scoring_engine(config, backend)`. Meant for the deita
    scorer checkpoints, but any causal LM works mechanically (the scores mean nothing then).
    `max_prompt_tokens` defaults to the engine's max_model_len - 1 (one token is generated).
    """

    def __init__(
        self,
        engine,
        *,
        max_prompt_tokens: int | None = None,
        overflow: Literal["truncate", "null"] = "truncate",
        progress: str | None = None,
    ):
        if overflow not in ("truncate", "null"):
            raise ValueError("overflow must be 'truncate' or 'null'")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._encode = getattr(engine, "encode", None) or _encode_with(self.tokenizer)
        self.token_ids = score_token_ids(self.tokenizer, self._encode)
        self.bos = prompt_prefix(self.tokenizer)
        if max_prompt_tokens is None:
            limit = engine_max_model_len(engine)
            max_prompt_tokens = limit - 1 if limit else None
        self.max_prompt_tokens = max_prompt_tokens
        self.overflow = overflow
        self.progress = progress

    def settings(self) -> dict[str, Any]:
        return {
            "method": "deita-expected-score",
            "score_token_ids": list(self.token_ids),
            "bos_in_prompt": bool(self.bos),
            "max_prompt_tokens": self.max_prompt_tokens,
            "overflow": self.overflow,
        }

    # -- public API -------------------------------------------------------------------------
    def complexity(self, instructions: Sequence[str]) -> list[Score]:
        return self._score([self.complexity_prompt(i) for i in instructions])

    def quality(self, instructions: Sequence[str], responses: Sequence[str]) -> list[Score]:
        if len(instructions) != len(responses):
            raise ValueError("one response per instruction")
        return self._score([self.quality_prompt(i, r) for i, r in zip(instructions, responses)])

    def score_conversations(
        self, conversations: Sequence[Sequence[dict]], *, quality_scorer: "DeitaScorer | None" = None
    ) -> list[dict[str, Any]]:
        """Per conversation: complexity_scores, quality_scores (one per turn), deita_score and
        the reasons for any null or truncated score. The one production path for multi-turn
        aggregation (curation calls it).

        Complexity prompts go to this scorer's engine. Quality prompts go to `quality_scorer`'s
        (deita's two checkpoints are two models), or to this engine if it is None: then all
        prompts of the batch go to the engine in one call; otherwise one call per engine.
        A malformed conversation gets deita_score None with the reason, not an exception."""
        quality = quality_scorer or self
        plans: list[tuple[int, int, str | None]] = []  # (n_turns, first turn index, error)
        complexity_prompts: list[_Prompt] = []
        quality_prompts: list[_Prompt] = []
        for messages in conversations:
            try:
                turns = conversation_turns(messages)
            except ValueError as e:
                plans.append((0, len(complexity_prompts), str(e)))
                continue
            plans.append((len(turns), len(complexity_prompts), None))
            complexity_prompts += [self.complexity_prompt(ins) for ins, _ in turns]
            quality_prompts += [quality.quality_prompt(ins, resp) for ins, resp in turns]
        if quality is self:
            both = self._score(complexity_prompts + quality_prompts)
            c_scores, q_scores = both[: len(complexity_prompts)], both[len(complexity_prompts):]
        else:
            c_scores, q_scores = self._score(complexity_prompts), quality._score(quality_prompts)
        out = []
        for n, start, error in plans:
            if error is not None:
                out.append({
                    "complexity_scores": [], "quality_scores": [], "deita_score": None,
                    "deita_score_reason": f"malformed conversation: {error}", "score_notes": [],
                    "truncated": False,
                })
                continue
            cs, qs = c_scores[start:start + n], q_scores[start:start + n]
            value, reason = deita_score([s.value for s in cs], [s.value for s in qs])
            notes = [f"turn {t} {kind}: {s.reason}" for kind, group in (("complexity", cs), ("quality", qs))
                     for t, s in enumerate(group) if s.reason]
            out.append({
                "complexity_scores": [s.value for s in cs],
                "quality_scores": [s.value for s in qs],
                "deita_score": value,
                "deita_score_reason": reason,
                "score_notes": notes,
                "truncated": any(s.truncated for s in (*cs, *qs)),
            })
        return out

    # -- prompts --------------------------------------------------------------------------
    def complexity_prompt(self, instruction: str) -> _Prompt:
        text = self.bos + COMPLEXITY_TEMPLATE.format(instruction=instruction)
        if self._fits(text):
            return _Prompt(text)
        return self._shorten(lambda i, r: self.bos + COMPLEXITY_TEMPLATE.format(instruction=i), instruction, None)

    def quality_prompt(self, instruction: str, response: str) -> _Prompt:
        text = self.bos + QUALITY_TEMPLATE.format(instruction=instruction, output=response)
        if self._fits(text):
            return _Prompt(text)
        return self._shorten(
            lambda i, r: self.bos + QUALITY_TEMPLATE.format(instruction=i, output=r), instruction, response
        )

    def _fits(self, text: str) -> bool:
        return self.max_prompt_tokens is None or len(self._encode(text)) <= self.max_prompt_tokens

    def _shorten(self, render, instruction: str, response: str | None) -> _Prompt:
        limit = self.max_prompt_tokens
        full = len(self._encode(render(instruction, response or "")))
        if self.overflow == "null":
            return _Prompt(None, f"prompt has {full} tokens, over the limit of {limit}")
        overhead = len(self._encode(render("", "")))
        room = limit - overhead
        if room < 8:
            return _Prompt(None, f"template alone takes {overhead} of {limit} tokens")
        ins_ids = self._encode(instruction)
        res_ids = self._encode(response) if response is not None else []
        if response is None:
            keep_i, keep_r = min(len(ins_ids), room), 0
        else:
            keep_r = min(len(res_ids), max(room - len(ins_ids), room // 2))
            keep_i = min(len(ins_ids), room - keep_r)
        # Cutting text at token boundaries and re-encoding can shift a token or two at the
        # seams; shrink until the rendered prompt really fits.
        for _ in range(64):
            ins = _cut(self.tokenizer, instruction, ins_ids, keep_i)
            res = _cut(self.tokenizer, response, res_ids, keep_r) if response is not None else None
            text = render(ins, res or "")
            n = len(self._encode(text))
            if n <= limit:
                parts = [f"instruction {len(ins_ids)}->{keep_i} tokens"]
                if response is not None:
                    parts.append(f"response {len(res_ids)}->{keep_r} tokens")
                return _Prompt(text, f"truncated to fit {limit} tokens (kept the beginning): " + ", ".join(parts), True)
            over = n - limit
            if response is not None and keep_r > keep_i:
                keep_r = max(0, keep_r - over)
            else:
                keep_i = max(0, keep_i - over)
        return _Prompt(None, f"could not truncate the prompt to {limit} tokens")  # pragma: no cover

    # -- engine ---------------------------------------------------------------------------
    def _score(self, prompts: Sequence[_Prompt]) -> list[Score]:
        runnable = [i for i, p in enumerate(prompts) if p.text is not None]
        kwargs = {"progress": self.progress} if self.progress else {}
        logprobs = (
            self.engine.choice_logprobs([prompts[i].text for i in runnable], self.token_ids, **kwargs)
            if runnable else []
        )
        by_index = dict(zip(runnable, logprobs))
        out = []
        for i, p in enumerate(prompts):
            if p.text is None:
                out.append(Score(None, p.reason, p.truncated))
                continue
            s = expected_score(by_index[i])
            reason = s.reason if s.value is None else p.reason
            out.append(Score(s.value, reason, p.truncated))
        return out


def _cut(tokenizer, text: str, ids: Sequence[int], keep: int) -> str:
    """The text of the first `keep` tokens, without a dangling partial character."""
    if keep >= len(ids):
        return text
    text = tokenizer.decode(list(ids[:keep]), skip_special_tokens=False)
    return text.rstrip("\ufffd")
