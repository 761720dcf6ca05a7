"""LLaVA: feature-alignment pretraining, then visual instruction tuning.

Stage `pretrain`: encoder and LLM frozen; the projector learns to map image features into
the LLM's embedding space from image-caption pairs (LLaVA's "plain" format).
Stage `finetune`: encoder frozen; projector and LLM (full, or LoRA adapters) trained on
multi-turn visual conversations with loss on the assistant turns only.

The same file runs on one process or under `accelerate launch` / `torchrun`.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RecipeConfig
from ..registry import RECIPES
from .common import multimodal_recipe
from .stages import run_stages


def main(cfg: RecipeConfig, run_dir: str | Path, stages: list[str] | None = None, resume: bool = True,
         evaluate: bool = True, stop_after: int | None = None, fresh: bool = False) -> dict:
    """Both stages are data (see configs/llava/*.yaml); the shared driver runs them."""
    return run_stages("llava", cfg, run_dir, stages, resume, evaluate, stop_after, fresh)


RECIPES.register("llava", multimodal_recipe("llava", main))
