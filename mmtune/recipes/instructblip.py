"""InstructBLIP: instruction-aware visual instruction tuning through a Q-Former.

The vision encoder and the LLM stay frozen. The Q-Former (queries, layers, language
projection) is trained on single instructions; each instruction reaches both the Q-Former
(through its own tokenizer, so the visual tokens it extracts depend on the question) and
the LLM (after the visual tokens). `model.llm.lora.r > 0` with `llm` in a stage's `train`
adds LoRA adapters on the LLM, the option the paper's successors use.

Stages are data (configs/instructblip/*.yaml); the shared driver runs them, so the same file
runs on one process or under `accelerate launch` / `torchrun`.
"""
from __future__ import annotations


from ..config import RecipeConfig
from ..registry import RECIPES
from .stages import multimodal_recipe


def check_config(cfg: RecipeConfig) -> None:
    """InstructBLIP without an instruction-aware projector is BLIP-2 instruction tuning:
    allowed (it is the paper's ablation), but never by accident."""
    for modality, proj in cfg.model.projectors.items():
        aware = proj.options.get("instruction_aware", True)
        if aware and proj.instruction_tokenizer is None:
            raise ValueError(f"model.projectors.{modality}: an instruction-aware Q-Former needs "
                             "instruction_tokenizer (the Q-Former's own tokenizer)")
    for name, stage in cfg.stages.items():
        if "encoder" in stage.train:
            raise ValueError(f"stages.{name}.train: InstructBLIP keeps the vision encoder frozen")


main = multimodal_recipe("instructblip", check_config)
RECIPES.register("instructblip", main)
