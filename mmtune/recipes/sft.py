"""Text-only supervised finetuning of a causal LM: full, LoRA, or (with `model.llm.quantize:
nf4`) QLoRA. Loss on assistant turns only, multi-turn included; packing by `train.packing`.

The model is a MultimodalLM without encoders, so data, templates, labels, the loop,
checkpoints and evaluation are the ones every other recipe uses.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RecipeConfig
from ..registry import RECIPES
from .common import multimodal_recipe
from .stages import run_stages


def check_config(cfg: RecipeConfig) -> None:
    if cfg.model.encoders:
        raise ValueError("the sft recipe trains text-only models: model.encoders must be empty "
                         "(use the llava recipe for images)")


def main(cfg: RecipeConfig, run_dir: str | Path, stages: list[str] | None = None, resume: bool = True,
         evaluate: bool = True, stop_after: int | None = None, fresh: bool = False) -> dict:
    check_config(cfg)
    return run_stages("sft", cfg, run_dir, stages, resume, evaluate, stop_after, fresh)


RECIPES.register("sft", multimodal_recipe("sft", main))
