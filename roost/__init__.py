"""roost: synthesize and curate LLM alignment data.

From Python (roost.api; the `roost` command is a thin layer over it):

    import roost
    result = roost.build("recipes/magpie-demo.yaml", out="out/magpie", num_rows=50)
    curated = roost.curate(result.out, out="out/curated", stages=["heuristics", "exact_dedup"])
    curated.dataset()          # a datasets.Dataset of the kept rows
    curated.rejects()          # ... of the rows removed, with stage and reason

Importing this package imports nothing heavy (the `roost` console script, roost.runtime.supervisor,
is stdlib-only): every name below is loaded on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["build", "curate", "evaluate", "Recipe", "CurateRecipe", "EvalRecipe", "Result", "EvalResult",
           "UserError"]  # and `eval`, an alias of evaluate (left out of `import *`: it would hide the builtin)

_LAZY = {
    "build": ("roost.api", "build"),
    "curate": ("roost.api", "curate"),
    "evaluate": ("roost.api", "evaluate"),
    "eval": ("roost.api", "evaluate"),
    "Result": ("roost.api", "Result"),
    "EvalResult": ("roost.api", "EvalResult"),
    "Recipe": ("roost.recipe", "Recipe"),
    "CurateRecipe": ("roost.recipe", "CurateRecipe"),
    "EvalRecipe": ("roost.evaluation.config", "EvalRecipe"),
    "UserError": ("roost.errors", "UserError"),
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'roost' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
