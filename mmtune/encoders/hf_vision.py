"""Transformers' CLIP and SigLIP vision towers as mmtune image encoders."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (Blip2VisionConfig, Blip2VisionModel, BlipImageProcessor, CLIPImageProcessor,
                          CLIPVisionConfig, CLIPVisionModel, SiglipImageProcessor, SiglipVisionConfig,
                          SiglipVisionModel)

from ..config import EncoderConfig
from ..registry import ENCODERS
from .base import ImageMedia, ImageSpec, make_preprocess

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFVisionEncoder(ImageMedia, nn.Module):
    """Hidden states of layer `select_layer` of a HF vision tower, optionally without CLS."""

    modality = "image"

    def __init__(self, tower: nn.Module, spec: ImageSpec, processor, select_layer: int,
                 drop_cls: bool, has_cls: bool, output_norm: bool = False) -> None:
        super().__init__()
        if drop_cls and not has_cls:
            raise ValueError(f"{type(tower).__name__} has no CLS token; set drop_cls: false")
        self.tower = tower
        self.spec = spec
        self.processor = processor
        self.select_layer = select_layer
        self.drop_cls = drop_cls
        self.has_cls = has_cls
        # BLIP-2 reads the tower's output after its final LayerNorm (`last_hidden_state`);
        # LLaVA reads a raw hidden state. Set by the builder, from the config, not from names.
        self.output_norm = output_norm
        self.hidden_size = tower.config.hidden_size
        self.preprocess = make_preprocess(spec, self._transform)

    def _transform(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def num_tokens(self) -> int:
        cfg = self.tower.config
        n = (cfg.image_size // cfg.patch_size) ** 2
        return n + (1 if self.has_cls and not self.drop_cls else 0)

    def save_pretrained(self, out_dir: Path) -> None:
        """Transformers' own layout, so the tower also loads on its own."""
        self.tower.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values=pixels.to(self.tower.dtype), output_hidden_states=not self.output_norm)
        h = out.last_hidden_state if self.output_norm else out.hidden_states[self.select_layer]  # [B, 1 + N, D] for CLIP, [B, N, D] SigLIP
        return h[:, 1:] if self.drop_cls else h


def _spec_from_processor(processor, size: int, pad: bool) -> ImageSpec:
    return ImageSpec(size=size, mean=tuple(processor.image_mean), std=tuple(processor.image_std),
                     pad_to_square=pad)


def _load_or_build(cfg: EncoderConfig, model_cls, config_cls):
    if cfg.path:
        tower = model_cls.from_pretrained(cfg.path)
    else:
        tower = model_cls(config_cls(**cfg.arch))
    return tower


def _has_preprocessor(path: str | None) -> bool:
    return bool(path) and (Path(path) / "preprocessor_config.json").exists()


def _build(cfg: EncoderConfig, model_cls, config_cls, processor_cls, defaults, has_cls: bool,
           output_norm: bool = False) -> HFVisionEncoder:
    """The tower from `cfg.path` (or random from `cfg.arch`) and its image processor: the saved
    one when the checkpoint has it, else `defaults(size)` -> processor kwargs."""
    tower = _load_or_build(cfg, model_cls, config_cls)
    size = tower.config.image_size
    if _has_preprocessor(cfg.path):
        processor = processor_cls.from_pretrained(cfg.path)
    else:
        processor = processor_cls(**defaults(size))
    spec = _spec_from_processor(processor, size, cfg.image_pad)
    return HFVisionEncoder(tower, spec, processor, cfg.select_layer, cfg.drop_cls, has_cls=has_cls,
                           output_norm=output_norm)


@ENCODERS.register("hf_clip")
def build_hf_clip(cfg: EncoderConfig) -> HFVisionEncoder:
    return _build(cfg, CLIPVisionModel, CLIPVisionConfig, CLIPImageProcessor, lambda size: dict(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)), has_cls=True)


@ENCODERS.register("hf_siglip")
def build_hf_siglip(cfg: EncoderConfig) -> HFVisionEncoder:
    return _build(cfg, SiglipVisionModel, SiglipVisionConfig, SiglipImageProcessor, lambda size: dict(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3), has_cls=False)


@ENCODERS.register("hf_blip_vision")
def build_hf_blip_vision(cfg: EncoderConfig) -> HFVisionEncoder:
    """BLIP-2 / InstructBLIP's EVA ViT-g (transformers' `Blip2VisionModel`; InstructBLIP's
    vision model has the same weights layout). `select_layer: -1` gives the tower's output
    after its final LayerNorm, which is what the Q-Former reads in BLIP-2; other layers give
    raw hidden states. Images are resized to a square (no padding), as BLIP does."""
    return _build(cfg, Blip2VisionModel, Blip2VisionConfig, BlipImageProcessor, lambda size: dict(
        size={"height": size, "width": size}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)),
        has_cls=True, output_norm=cfg.select_layer == -1)
