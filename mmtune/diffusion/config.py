"""Typed config of the InstructPix2Pix recipe: dataclass defaults -> YAML -> overrides.

The model here lives in diffusers (UNet, VAE, CLIP text encoder, scheduler), not in
MultimodalLM, so it has its own dataclasses; loading goes through mmtune.config's strict
helpers, so an unknown key is an error naming the key and the file, as everywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, load_yaml, merge, parse_overrides


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
class EditTrainConfig:
    data: str = "train.jsonl"  # JSONL of triplets, or a local HF `datasets` folder (under data_dir)
    resolution: int = 256
    random_flip: bool = False  # flip input and target together (the paper's augmentation)
    lr: float = 1e-4
    max_steps: int = 10_000
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0  # cosine decays to lr * min_lr_ratio; 1.0 = constant
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    # The paper drops the text only, the image only, and both, each for this share of
    # samples, so one model gives the three predictions classifier-free guidance needs.
    conditioning_dropout: float = 0.05
    ema_decay: float = 0.0  # > 0 keeps an EMA of the UNet weights and saves it as the model
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (as accelerate names them)
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    threads: int = 0  # torch threads on CPU; 0 keeps torch's default
    num_workers: int = 0
    on_bad_sample: str = "error"  # error | skip (bad JSONL lines; undecodable images always error)
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb | mlflow (accelerate trackers)


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


@dataclass
class EditRecipeConfig:
    model: EditModelConfig = field(default_factory=EditModelConfig)
    data_dir: str | None = None
    train: EditTrainConfig = field(default_factory=EditTrainConfig)
    eval: EditEvalConfig = field(default_factory=EditEvalConfig)


def load_edit_config(name_or_path: str, overrides: list[str] = ()) -> EditRecipeConfig:
    """`tiny` -> the packaged configs/instruct_pix2pix/tiny.yaml; anything else is a path."""
    from ..recipes.common import config_path

    path = config_path("instruct_pix2pix", name_or_path)
    data = merge(load_yaml(path), parse_overrides(list(overrides)))
    return from_dict(EditRecipeConfig, data, f"{path}: ")


def edit_config_from_run(run_dir: str | Path) -> EditRecipeConfig:
    path = Path(run_dir) / "config.yaml"
    return from_dict(EditRecipeConfig, load_yaml(path), f"{path}: ")
