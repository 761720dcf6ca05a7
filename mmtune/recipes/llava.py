"""LLaVA: feature-alignment pretraining, then visual instruction tuning.

Stage `pretrain`: encoder and LLM frozen; the projector learns to map image features into
the LLM's embedding space from image-caption pairs (LLaVA's "plain" format).
Stage `finetune`: encoder frozen; projector and LLM (full, or LoRA adapters) trained on
multi-turn visual conversations with loss on the assistant turns only.

The same file runs on one process or under `accelerate launch` / `torchrun`.
"""
from __future__ import annotations


from ..registry import RECIPES
from .stages import multimodal_recipe


main = multimodal_recipe("llava", None)
RECIPES.register("llava", main)
