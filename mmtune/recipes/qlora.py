"""QLoRA (Dettmers et al., 2023): the LLM's weights frozen in 4-bit NF4 with double
quantisation, LoRA adapters on every linear layer trained in higher precision.

It is the SFT recipe with the quantised base enforced; any recipe that trains the LLM gets
the same by setting `model.llm.quantize: nf4` and `model.llm.lora.r > 0`.
"""
from __future__ import annotations

from pathlib import Path

from ..config import RecipeConfig
from ..registry import RECIPES
from .common import multimodal_recipe
from .stages import run_stages
from .sft import check_config as check_text_only


def main(cfg: RecipeConfig, run_dir: str | Path, stages: list[str] | None = None, resume: bool = True,
         evaluate: bool = True, stop_after: int | None = None, fresh: bool = False) -> dict:
    if cfg.model.llm.quantize != "nf4" or cfg.model.llm.lora.r <= 0:
        raise ValueError("qlora needs model.llm.quantize: nf4 and model.llm.lora.r > 0 "
                         f"(got quantize={cfg.model.llm.quantize!r}, lora.r={cfg.model.llm.lora.r})")
    if cfg.model.llm.path is None:
        raise ValueError("qlora quantises a saved base: set model.llm.path to a HF model directory "
                         "(a full-finetune sft run's <run>/model/llm, or `mmtune export RUN --merge` "
                         "output for a LoRA run)")
    check_text_only(cfg)
    return run_stages("qlora", cfg, run_dir, stages, resume, evaluate, stop_after, fresh)


RECIPES.register("qlora", multimodal_recipe("qlora", main))
