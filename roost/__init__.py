"""roost: synthesize and curate LLM alignment data.

From Python (roost.api; the `roost` command is a thin layer over it):

    import roost
    result = roost.build("recipes/magpie-demo.yaml", out="out/magpie", num_rows=50)
    curated = roost.curate(result.out, out="out/curated", stages=["heuristics", "exact_dedup"])
    curated.dataset()          # a datasets.Dataset of the kept rows
    curated.rejects()          # ... of the rows removed, with stage and reason

Importing this package imports nothing heavy (the `roost` console script, roost.supervisor,
is stdlib-only): every name below is loaded on first use.
"""
from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

__all__ = ["build", "curate", "evaluate", "Recipe", "CurateRecipe", "EvalRecipe", "Result", "EvalResult",
           "UserError"]  # and `eval`, an alias of evaluate (left out of `import *`: it would hide the builtin)

_LAZY = {
    "evaluate": ("roost.api", "evaluate"),
    "eval": ("roost.api", "evaluate"),
    "Result": ("roost.api", "Result"),
    "EvalResult": ("roost.api", "EvalResult"),
    "Recipe": ("roost.recipe", "Recipe"),
    "CurateRecipe": ("roost.recipe", "CurateRecipe"),
    "EvalRecipe": ("roost.evaluation.config", "EvalRecipe"),
    "UserError": ("roost.errors", "UserError"),
}
# roost.build and roost.curate are modules (the plain functions the flows wire) and, called,
# the API's build() and curate(): `roost.build(recipe, out=...)` whichever was imported first.
_CALLABLE = ("build", "curate")


def __getattr__(name: str):
    import importlib

    if name in _CALLABLE:
        return importlib.import_module(f"roost.{name}")  # the import sets it here (_Package.__setattr__)
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'roost' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_CALLABLE})


class _CallableModule(types.ModuleType):
    """A module that, called, runs the roost.api function of its name."""

    def __call__(self, *args, **kwargs):
        from roost import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)

    @property
    def __signature__(self):  # inspect.signature(roost.build), and so a notebook's help, show the API's
        import inspect

        from roost import api

        return inspect.signature(getattr(api, self.__name__.rpartition(".")[2]))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # the import system sets each submodule on its package as it loads it: make these two callable
        if name in _CALLABLE and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
