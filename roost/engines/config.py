"""Engine configs: plain data that recipes hold and engines read.

Nothing here imports vLLM or torch, so recipes validate in a blink. `identity()` is what
makes two configs the same model in this process (one engine each); throughput knobs are
left out of it and out of every recipe fingerprint.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Fields that change what the model outputs. Throughput-only knobs (memory, batch limits)
# live in `throughput` and never enter a recipe hash or a cache key.
_THROUGHPUT = {"throughput": True}  # kept out of fingerprints (see roost.config.canonical)
_IDENTITY_FIELDS = ("model", "revision", "tokenizer", "dtype", "max_model_len", "seed", "trust_remote_code")


class ServerConfig(BaseModel):
    """A running vLLM OpenAI-compatible server (`vllm serve`) that serves the model, instead of
    loading it in this process (roost.engines.server_engine). A recipe may give just the URL:
    `server: http://host:8000/v1`. Where the model runs is not part of a recipe's fingerprint."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s)://host:port, with or without /v1")
    # The name of an environment variable holding the API key (`vllm serve --api-key`); the key
    # itself is never written to a recipe or a manifest. None: VLLM_API_KEY if it is set.
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    max_concurrency: int = Field(default=256, ge=1, description="requests in flight at once")
    timeout: float = Field(default=600.0, gt=0, description="seconds per request")
    retries: int = Field(default=4, ge=0, description="retries on connection errors and 5xx, with backoff")
    # Each request carries seed = derive_seed(call seed, prompt index). A CPU vLLM server dies on
    # seeded requests unless started with --no-enable-chunked-prefill (server_engine docstring);
    # false: send no seeds (outputs then depend on the server's state).
    per_request_seeds: bool = True

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, value):
        if isinstance(value, str):
            return {"url": value}
        if isinstance(value, dict) and "api_key" in value:
            raise ValueError("api_key: keys are never stored in recipes; name the environment variable "
                             "that holds it in api_key_env")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the URL; name the environment variable that "
                             "holds the API key in api_key_env")
        return value.strip().rstrip("/")


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
    server: ServerConfig | None = Field(
        default=None, description="a running vLLM server that serves this model (default: load it here)",
        json_schema_extra=_THROUGHPUT,
    )

    def identity(self) -> tuple:
        return tuple(getattr(self, f) for f in _IDENTITY_FIELDS)


Backend = Literal["auto", "vllm", "transformers", "server"]  # server: `server` below (vLLM's /classify)


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
    backend: Backend = "auto"  # auto: `server` if set, else vLLM pooling where vLLM supports the architecture, else transformers
    server: ServerConfig | None = Field(default=None, json_schema_extra=_THROUGHPUT)  # a vLLM server serving this reward model
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
        if self.backend == "server" and self.server is None:
            raise ValueError("backend server needs server: the URL of a vLLM server serving the reward model")
        if self.server is not None and self.backend not in ("auto", "server"):
            raise ValueError(f"server is set, but backend is {self.backend}: use backend server (or auto)")
        return self

    def identity(self) -> tuple:
        where = (self.server.url, self.server.api_key_env) if self.server is not None else None
        return (self.model, self.revision, self.dtype, self.max_model_len, self.trust_remote_code, self.backend, where)


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


def local_model_problem(path) -> str | None:
    """Why `path` is not a model the next iteration can load, or None (config, tokenizer and
    weight files are read; the weights themselves are loaded by the next engine)."""
    from pathlib import Path

    path = Path(path)
    if not (path / "config.json").is_file():
        return "no config.json"
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("*.safetensors.index.json"))
    if not weights:
        return "no weights (*.safetensors or *.bin)"
    try:
        from transformers import AutoConfig, AutoTokenizer

        AutoConfig.from_pretrained(path)
        AutoTokenizer.from_pretrained(path)
    except Exception as e:  # whatever transformers raises for a broken directory
        return f"does not load: {str(e).splitlines()[0][:200]}"
    try:
        from safetensors import safe_open

        for w in (w for w in weights if w.suffix == ".safetensors"):
            with safe_open(w, "np") as f:
                f.keys()
    except Exception as e:
        return f"unreadable weights: {str(e).splitlines()[0][:200]}"
    return None
