"""Projectors map encoder features to the LLM's width. Importing registers the builders."""
from . import mlp  # noqa: F401  (registration)
from .mlp import MLPProjector

__all__ = ["MLPProjector"]
