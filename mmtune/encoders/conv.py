"""A small convolutional image encoder for tiny CPU recipes (e.g. the frames of tiny Video-LLaMA).

    pixels [B, 3, S, S] -> (Conv 3x3 stride 2 -> GELU) x len(channels) -> [B, C, S/2^k, S/2^k]
                        -> tokens [B, (S/2^k)^2, C] -> LayerNorm + learnable spatial position embedding

On 32 px frames three layers give a 4 x 4 grid: 16 tokens per frame. In the measurements
behind tiny Video-LLaMA (shared/CALIBRATION.md, "Video") a conv frame encoder of this shape
made motion direction learnable in under two CPU-minutes; a 2-layer ViT did not in ten.

`arch: {image_size: 32, channels: [32, 64, 64]}`; `path`: a directory this encoder saved.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision import transforms

from ..config import EncoderConfig, from_dict
from ..registry import ENCODERS
from .base import ImageMedia, ImageSpec, make_preprocess

_ARCH = "conv_encoder.json"
_WEIGHTS = "conv_encoder.safetensors"


@dataclass
class ConvArch:
    image_size: int = 32
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


class ConvImageEncoder(ImageMedia, nn.Module):
    """`forward(pixels [B, 3, S, S]) -> [B, N, C]`, N = (S / 2^len(channels))^2."""

    modality = "image"

    def __init__(self, arch: ConvArch, pad: bool) -> None:
        super().__init__()
        grid = arch.image_size >> len(arch.channels)
        if grid < 1 or grid << len(arch.channels) != arch.image_size:
            raise ValueError(f"image_size {arch.image_size} must be a multiple of 2^{len(arch.channels)} "
                             "(one halving per conv layer)")
        self.arch = arch
        layers: list[nn.Module] = []
        for c_in, c_out in zip([3, *arch.channels[:-1]], arch.channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        # A random conv stack shrinks its input ~100x (std 0.01 after three layers): without a
        # norm the position embeddings would drown the content of a frozen random tower.
        self.norm = nn.LayerNorm(arch.channels[-1])
        self.hidden_size = arch.channels[-1]
        self.grid = grid
        # N(0, 1) like nn.Embedding: the grid cell stays readable even while the tower is frozen.
        self.position = nn.Parameter(torch.randn(grid * grid, self.hidden_size))
        self.spec = ImageSpec(size=arch.image_size, mean=tuple(arch.mean), std=tuple(arch.std), pad_to_square=pad)
        transform = transforms.Compose([
            transforms.Resize((arch.image_size, arch.image_size)), transforms.ToTensor(),
            transforms.Normalize(arch.mean, arch.std)])
        self.preprocess = make_preprocess(self.spec, transform)

    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.convs(pixels.to(self.position.dtype))  # [B, C, g, g]
        return self.norm(x.flatten(2).transpose(1, 2)) + self.position  # [B, g*g, C], rows then columns

    def save_pretrained(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, out_dir / _WEIGHTS)
        (out_dir / _ARCH).write_text(json.dumps(asdict(self.arch), indent=2))


@ENCODERS.register("conv")
def build_conv(cfg: EncoderConfig) -> ConvImageEncoder:
    if cfg.path is not None:
        root = Path(cfg.path)
        if not (root / _ARCH).exists():
            raise FileNotFoundError(f"conv encoder: {root} holds no {_ARCH} (a directory this encoder saved)")
        arch = from_dict(ConvArch, json.loads((root / _ARCH).read_text()), f"{root / _ARCH}: ")
        encoder = ConvImageEncoder(arch, cfg.image_pad)
        encoder.load_state_dict(load_file(root / _WEIGHTS))
        return encoder
    return ConvImageEncoder(from_dict(ConvArch, cfg.arch, "encoder conv arch: "), cfg.image_pad)
