"""What image encoders share: the preprocessing that travels with them, and `load` / `blank`.

The interface every encoder keeps (any modality) is `mmtune.parts.Encoder`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from ..data.media.image import load_image, to_rgb


@dataclass(frozen=True)
class ImageSpec:
    """How raw images become the encoder's input. Saved with the model."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_to_square: bool = True  # LLaVA-1.5 "pad": keep the whole image, fill with the mean colour


class ImageMedia:
    """`load` / `blank` / `num_frames` of an image encoder (part of `mmtune.parts.Encoder`;
    video and audio encoders return frames / waveforms instead)."""

    spec: ImageSpec
    num_frames = 1  # one image is one frame (mmtune.parts.Encoder)

    def load(self, path: str, where: str) -> Image.Image:
        return load_image(path, where)

    def blank(self) -> Image.Image:
        return blank_image(self.spec)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new("RGB", (side, side), fill)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def make_preprocess(spec: ImageSpec, transform: Callable[[Image.Image], torch.Tensor]):
    """Wrap a library transform (HF image processor, open_clip transform) with LLaVA's padding."""
    fill = tuple(int(round(255 * m)) for m in spec.mean)

    def preprocess(images: list[Image.Image]) -> torch.Tensor:
        images = [to_rgb(im, "image") for im in images]  # 16-bit etc. scaled, not clipped
        if spec.pad_to_square:
            images = [pad_to_square(im, fill) for im in images]
        return torch.stack([transform(im) for im in images])

    return preprocess


def blank_image(spec: ImageSpec) -> Image.Image:
    """A flat image of the normalisation mean: zeros after preprocessing, no content at all."""
    fill = tuple(int(round(255 * m)) for m in spec.mean)
    return Image.new("RGB", (spec.size, spec.size), fill)
