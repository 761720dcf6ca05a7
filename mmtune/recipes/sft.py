"""Text-only supervised finetuning of a causal LM: full, LoRA, or (with `model.llm.quantize:
nf4`) QLoRA. Loss on assistant turns only, multi-turn included; packing by `train.packing`.

The model is a MultimodalLM without encoders, so data, templates, labels, the loop,
checkpoints and evaluation are the ones every other recipe uses.
"""
from __future__ import annotations


from ..config import RecipeConfig
from ..registry import RECIPES
from .stages import multimodal_recipe


def check_config(cfg: RecipeConfig) -> None:
    if cfg.model.encoders:
        raise ValueError("the sft recipe trains text-only models: model.encoders must be empty "
                         "(use the llava recipe for images)")


main = multimodal_recipe("sft", check_config)
RECIPES.register("sft", main)
