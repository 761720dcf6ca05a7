"""Name -> builder function. One small type, one instance per kind of part.

Builders are plain functions registered explicitly under a name; nothing is inferred from
substrings of names, so `mmtune zoo` and error messages can list exactly what exists.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, F] = {}

    def register(self, name: str, builder: F | None = None):
        """Use as `reg.register("name", fn)` or as a decorator `@reg.register("name")`."""

        def add(fn: F) -> F:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return add(builder) if builder is not None else add

    def get(self, name: str) -> F:
        try:
            return self._builders[name]
        except KeyError:
            known = ", ".join(sorted(self._builders)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._builders))

    def names(self) -> list[str]:
        return sorted(self._builders)


ENCODERS: Registry = Registry("encoder")
PROJECTORS: Registry = Registry("projector")
PRESETS: Registry = Registry("preset")
RECIPES: Registry = Registry("recipe")
# Recipes whose config is not a RecipeConfig (e.g. instruct_pix2pix, a diffusers model) register
# their loader `(name_or_path, overrides) -> config` here; the others use load_recipe_config.
RECIPE_CONFIGS: Registry = Registry("recipe config loader")
