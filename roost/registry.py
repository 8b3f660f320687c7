"""Plug-in registries: synthesizers and curation stages are found here by their `kind`.

A plug-in is one module in its package (`roost/synthesizers/`, `roost/stages/`), or in any
module the user imports, that decorates its class with `@REGISTRY.register`; the class names its `kind` and its `Config`
(a pydantic model with `kind: Literal["..."]`). Recipes validate against the union of every
registered config, discriminated by `kind`. Nothing else is edited to add one.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any, Union

from pydantic import Field


class Registry:
    def __init__(self, package: str, what: str):
        self.package = package
        self.what = what
        self._classes: dict[str, type] = {}
        self._loaded = False
        self._listeners: list = []

    def register(self, cls: type) -> type:
        kind = cls.kind
        if kind in self._classes and self._classes[kind] is not cls:
            raise ValueError(f"two {self.what}s named {kind!r}")
        self._classes[kind] = cls
        if self._loaded:  # a plug-in from outside the package (a user's module, a test)
            self._changed()
        return cls

    def unregister(self, kind: str) -> None:
        """Take a plug-in registered from outside the package out again (a test's own stage)."""
        self._classes.pop(kind, None)
        self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def on_change(self, listener) -> None:
        """Call `listener()` whenever a plug-in is registered after the package's own were
        loaded (roost.recipe rebuilds the recipe models, so the new kind validates)."""
        self._listeners.append(listener)

    def load(self) -> None:
        """Import every module of the package once, so each registers itself (a subpackage holds
        what plug-ins share, e.g. roost/synthesizers/common/, and is not a plug-in)."""
        if self._loaded:
            return
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_") and not info.ispkg:
                importlib.import_module(f"{self.package}.{info.name}")
        self._loaded = True

    def get(self, kind: str) -> type:
        self.load()
        return self._classes[kind]

    def kinds(self) -> list[str]:
        self.load()
        return sorted(self._classes)

    def config_union(self) -> Any:
        """`Annotated[Union[Config, ...], Field(discriminator="kind")]` over every plug-in."""
        self.load()
        configs = tuple(cls.Config for _, cls in sorted(self._classes.items()))
        if len(configs) == 1:
            return configs[0]
        return Annotated[Union[configs], Field(discriminator="kind")]  # type: ignore[valid-type]
