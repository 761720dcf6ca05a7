"""Any open_clip architecture's vision tower as an mmtune image encoder.

`arch: {model_name: ViT-L-14-336}`; `path` is an open_clip pretrained tag, a checkpoint
file, or a directory this encoder saved; no path means random init. Only the vision tower
is kept: the text tower is dropped right after construction.
"""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import EncoderConfig
from ..registry import ENCODERS
from .base import ImageMedia, ImageSpec, make_preprocess

_CONFIG_DIR = Path(__file__).parent / "open_clip_configs"
_WEIGHTS = "open_clip_visual.safetensors"
open_clip.add_model_config(_CONFIG_DIR)  # mmtune's tiny architectures join open_clip's list


class OpenClipVisionEncoder(ImageMedia, nn.Module):
    modality = "image"

    def __init__(self, visual: nn.Module, model_name: str, select_layer: int, drop_cls: bool,
                 pad: bool) -> None:
        super().__init__()
        self.visual = visual
        self.model_name = model_name
        self.select_layer = select_layer
        self.drop_cls = drop_cls
        self.hidden_size = visual.transformer.width
        self.num_layers = visual.transformer.layers
        if not (-self.num_layers <= select_layer <= -1 or 1 <= select_layer <= self.num_layers):
            raise ValueError(f"select_layer {select_layer} is outside the tower's blocks: use -1..-{self.num_layers} "
                             f"or 1..{self.num_layers} (counted like HF hidden_states)")
        cfg = visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.spec = ImageSpec(size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), pad_to_square=pad)
        self._transform = open_clip.image_transform(size, is_train=False, mean=cfg["mean"], std=cfg["std"])
        self.preprocess = make_preprocess(self.spec, self._transform)

    def num_tokens(self) -> int:
        grid = self.visual.grid_size
        return grid[0] * grid[1] + (0 if self.drop_cls else 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # select_layer counts like HF hidden_states: -1 is the last block's output.
        index = self.select_layer % self.num_layers if self.select_layer < 0 else self.select_layer - 1
        out = self.visual.forward_intermediates(
            pixels, indices=[index], stop_early=True, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=not self.drop_cls)
        h = out["image_intermediates"][0]  # [B, N, D] patch tokens
        if not self.drop_cls:
            h = torch.cat([out["image_intermediates_prefix"][0], h], dim=1)
        return h

    def save_pretrained(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.visual.state_dict().items()}, out_dir / _WEIGHTS)
        (out_dir / "open_clip_model.json").write_text(json.dumps({"model_name": self.model_name}))


@ENCODERS.register("open_clip")
def build_open_clip(cfg: EncoderConfig) -> OpenClipVisionEncoder:
    name = cfg.arch.get("model_name")
    if not name:
        raise ValueError("open_clip encoder needs arch.model_name, e.g. ViT-L-14-336")
    own_dir = cfg.path is not None and (Path(cfg.path) / _WEIGHTS).exists()
    pretrained = None if (cfg.path is None or own_dir) else cfg.path
    clip = open_clip.create_model(name, pretrained=pretrained)
    visual = clip.visual
    if own_dir:
        visual.load_state_dict(load_file(Path(cfg.path) / _WEIGHTS))
    del clip  # drops the text tower
    if cfg.drop_cls and getattr(visual, "class_embedding", None) is None:
        raise ValueError(f"open_clip {name} has no CLS token; set drop_cls: false")
    return OpenClipVisionEncoder(visual, name, cfg.select_layer, cfg.drop_cls, cfg.image_pad)
