"""Engine configs: plain data that recipes hold and engines read.

Nothing here imports vLLM or torch, so recipes validate in a blink. `identity()` is what
makes two configs the same model in this process (one engine each); throughput knobs are
left out of it and out of every recipe fingerprint.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Fields that change what the model outputs. Throughput-only knobs (memory, batch limits)
# live in `throughput` and never enter a recipe hash or a cache key.
_THROUGHPUT = {"throughput": True}  # kept out of fingerprints (see roost.config.canonical)
_IDENTITY_FIELDS = ("model", "revision", "tokenizer", "dtype", "max_model_len", "seed", "trust_remote_code")


class EngineConfig(BaseModel):
    """A generative (chat/completion) model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="hub id or local path")
    revision: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = Field(default=4096, ge=16)
    seed: int = 0
    trust_remote_code: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1, json_schema_extra=_THROUGHPUT)
    throughput: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to vllm.LLM as is (gpu_memory_utilization, max_num_seqs, ...)",
        json_schema_extra=_THROUGHPUT,
    )

    def identity(self) -> tuple:
        return tuple(getattr(self, f) for f in _IDENTITY_FIELDS)


Backend = Literal["auto", "vllm", "transformers"]


class RewardModelConfig(BaseModel):
    """A sequence-classification reward model (Skywork-Reward, InternLM2-Reward, ArmoRM, ...).

    Multi-output heads keep every output; the one used as `reward` is `objective` (an index)
    or the dot product with `weights`; by default output 0.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="hub id or local path")
    revision: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = Field(default=4096, ge=16)
    trust_remote_code: bool = False
    backend: Backend = "auto"  # auto: vLLM pooling where vLLM supports the architecture, else transformers
    objective: int | None = Field(default=None, ge=0)
    weights: list[float] | None = None
    batch_size: int = Field(default=16, ge=1, json_schema_extra=_THROUGHPUT)  # rows per forward (transformers)
    # padded tokens per forward (transformers); None: by device and model width (hf_scoring)
    max_batch_tokens: int | None = Field(default=None, ge=16, json_schema_extra=_THROUGHPUT)
    throughput: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM backend: passed to vllm.LLM as is (gpu_memory_utilization, max_num_seqs, ...)",
        json_schema_extra=_THROUGHPUT,
    )

    @model_validator(mode="after")
    def _one_selection(self) -> "RewardModelConfig":
        if self.objective is not None and self.weights is not None:
            raise ValueError("set objective or weights, not both")
        if self.weights is not None and not self.weights:
            raise ValueError("weights must not be empty")
        return self

    def identity(self) -> tuple:
        return (self.model, self.revision, self.dtype, self.max_model_len, self.trust_remote_code, self.backend)


def ensure_available(model: str, revision: str | None = None) -> None:
    """Fail fast, in one line, when a model is neither a local model directory nor a hub id
    that is cached or reachable (instead of a long traceback from deep inside an engine)."""
    import os
    import re
    from pathlib import Path

    from roost.errors import ModelError

    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model '{model}': {path} is not a model directory (no config.json)")
        return
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model) or model.startswith((".", "/", "~")):
        raise ModelError(f"model '{model}': no such directory, and not a hub id (org/name)")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelError(f"model '{model}': not a local directory and not in the Hugging Face cache, "
                         "and the Hub is offline (HF_HUB_OFFLINE=1)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(model, revision=revision, timeout=10)
    except RevisionNotFoundError:
        raise ModelError(f"model '{model}': no revision {revision!r} on the Hub") from None
    except RepositoryNotFoundError:
        raise ModelError(f"model '{model}': not found on the Hub (a private or gated model needs HF_TOKEN)") from None
    except Exception as e:  # network: the message must not carry a token or a long trace
        raise ModelError(f"model '{model}': cannot reach the Hub to fetch it ({type(e).__name__}); "
                         "pass a local path or download it first") from None
