"""Typed config of the InstructPix2Pix recipe: dataclass defaults -> YAML -> overrides.

The model here lives in diffusers (UNet, VAE, CLIP text encoder, scheduler), not in
MultimodalLM, so it has its own dataclasses; loading goes through mmtune.config's strict
helpers, so an unknown key is an error naming the key and the file, as everywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (ConfigError, StageConfig, TrainConfig, apply_shorthands, check_range, from_dict,
                      load_yaml)


@dataclass
class EditModelConfig:
    # A local diffusers text-to-image checkpoint (unet/, vae/, text_encoder/, tokenizer/,
    # scheduler/). Its UNet's first convolution is widened to take the input image too, the
    # new input channels zero-filled (the paper's init). None: every part from the dicts below.
    pretrained: str | None = None
    unet: dict[str, Any] = field(default_factory=dict)  # UNet2DConditionModel kwargs
    # AutoencoderKL kwargs; None trains in pixel space (an identity "VAE", 3 channels).
    vae: dict[str, Any] | None = None
    text_encoder: dict[str, Any] = field(default_factory=dict)  # CLIPTextConfig kwargs
    # "synthetic": a word-level tokenizer over the synthetic edit instructions;
    # anything else: a local tokenizer directory.
    tokenizer: str = "synthetic"
    max_text_length: int = 77  # tokens per instruction (the tokenizer's model_max_length)
    scheduler: dict[str, Any] = field(default_factory=dict)  # DDPMScheduler kwargs (training)


@dataclass
class EditConfig:
    """What InstructPix2Pix adds to the shared stage and train settings."""

    resolution: int = 256
    random_flip: bool = False  # flip input and target together (the paper's augmentation)
    # The paper drops the text only, the image only, and both, each for this share of
    # samples, so one model gives the three predictions classifier-free guidance needs.
    conditioning_dropout: float = 0.05
    ema_decay: float = 0.0  # > 0 keeps an EMA of the UNet weights and saves it as the model

    def __post_init__(self) -> None:
        check_range(self, 1, "resolution")
        check_range(self, 0, "conditioning_dropout", high=1 / 3)
        check_range(self, 0, "ema_decay", high=1)


@dataclass
class EditEvalConfig:
    data: str = "test.jsonl"
    num_inference_steps: int = 20
    guidance_scale: float = 7.5  # text guidance (pipeline's `guidance_scale`)
    image_guidance_scale: float = 1.5
    batch_size: int = 50
    limit: int = 0  # 0: every held-out triplet
    grid_rows: int = 8  # rows of input / target / trained / untrained in eval_grid.png
    seed: int = 0


STAGE = "train"  # the recipe's one stage: it trains the UNet


def _one_stage() -> dict[str, StageConfig]:
    return {STAGE: StageConfig(train=["unet"], lr=1e-4, max_steps=10_000, warmup_steps=0, min_lr_ratio=1.0,
                               batch_size=4)}


@dataclass
class EditRecipeConfig:
    model: EditModelConfig = field(default_factory=EditModelConfig)
    data_dir: str | None = None
    # The shared stage settings (data file or `datasets` folder under data_dir, lr, steps,
    # batch, schedule) and train settings (seed, precision, logging, checkpoints, bad data).
    stages: dict[str, StageConfig] = field(default_factory=_one_stage)
    train: TrainConfig = field(default_factory=TrainConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    eval: EditEvalConfig = field(default_factory=EditEvalConfig)
    max_steps: int | None = None  # shorthand: the stage's max_steps
    epochs: float | None = None

    def __post_init__(self) -> None:
        if list(self.stages) != [STAGE] or self.stages[STAGE].train != ["unet"]:
            raise ConfigError(f"stages: instruct_pix2pix has one stage, {STAGE!r}, with train: [unet]; "
                              f"got {({k: v.train for k, v in self.stages.items()})}")
        apply_shorthands(self)


def edit_config_from_run(run_dir: str | Path) -> EditRecipeConfig:
    path = Path(run_dir) / "config.yaml"
    return from_dict(EditRecipeConfig, load_yaml(path), f"{path}: ")
