"""Reading media files, with errors that name the file and the record.

Images become 8-bit RGB without losing what they show: Pillow's own `convert("RGB")` is right
for 1-bit, palette, LA, RGBA, CMYK, YCbCr and LAB, but clips 16-bit and 32-bit integer
pixels at 255 (a 16-bit PNG turns white), so those are scaled here. Images above Pillow's
decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) are refused before they are decoded.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MediaError

__all__ = ["MediaError", "load_image", "media_file", "to_rgb"]

# Integer modes Pillow clips when converting: each one's full scale.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def media_file(path: str | os.PathLike, where: str, kind: str) -> str:
    """`path` as a string, after the checks every medium shares (exists, is a file, not empty)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"{where}: {kind} {path} does not exist", "missing_file")
    if os.path.isdir(path):
        raise MediaError(f"{where}: {kind} {path} is a directory, not a file", "is_directory")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{where}: {kind} {path} is empty (0 bytes)", "empty_file")
    return path


def load_image(path: str, where: str) -> Image.Image:
    path = media_file(path, where, "image")
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice it Pillow only warns, then decodes anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not deep in the collator
                return to_rgb(im, f"{where}: image {path}")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError(f"{where}: image {path} is larger than the decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS)", "too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, MediaError):
            raise
        raise MediaError(f"{where}: image {path} cannot be decoded ({str(e).splitlines()[0]})") from None


def to_rgb(im: Image.Image, what: str) -> Image.Image:
    """8-bit RGB of any Pillow mode; `what` ("file:line: image path") names it in errors."""
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        return Image.fromarray(_gray_to_uint8(np.asarray(im), im.mode, what), "L").convert("RGB")
    return im.convert("RGB")


def _gray_to_uint8(a: np.ndarray, mode: str, what: str) -> np.ndarray:
    """16-bit and 32-bit integer pixels are taken as 16-bit samples (PNG and TIFF 16-bit
    grey open as "I;16" or "I"), scaled by 255/65535; float pixels ("F") are on Pillow's own
    0..255 scale. Values outside the scale are refused, not clipped."""
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise MediaError(f"{what} has NaN or infinite pixels", "non_finite")
    full = 255.0 if mode == "F" else 65535.0
    if a.size and (a.min() < 0 or a.max() > full):
        raise MediaError(f"{what}: mode {mode} pixels span {a.min():g}..{a.max():g}, outside 0..{full:g}",
                         "unsupported_values")
    return np.rint(a * (255.0 / full)).astype(np.uint8)
