"""Recipes: YAML files validated by pydantic. A bad recipe is one clear line, exit code 2."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from roost.engines.vllm_engine import EngineConfig


# pydantic puts union branch names into error locations ("str", "WeightedPrompt", ...)
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|(dict|list|union|function-\w+)\[.*|function-.*|[A-Z]\w*)$")


class RecipeError(ValueError):
    """Raised with a one-line message naming the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(_Strict):
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    max_tokens: int = Field(512, ge=1, le=131072)


class WeightedPrompt(_Strict):
    text: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0.0)


class MagpieConfig(_Strict):
    n_turns: int = Field(1, ge=1, le=16)
    # One prompt, or a weighted mix {key: {text, weight}} (or {key: text}, weight 1).
    system_prompt: str | dict[str, WeightedPrompt | str] | None = None
    include_system_prompt: bool = False
    task: Literal["math", "code", "translation"] | None = None
    language: str | None = Field(None, min_length=2)
    pre_query_template: str = "auto"
    instruction: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=512)
    response: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=1024)
    extra_stop: list[str] = Field(default_factory=list)
    min_instruction_chars: int = Field(8, ge=1)
    max_rounds: int = Field(3, ge=1, le=20)

    @field_validator("system_prompt")
    @classmethod
    def _non_empty_mix(cls, v):
        if isinstance(v, dict) and not v:
            raise ValueError("a system prompt mix needs at least one entry")
        return v


class OutputConfig(_Strict):
    num_rows: int = Field(ge=1)
    shard_size: int = Field(1000, ge=1)
    split: str = Field("train", pattern=r"^[A-Za-z0-9_]+$")

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)

    def shard_rows(self, index: int) -> int:
        return min(self.shard_size, self.num_rows - index * self.shard_size)


class Recipe(_Strict):
    name: str = Field(min_length=1)
    synthesizer: Literal["magpie"]
    model: EngineConfig
    output: OutputConfig
    magpie: MagpieConfig = MagpieConfig()

    def fingerprint(self) -> str:
        """Hash of everything that changes the data; throughput knobs are left out."""
        data = self.model_dump(mode="json")
        data["model"].pop("throughput", None)
        return _fingerprint(data)


def _fingerprint(data: dict) -> str:
    """Hash of a recipe's settings; its name is a label, not a setting."""
    data = {k: v for k, v in data.items() if k != "name"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load and validate. `overrides` are dotted keys from the CLI, e.g. {"model.model": "..."}."""
    raw = _read_yaml(Path(path))
    _apply(raw, overrides)
    return validate_recipe(raw, str(path))


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    return _validate(Recipe, raw, source)


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of fields")
    return raw


def _apply(raw: dict, overrides: dict[str, Any] | None) -> None:
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)


def _validate(model: type[BaseModel], raw: dict, source: str):
    """Validate, turning pydantic's report into one line that names the first bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"] if not _TYPE_TAG.match(str(p))) or "(root)"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RecipeError(f"{source}: field '{field}': {err['msg']}{more}") from None


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


# -- curation ---------------------------------------------------------------------------------


class CurateInput(_Strict):
    path: str | None = None  # roost output dir, Parquet file/dir/glob, or hf://<dataset id>
    split: str = "train"
    messages_column: str = "messages"
    instruction_column: str = "instruction"
    response_column: str = "response"
    id_column: str = "id"
    score_column: str | None = None  # an existing score to prefer when choosing dedup survivors
    batch_size: int = Field(4096, ge=1)  # rows per read batch (memory bound, not in the hash)


class HeuristicsConfig(_Strict):
    enabled: bool = True
    min_instruction_chars: int | None = Field(3, ge=0)
    max_instruction_chars: int | None = Field(8192, ge=1)
    min_response_chars: int | None = Field(1, ge=0)
    max_response_chars: int | None = Field(32768, ge=1)
    ngram: int = Field(3, ge=1)
    max_repeated_ngram_fraction: float = Field(0.3, gt=0, le=1)
    not_a_request: bool = True


class ExactDedupConfig(_Strict):
    enabled: bool = True
    field: Literal["first_instruction", "conversation"] = "first_instruction"


class SemanticDedupConfig(_Strict):
    enabled: bool = True
    field: Literal["first_instruction", "conversation"] = "first_instruction"
    model: str | None = None  # sentence-transformers name or path; default: bundled all-MiniLM-L6-v2
    threshold: float = Field(0.9, gt=0, le=1)  # cosine similarity at or above which rows duplicate
    k: int = Field(16, ge=1)
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    embed_batch_size: int = Field(32, ge=1)  # sentence-transformers default; measured fastest on CPU


class ScoringConfig(_Strict):
    enabled: bool = False
    complexity_model: str | None = None  # e.g. hkust-nlp/deita-complexity-scorer
    quality_model: str | None = None  # e.g. hkust-nlp/deita-quality-scorer
    dtype: str = "auto"
    max_model_len: int = Field(2048, ge=16)
    overflow: Literal["truncate", "null"] = "truncate"
    batch_size: int = Field(2048, ge=1)  # conversations per engine call


class SelectionConfig(_Strict):
    enabled: bool = False
    budget: int | None = Field(None, ge=1)
    tau: float = Field(0.9, gt=0, le=1)  # max cosine similarity to any already-kept row


class CurateRecipe(_Strict):
    name: str = "curate"
    input: CurateInput = CurateInput()
    shard_size: int = Field(100_000, ge=1)
    heuristics: HeuristicsConfig = HeuristicsConfig()
    exact_dedup: ExactDedupConfig = ExactDedupConfig()
    semantic_dedup: SemanticDedupConfig = SemanticDedupConfig()
    scoring: ScoringConfig = ScoringConfig()
    selection: SelectionConfig = SelectionConfig()

    def fingerprint(self) -> str:
        data = self.model_dump(mode="json")
        data["input"].pop("batch_size", None)
        data["semantic_dedup"].pop("embed_batch_size", None)
        data["scoring"].pop("batch_size", None)
        return _fingerprint(data)


def load_curate_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CurateRecipe:
    raw = _read_yaml(Path(path)) if path is not None else {}
    _apply(raw, overrides)
    return _validate(CurateRecipe, raw, str(path) if path is not None else "options")
