"""Media encoders. Importing this package registers every builder in `ENCODERS`."""
from . import hf_vision, open_clip_vision  # noqa: F401  (registration)
from . import conv, video_frames, whisper_audio  # noqa: F401  (registration)
from .base import ImageSpec, blank_image

__all__ = ["ImageSpec", "blank_image"]
