"""Name -> builder function. One small type, one instance per kind of part.

Builders are plain functions registered explicitly under a name; nothing is inferred from
substrings of names, so `mmtune zoo` and error messages can list exactly what exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Literal, TypeVar

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


@dataclass(frozen=True)
class Recipe:
    """A training recipe and what the command line needs to run it and read its runs, so the
    CLI has no recipe-specific branches. Calling it runs it."""

    # (cfg, run_dir, stages=None, resume=True, evaluate=True, stop_after=None) -> summary
    run: Callable[..., dict]
    load_config: Callable[[str, list[str]], Any]  # (packaged name or YAML path, overrides) -> config
    evaluate: Callable[[Path, str | None], dict]  # (run dir, data file or None) -> eval.json's content
    print_eval: Callable[[dict], None]
    configs: Callable[[], list[str]]  # the packaged config names
    zoo_rows: Callable[[], list[dict]] | None = None  # presets with parameter counts, beyond the zoo's
    page: Literal["chat", "edit"] = "chat"  # `mmtune serve`'s page for its runs: ask about media, or edit images

    def __call__(self, *args, **kwargs) -> dict:
        return self.run(*args, **kwargs)


ENCODERS: Registry = Registry("encoder")
PROJECTORS: Registry = Registry("projector")
PRESETS: Registry = Registry("preset")
RECIPES: Registry[Recipe] = Registry("recipe")
