"""An identity "VAE" so a pixel-space model runs in diffusers' latent-diffusion pipelines.

The tiny CPU config diffuses pixels directly (a tiny model learns edits there in minutes; see
shared/CALIBRATION.md). Diffusers' Stable Diffusion pipelines always encode through
`pipeline.vae` and decode through it again, so this module stands in for AutoencoderKL with
the same interface and no weights: encode returns the image as the latent, decode returns
the latent. It saves and loads like any diffusers model, and `model_index.json` names this
module, so `StableDiffusionInstructPix2PixPipeline.from_pretrained` imports it from mmtune.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


class _Exact:
    """A 'distribution' concentrated on one value: mode() and sample() are that value."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def mode(self) -> torch.Tensor:
        return self.value

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.value


@dataclass
class PixelEncoderOutput(BaseOutput):
    latent_dist: _Exact


@dataclass
class PixelDecoderOutput(BaseOutput):
    sample: torch.Tensor


class PixelSpaceVAE(ModelMixin, ConfigMixin):
    """encode(x) = x, decode(z) = z. `block_out_channels` has one entry so pipelines compute a
    latent downscale of 2**0 = 1; `scaling_factor` 1 leaves pixel values in [-1, 1]."""

    @register_to_config
    def __init__(self, latent_channels: int = 3, block_out_channels: tuple[int, ...] = (3,),
                 scaling_factor: float = 1.0) -> None:
        super().__init__()
        # A buffer gives the module a dtype and device that pipelines can read and move, and
        # a weights file, which diffusers' loader requires of every model folder.
        self.register_buffer("anchor", torch.zeros(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        dist = _Exact(x.to(self.anchor.dtype))
        return PixelEncoderOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        return PixelDecoderOutput(sample=z) if return_dict else (z,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
