"""vLLM's pooling runner for sequence-classification reward models (the only vLLM import
for reward models; generation lives in vllm_engine.py).

What vLLM 0.32 accepts, read from its source (entrypoints/pooling/offline.py, pooling_params.py,
config/model.py, model_executor/models/adapters.py):
- an architecture ending in `ForSequenceClassification` whose `...ForCausalLM` twin is in the
  registry runs with `runner="pooling"` (convert "classify"): the trunk plus a linear `score`
  head read from the checkpoint, pooled at the LAST token;
- `LLM.classify(prompts, pooling_params=PoolingParams(use_activation=False))` returns the raw
  head outputs (`ClassificationOutput.probs` is then the logits, not their sigmoid/softmax);
  `LLM.reward()` and the "score"/"reward" tasks are gone;
- prompts are token ids (`{"prompt_token_ids": [...]}`): chat templates already contain BOS.

One difference from transformers is handled here: HF's `*ForSequenceClassification` pools at
the rightmost token that is not `pad_token_id`, vLLM at the last token. They differ only when a
rendered conversation *ends* with the pad token (models trained with pad = eos); trailing pad
tokens are dropped before the request, which puts vLLM's LAST on the token HF pools (causal
attention: later tokens do not change that hidden state).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Sequence

from roost.engines.config import RewardModelConfig


def vllm_supports_classifier(architectures: Sequence[str]) -> bool:
    """Whether vLLM runs one of these architectures natively as a classifier (asks vLLM's
    ModelRegistry; the generic Transformers-backend fallback is not counted: custom code such
    as ArmoRM's does not run through it)."""
    from vllm import ModelRegistry
    from vllm.config.model import iter_architecture_defaults, try_match_architecture_defaults

    supported = set(ModelRegistry.get_supported_archs())
    for arch in architectures:
        match = try_match_architecture_defaults(arch, runner_type="pooling", convert_type="classify")
        if match is None:
            continue
        if arch in supported:
            return True
        suffix = match[0]
        for other_suffix, _ in iter_architecture_defaults():
            base = arch[: -len(suffix)] + other_suffix
            if base in supported and not base.startswith("Transformers"):
                return True
    return False


class VLLMPoolingEngine:
    """`LLM(runner="pooling")` over a `*ForSequenceClassification` checkpoint; raw head outputs."""

    def __init__(self, config: RewardModelConfig, *, dtype: str, max_model_len: int | None,
                 pad_token_id: int | None):
        from roost.runtime.logs import engine_start

        with engine_start():  # what vLLM's processes print goes to the log file
            self._start(config, dtype, max_model_len)
        self._lock = threading.Lock()
        self.pad_token_id = pad_token_id

    def _start(self, config: RewardModelConfig, dtype: str, max_model_len: int | None) -> None:
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=config.model,
            revision=config.revision,
            dtype=dtype,
            trust_remote_code=config.trust_remote_code,
            runner="pooling",
            seed=0,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(config.throughput)
        self._llm = LLM(**kwargs)

    @property
    def max_model_len(self) -> int:
        return int(self._llm.llm_engine.model_config.max_model_len)

    def close(self) -> None:
        from roost.engines.vllm_engine import shutdown

        shutdown(self._llm)

    @property
    def dtype(self) -> str:
        return str(self._llm.llm_engine.model_config.dtype)

    def classify(self, token_ids: Sequence[Sequence[int]], *, progress: str | None = None) -> list[list[float]]:
        """Raw classifier outputs (logits) per token-id prompt, in input order."""
        from vllm.pooling_params import PoolingParams

        from roost.engines.common import progress_bar

        if not token_ids:
            return []
        prompts = [{"prompt_token_ids": self._strip_trailing_pad(ids)} for ids in token_ids]
        with self._lock:
            outputs = self._llm.classify(
                prompts, pooling_params=PoolingParams(use_activation=False), use_tqdm=progress_bar(progress)
            )
        return [[float(x) for x in out.outputs.probs] for out in outputs]

    def _strip_trailing_pad(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        if self.pad_token_id is not None:
            end = len(ids)
            while end > 1 and ids[end - 1] == self.pad_token_id:
                end -= 1
            ids = ids[:end]
        return ids

    def describe(self) -> dict[str, Any]:
        import vllm

        return {
            "engine": "vllm-pooling",
            "vllm_version": vllm.__version__,
            "device": "cpu" if self.on_cpu else "gpu",
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
        }
