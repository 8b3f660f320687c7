"""Magpie's pre-query templates, derived from the model's own chat template.

The pre-query template is everything the chat template renders before a user message's
text. We get it by rendering a conversation whose last user message is a sentinel and
cutting at the sentinel; the same cut works for the first turn, a system prompt, or a long
multi-turn history, so there is one code path for all of them (and no doubled headers, as
when a generation prompt is appended before the user header).

A few models' derived templates are known to be wrong for Magpie; those are overridden
below, for a first turn without a system prompt only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from roost.engines.base import render_chat

SENTINEL = "\u2063roost-sentinel-7f3a\u2063"
SENTINEL_2 = "\u2063roost-sentinel-9c1b\u2063"


@dataclass(frozen=True)
class Override:
    pattern: str
    template: str
    why: str


# Matched against the model id with re.search, first match wins.
KNOWN_OVERRIDES: tuple[Override, ...] = (
    Override(
        r"(?i)qwen2\.5",
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\n",
        "Qwen2.5 writes fragments from a bare user header; Magpie keeps its default system "
        "prompt (magpie-align/magpie#28). Pinned here so a template edit cannot drop it.",
    ),
    Override(
        r"(?i)qwen(2|1\.5)-",
        "<|im_start|>user\n",
        "Qwen2/Qwen1.5 Magpie data used the bare user header, not the template's default "
        "'You are a helpful assistant.' system block (magpie-align/magpie#41).",
    ),
    Override(
        r"(?i)llama-3\.[123]",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        "Llama-3.1+ templates inject a 'Cutting Knowledge Date' system block; Magpie's "
        "Llama-3.x data used the bare user header.",
    ),
)


class TemplateError(ValueError):
    pass


def pre_query(tokenizer, history: Sequence[dict] = ()) -> str:
    """Text the model sees right before it writes the next user message after `history`."""
    text = _render(tokenizer, [*history, {"role": "user", "content": SENTINEL}], False)
    cut = text.find(SENTINEL)
    if cut < 0:
        raise TemplateError("the chat template dropped the user message; cannot derive a pre-query template")
    return text[:cut]


def first_turn_template(tokenizer, model_id: str, system_prompt: str | None, explicit: str | None = None) -> str:
    """The pre-query template for the first user turn."""
    if explicit and explicit != "auto":
        return explicit
    if not system_prompt:
        override = find_override(model_id)
        if override:
            return override.template
        return pre_query(tokenizer)
    return pre_query(tokenizer, [{"role": "system", "content": system_prompt}])


def find_override(model_id: str) -> Override | None:
    return next((o for o in KNOWN_OVERRIDES if re.search(o.pattern, model_id)), None)


@dataclass(frozen=True)
class TurnMarkers:
    """What ends a user turn in this template: stop strings and stop token ids."""

    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]


def turn_markers(tokenizer) -> TurnMarkers:
    """Markers found between a user message and the assistant's reply, and after a reply.

    These are the template's own end-of-turn / start-of-turn markers (e.g. `<|im_end|>`,
    `<|im_start|>` or `<|eot_id|>`, `<|start_header_id|>`). The role name itself
    ("assistant") is never a stop string: that is a known Magpie bug which truncates any
    instruction mentioning the word.
    """
    text = _render(
        tokenizer,
        [{"role": "user", "content": SENTINEL}, {"role": "assistant", "content": SENTINEL_2}],
        False,
    )
    between = text[text.index(SENTINEL) + len(SENTINEL): text.index(SENTINEL_2)]
    after = text[text.index(SENTINEL_2) + len(SENTINEL_2):]
    specials = _special_tokens(tokenizer)
    found = sorted(
        {s for s in specials if s in between or s in after},
        key=lambda s: (between + after).find(s),
    )
    if not found:  # a template without special tokens (e.g. "### Response:"): use its text
        found = [line.strip() for line in between.splitlines() if line.strip()][:1]
    ids = []
    for marker in found:
        encoded = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.append(encoded[0])
    eos = tokenizer.eos_token_id
    for e in eos if isinstance(eos, list) else [eos]:
        if e is not None and e not in ids:
            ids.append(e)
    if tokenizer.eos_token and tokenizer.eos_token not in found:
        found.append(tokenizer.eos_token)
    return TurnMarkers(stop=tuple(found), stop_token_ids=tuple(ids))


def _special_tokens(tokenizer) -> set[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials |= {t.content for t in decoder.values() if getattr(t, "special", False)}
    return {s for s in specials if s}


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    try:
        return render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja raises for roles a template does not allow
        raise TemplateError(f"chat template cannot render this conversation: {e}") from e
