"""mmtune: build a multimodal model from parts and train it with the published recipes.

The public names load on first use, so light entry points (the dataset converters, the
record format) do not pay for importing torch and transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "MultimodalLM": "mmtune.model", "Batch": "mmtune.batch",
    "ModelConfig": "mmtune.config", "RecipeConfig": "mmtune.config",
    "ENCODERS": "mmtune.registry", "PROJECTORS": "mmtune.registry",
    "PRESETS": "mmtune.registry", "RECIPES": "mmtune.registry",
    "preset_config": "mmtune.zoo", "count_parameters": "mmtune.zoo",
}
# Modules whose import fills the registries (builders register themselves by name).
_REGISTERING = ("mmtune.encoders", "mmtune.projectors", "mmtune.zoo", "mmtune.recipes")

if TYPE_CHECKING:
    from .config import ModelConfig, RecipeConfig
    from .batch import Batch
    from .model import MultimodalLM
    from .registry import ENCODERS, PRESETS, PROJECTORS, RECIPES
    from .zoo import count_parameters, preset_config


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mmtune' has no attribute {name!r}")
    for module in _REGISTERING:
        importlib.import_module(module)
    return getattr(importlib.import_module(_PUBLIC[name]), name)


__all__ = sorted(_PUBLIC)
