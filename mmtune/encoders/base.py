"""What every image encoder provides, and the preprocessing that travels with it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

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


class ImageEncoder(Protocol):
    """`forward(pixels [B, 3, H, W]) -> features [B, N, D]`."""

    modality: str
    hidden_size: int
    spec: ImageSpec

    def num_tokens(self) -> int: ...

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor: ...

    def load(self, path: str, where: str) -> Image.Image: ...

    def blank(self) -> Image.Image: ...

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class ImageMedia:
    """`load` / `blank` of an image encoder: the interface every modality's encoder offers
    (video and audio encoders return frames / waveforms), so the collator needs no table."""

    spec: ImageSpec

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
