"""Projectors map encoder features to the LLM's width. Importing registers the builders."""
from . import mlp  # noqa: F401  (registration)
from . import qformer  # noqa: F401  (registration)
from . import video_qformer  # noqa: F401  (registration)
from .mlp import MLPProjector
from .qformer import QFormerProjector, load_hf_qformer
from .video_qformer import AudioQFormerProjector, VideoQFormerProjector

__all__ = ["AudioQFormerProjector", "MLPProjector", "QFormerProjector",
           "VideoQFormerProjector", "load_hf_qformer"]
