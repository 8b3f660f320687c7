"""Recipes: YAML files validated by pydantic. A bad recipe is one clear line, exit code 2.

A build recipe names a policy `model`, a `synthesizer` (a discriminated union over every
registered synthesizer's config, by `kind`) and the `output` plan. A curation recipe names
its `input` and its `stages`, in order (by `kind`). Fingerprints hash `roost.config.canonical`:
only what changes the data, so a new option at its default leaves old outputs resumable.

Recipes in the shape of roost 0.1 (`synthesizer: magpie` plus a `magpie:` block; curation
blocks `heuristics:` ... `selection:` with `enabled`) are read and converted.
"""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from roost.config import DatasetInput, Strict, fingerprint, throughput
from roost.engines.config import EngineConfig
from roost.errors import ConfigError
from roost.evaluation.config import LoopEval
from roost.stages.base import STAGES
from roost.synthesizers.base import SYNTHESIZERS

RecipeError = ConfigError  # the name earlier code and users know

# pydantic puts union branch names into error locations ("str", "WeightedPrompt", ...)
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|(dict|list|union|function-\w+)\[.*|function-.*|[A-Z]\w*)$")


class OutputConfig(Strict):
    # rows to make (quota synthesizers such as Magpie), or at most this many input rows
    # (synthesizers that work through an input dataset); None: all of the input
    num_rows: int | None = Field(None, ge=1)
    shard_size: int = Field(1000, ge=1)
    split: str = Field("train", pattern=r"^[A-Za-z0-9_]+$")


PLACEHOLDERS = ("data", "model", "output", "iteration")
REQUIRED = ("data", "model", "output")


class ExecutorConfig(Strict):
    """Where a build's shards run: here, one after another (local), or on a Ray cluster, one
    engine per Ray worker (see roost.building.on_ray). Speed only: never part of the fingerprint."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: auto (RAY_ADDRESS, or the cluster `ray start` made here), HOST:PORT, ray://HOST:PORT
    workers: int | None = Field(None, ge=1)  # ray: workers (actors, one engine each); default: as many as the cluster fits
    gpus_per_worker: float | None = Field(None, ge=0)  # default: model.tensor_parallel_size if the cluster has GPUs, else 0
    cpus_per_worker: float = Field(1.0, gt=0)
    max_attempts: int = Field(3, ge=1)  # a shard whose worker dies is retried, up to this many attempts in all


class LoopConfig(Strict):
    """`roost iterate`: build, train with the user's command, repeat (see roost.building.iterate)."""

    iterations: int = Field(2, ge=1)
    train: str = Field(min_length=1)  # shell template, see the module doc
    mix_previous: bool = False
    subset: str = Field("data", pattern=r"^[A-Za-z0-9_.-]+$")
    release_engines: bool = True  # free the process's models before training (the GPU is the trainer's)
    eval: LoopEval | None = None  # held-out evaluation after each training; stops the loop on no gain

    @field_validator("train")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        check_template(value)
        return value


def check_template(template: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"not a valid template ({e}); write literal braces as {{{{ }}}}") from None
    unknown = sorted(f for f in fields if f not in PLACEHOLDERS)
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {', '.join('{%s}' % p for p in PLACEHOLDERS)}")
    missing = [p for p in REQUIRED if p not in fields]
    if missing:
        raise ValueError(f"needs {', '.join('{%s}' % p for p in missing)} (where the command reads data, the "
                         "model to start from, and where it saves the next model)")


class Recipe(Strict):
    name: str = Field(min_length=1)
    model: EngineConfig  # the policy: the model whose outputs become data
    synthesizer: SYNTHESIZERS.config_union()  # type: ignore[valid-type]  (see _plugins_registered)
    output: OutputConfig = OutputConfig()
    iteration: int = Field(0, ge=0)  # which round of an iterative method (DPO, SPIN, SPPO) this is
    loop: LoopConfig | None = None  # for `roost iterate`; not part of the data's fingerprint
    executor: ExecutorConfig = throughput(ExecutorConfig())  # where shards run; not part of the fingerprint

    def fingerprint(self, contents: dict[str, str] | None = None) -> str:
        """`contents`: what the inputs are (roost.building.runner.Build.fingerprint)."""
        return fingerprint(self, ignore=("name", "loop"), contents=contents)


class CurateInput(DatasetInput):
    path: str | None = None  # roost output dir, Parquet file/dir/glob, or hf://<dataset id>
    score_column: str | None = None  # an existing score to prefer when choosing dedup survivors
    batch_size: int = throughput(4096, ge=1)  # rows per read batch (memory bound)


class EmbeddingConfig(Strict):
    # sentence-transformers name or path; default: bundled all-MiniLM-L6-v2. "static": a model2vec
    # model distilled from it (cached; roost.engines.embeddings.StaticEmbedder), or a model2vec model's path
    model: str | None = None
    kind: Literal["auto", "sentence-transformers", "model2vec"] = "auto"  # auto: model2vec for "static" / model2vec dirs
    batch_size: int = throughput(32, ge=1)  # sentence-transformers default; measured fastest on CPU


def default_stages() -> list[dict]:
    return [{"kind": "heuristics"}, {"kind": "exact_dedup"}, {"kind": "semantic_dedup"}]


class CurateRecipe(Strict):
    name: str = "curate"
    input: CurateInput = CurateInput()
    embedding: EmbeddingConfig = EmbeddingConfig()
    stages: list[STAGES.config_union()] = Field(default_factory=lambda: _stage_list(default_stages()))  # type: ignore[valid-type]  (see _plugins_registered)
    shard_size: int = Field(100_000, ge=1)

    def fingerprint(self) -> str:
        contents = {}
        for i, stage in enumerate(self.stages):  # files a stage reads (benchmark sets, templates)
            contents.update({f"stages[{i}].{k}": v for k, v in getattr(stage, "contents", lambda: {})().items()})
        seen = self.model_copy(update={"stages": [stage.as_fingerprinted(self) for stage in self.stages]})
        return fingerprint(seen, contents=contents)


def _plugins_registered() -> None:
    """A synthesizer or stage registered from outside roost (a user's module, a test file): the
    recipe models validate against the unions of every registered config again."""
    Recipe.model_fields["synthesizer"].annotation = SYNTHESIZERS.config_union()
    Recipe.model_rebuild(force=True)
    CurateRecipe.model_fields["stages"].annotation = list[STAGES.config_union()]  # type: ignore[misc]
    CurateRecipe.model_rebuild(force=True)


STAGES.on_change(_plugins_registered)
SYNTHESIZERS.on_change(_plugins_registered)


def _stage_list(raw: list[dict]) -> list:
    from pydantic import TypeAdapter

    return TypeAdapter(list[STAGES.config_union()]).validate_python(raw)  # type: ignore[valid-type]


# -- loading ----------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load and validate. `overrides` are dotted keys from the CLI, e.g. {"model.model": "..."}."""
    raw = upgrade_build(read_yaml(Path(path)))
    apply_overrides(raw, overrides)
    return validate(Recipe, raw, str(path))


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    return validate(Recipe, upgrade_build(raw), source)


def load_curate_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CurateRecipe:
    raw = upgrade_curate(read_yaml(Path(path)) if path is not None else {})
    apply_overrides(raw, overrides)
    return validate(CurateRecipe, raw, str(path) if path is not None else "options")


def load_eval_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None):
    """`roost eval`'s recipe (roost.evaluation.config.EvalRecipe); no file: the overrides alone."""
    from roost.evaluation.config import EvalRecipe

    raw = read_yaml(Path(path)) if path is not None else {}
    apply_overrides(raw, overrides)
    if isinstance(raw.get("model"), dict):  # the model's own context length unless the recipe says
        raw["model"].setdefault("max_model_len", None)
    return validate(EvalRecipe, raw, str(path) if path is not None else "options")


def upgrade_build(raw: dict) -> dict:
    """roost 0.1's `synthesizer: magpie` + `magpie: {...}` -> `synthesizer: {kind: magpie, ...}`."""
    kind = raw.get("synthesizer")
    if isinstance(kind, str):
        raw = dict(raw)
        block = raw.pop(kind, None)
        raw["synthesizer"] = {"kind": kind, **(block if isinstance(block, dict) else {})}
    return raw


_LEGACY_STAGES = {"heuristics": "heuristics", "exact_dedup": "exact_dedup", "semantic_dedup": "semantic_dedup",
                  "scoring": "deita", "selection": "selection"}
_LEGACY_ON = {"heuristics": True, "exact_dedup": True, "semantic_dedup": True, "scoring": False, "selection": False}


def upgrade_curate(raw: dict) -> dict:
    """roost 0.1's fixed blocks (`heuristics:` ... `selection:`, each with `enabled`) -> `stages:`."""
    if "stages" in raw or not any(k in raw for k in _LEGACY_STAGES):
        return raw
    raw = dict(raw)
    stages = []
    for key, kind in _LEGACY_STAGES.items():
        block = dict(raw.pop(key, None) or {})
        if not block.pop("enabled", _LEGACY_ON[key]):
            continue
        if "field" in block:
            block["view"] = block.pop("field")
        embedding = raw.setdefault("embedding", {})
        for old, new in (("model", "model"), ("embed_batch_size", "batch_size")):
            if key == "semantic_dedup" and old in block:
                embedding[new] = block.pop(old)
        stages.append({"kind": kind, **block})
    raw["stages"] = stages
    return raw


def stage_block(raw: dict, kind: str, create: bool = False) -> dict | None:
    """The raw config of the first stage of `kind` in a curation recipe (made if asked: inserted
    before selection for scorers, appended otherwise)."""
    stages = raw.setdefault("stages", default_stages())
    for block in stages:
        if isinstance(block, dict) and block.get("kind") == kind:
            return block
    if not create:
        return None
    block = {"kind": kind}
    at = next((i for i, b in enumerate(stages) if isinstance(b, dict) and b.get("kind") == "selection"), len(stages))
    stages.insert(at if kind != "selection" else len(stages), block)
    return block


def apply_overrides(raw: dict, overrides: dict[str, Any] | None) -> None:
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a recipe file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of fields")
    return raw


def validate(model: type[BaseModel], raw: dict, source: str):
    """Validate, turning pydantic's report into one line that names the first bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: field '{field_name(err['loc'], raw)}': {err['msg']}{more}") from None


def field_name(loc: tuple, raw: Any = None) -> str:
    """('stages', 2, 'deita', 'dtype') -> 'stages[2](deita).dtype'; type names and the tags
    pydantic adds for a discriminated union (the value's `kind`) dropped."""
    kinds = set(SYNTHESIZERS.kinds()) | set(STAGES.kinds())
    out = ""
    prev = None
    node = raw
    for part in loc:
        tag = isinstance(node, dict) and part not in node and node.get("kind") == part
        if part in kinds and isinstance(prev, int):
            out += f"({part})"  # stages[2](semantic_dedup).threshold
        elif not (tag or _TYPE_TAG.match(str(part)) or (part in kinds and prev == "synthesizer")):
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        if not tag:
            node = _child(node, part)
        prev = part
    return out or "(root)"


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value
