"""QLoRA (Dettmers et al., 2023): the LLM's weights frozen in 4-bit NF4 with double
quantisation, LoRA adapters on every linear layer trained in higher precision.

It is the SFT recipe with the quantised base enforced; any recipe that trains the LLM gets
the same by setting `model.llm.quantize: nf4` and `model.llm.lora.r > 0`.
"""
from __future__ import annotations


from ..config import RecipeConfig
from ..registry import RECIPES
from .stages import multimodal_recipe
from .sft import check_config as check_text_only


def check_config(cfg: RecipeConfig) -> None:
    if cfg.model.llm.quantize != "nf4" or cfg.model.llm.lora.r <= 0:
        raise ValueError("qlora needs model.llm.quantize: nf4 and model.llm.lora.r > 0 "
                         f"(got quantize={cfg.model.llm.quantize!r}, lora.r={cfg.model.llm.lora.r})")
    if cfg.model.llm.path is None:
        raise ValueError("qlora quantises a saved base: set model.llm.path to a HF model directory "
                         "(a full-finetune sft run's <run>/model/llm, or `mmtune export RUN --merge` "
                         "output for a LoRA run)")
    check_text_only(cfg)


main = multimodal_recipe("qlora", check_config)
RECIPES.register("qlora", main)
