"""Projectors map encoder features to the LLM's width. Importing registers the builders."""
from . import mlp  # noqa: F401  (registration)
from . import qformer  # noqa: F401  (registration)
from .mlp import MLPProjector
from .qformer import QFormerInstruction, QFormerProjector, load_hf_qformer

__all__ = ["MLPProjector", "QFormerInstruction", "QFormerProjector", "load_hf_qformer"]
