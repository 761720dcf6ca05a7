"""mmtune: build a multimodal model from parts and train it with the published recipes."""
from . import encoders, projectors  # noqa: F401  (fill the registries)
from .config import ModelConfig, RecipeConfig
from .model import Batch, MultimodalLM
from .registry import ENCODERS, PRESETS, PROJECTORS, RECIPES
from . import zoo  # noqa: F401,E402  (fills PRESETS)

__version__ = "0.1.0"
__all__ = ["Batch", "ENCODERS", "ModelConfig", "MultimodalLM", "PRESETS", "PROJECTORS", "RECIPES",
           "RecipeConfig"]
