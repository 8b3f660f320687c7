"""Curation stages: the three shapes a stage takes, and the registry that finds them.

- `RowFilter`: looks at one row, returns None to keep it or a `Drop(reason, detail)`.
- `Annotator`: adds columns to batches of rows (scores, tags); may also drop a row.
- `SetStage`: decides over all surviving rows at once (dedup, selection) from per-row
  `features` the runner computed in its first pass (key digests, embeddings).

The runner (roost.curation.runner) alone owns the passes over the input, the ledger of decisions,
the counts, the rejects, the progress bars and the output schema (input columns plus each
stage's declared `fields`). A stage is one module: its `Config` (with `kind`) and its class,
decorated with `@STAGES.register`, declaring on the class what others need to know of it: its
score columns (a later selection ranks by them), whether it uses the embedder (its cache key),
its `roost curate` flags (`options`) and its report panels (`report_panels`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, get_args

import numpy as np
import pyarrow as pa
from pydantic import model_validator

from roost.algorithms.base import Drop
from roost.config import Strict, canonical
from roost.dataset.rows import VIEWS, Parsed
from roost.registry import Registry
from roost.report.panels import Panel

# Shared by the stages' configs: which text of a row a stage reads (roost.dataset.rows.VIEWS; auto:
# the first instruction for SFT rows, the prompt for preference rows), and a model given by
# its path or hub id alone.
View = Literal[("auto",) + VIEWS]  # type: ignore[valid-type]


def engine_config(value: Any) -> Any:
    """`model: <path or hub id>` is short for `model: {model: <path or hub id>}`."""
    return {"model": value} if isinstance(value, str) else value


STAGES = Registry("roost.stages", "curation stage")

__all__ = ["Annotation", "Annotator", "Digest", "Drop", "Embedding", "Option", "Panel", "RowFilter", "STAGES", "SetDecision",
           "SetStage", "Stage", "StageConfig", "Survivors"]


class StageConfig(Strict):
    kind: str

    @model_validator(mode="before")
    @classmethod
    def _own_kind(cls, data: Any) -> Any:
        """`SemanticDedupConfig(threshold=0.9)` in Python: a stage's own config knows its kind (a
        recipe's stages, validated as a union, still name theirs)."""
        own = get_args(cls.model_fields["kind"].annotation)
        if isinstance(data, dict) and "kind" not in data and len(own) == 1:
            return {"kind": own[0], **data}
        return data

    def as_fingerprinted(self, recipe: Any) -> "StageConfig":
        """This config as the recipe fingerprint sees it: a stage whose default depends on the
        recipe (the dedup threshold on the embedding model) returns itself with a setting equal
        to that default put back to the default, so spelling the default out is the same recipe."""
        return self


@dataclass(frozen=True)
class Option:
    """A `roost curate` flag (and keyword of roost.curate) a stage declares: given, it edits the
    stage's raw config (`apply(config, value)`, a dict), adding the stage to the recipe when the
    recipe has none; `apply` returning False takes the stage out instead (`--no-semantic`)."""

    name: str  # the keyword; the flag is --<name with dashes>
    type: type
    help: str
    apply: Callable[[dict, Any], bool | None]
    flag: str | None = None  # typer's declaration when it is not --<name> ("--semantic/--no-semantic")


def setting(name: str) -> Callable[[dict, Any], None]:
    """An Option's `apply` that sets one field of the stage's config."""
    return lambda config, value: config.__setitem__(name, value)


def server_url(config: dict | None, url: str) -> dict:
    """A server block of a stage's config (a URL, a mapping or nothing) with its URL replaced."""
    return {**(config if isinstance(config, dict) else {}), "url": url}


@dataclass(frozen=True)
class Digest:
    """Feature: 16-byte hash of a normalized text view (exact dedup)."""

    view: str


@dataclass(frozen=True)
class Embedding:
    """Feature: unit embedding of a text view (semantic dedup, selection)."""

    view: str


class Stage:
    kind: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    # Columns among `fields()` that are scores: a later selection ranks by the last one written.
    score_columns: ClassVar[tuple[str, ...]] = ()
    # Whether the stage's results depend on the embedding model (part of its cache key). None:
    # a set stage uses it when it asks for an Embedding feature; any other stage is assumed to.
    uses_embedder: ClassVar[bool | None] = None
    # `roost curate` flags that set this stage's settings (roost.cli, roost.api.curate_recipe)
    options: ClassVar[tuple[Option, ...]] = ()
    # histograms `roost report` draws of the columns this stage writes, when they are present
    report_panels: ClassVar[tuple[Panel, ...]] = ()

    def __init__(self, config: StageConfig, context: Any):
        self.config = config
        self.context = context  # roost.curation.runner.Context: row kind, embedder, earlier stages' columns

    def check(self) -> None:
        """Refuse settings that cannot work, before any row is read (raise ConfigError)."""

    @property
    def name(self) -> str:
        return self.kind

    @property
    def view(self) -> str:
        """The text view the stage reads (its config's `view`, `auto` resolved for the row kind)."""
        return self.context.view(getattr(self.config, "view", "auto"))

    def fields(self) -> list[pa.Field]:
        """Columns this stage adds to every output row."""
        return []

    def refs(self) -> set[str]:
        """Fields whose stored values are row positions, written out as those rows' ids."""
        return set()

    def settings(self) -> dict[str, Any]:
        """What the manifest records about how the stage ran."""
        return canonical(self.config)

    def detail(self, reason: str, measure: float) -> str | None:
        """The rejects file's detail for a removal whose per-row number is `measure`."""
        return None


class RowFilter(Stage):
    def filter(self, row: Parsed) -> Drop | None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Annotation:
    values: dict[str, Any]
    drop: Drop | None = None


class Annotator(Stage):
    batch_size: int = 1024

    def annotate(self, rows: list[Parsed]) -> list[Annotation]:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Survivors:
    """Rows still in, as arrays: input positions, their priority and the features set
    stages asked for. Subsetting keeps them aligned."""

    position: np.ndarray  # int64 row number in the input
    priority: np.ndarray  # float64, NaN = none
    features: dict[Any, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.position)

    def subset(self, keep) -> Survivors:
        keep = np.asarray(keep, dtype=np.int64)
        return Survivors(self.position[keep], self.priority[keep], {k: v[keep] for k, v in self.features.items()})


@dataclass
class SetDecision:
    """What a set stage decided, indexed over the survivors it was given."""

    keep: np.ndarray  # bool
    reasons: np.ndarray | None = None  # object: reason per removed row (None where kept)
    measure: np.ndarray | None = None  # float per row: similarity etc., for the detail text
    duplicate_of: np.ndarray | None = None  # int64 index (into survivors) of the row it duplicates, -1
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # per-row values of declared fields
    settings: dict[str, Any] = field(default_factory=dict)


class SetStage(Stage):
    def features(self) -> list[Any]:
        return []

    def run(self, survivors: Survivors) -> SetDecision:  # pragma: no cover - interface
        raise NotImplementedError
