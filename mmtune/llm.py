"""Load the language model: from a local HF checkpoint or a config, optionally in 4-bit, with LoRA."""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .config import LLMConfig, LoraConfig


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(dtypes)}")
    return dtypes[name]


def _quantization(cfg: LLMConfig):
    if cfg.quantize is None:
        return None
    if cfg.quantize != "nf4":
        raise ValueError(f"model.llm.quantize: {cfg.quantize!r} is not supported (use 'nf4')")
    from transformers import BitsAndBytesConfig  # needs the `quant` extra (bitsandbytes)

    # QLoRA: NF4 weights, double-quantised constants, bf16 compute.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)


def load_llm(cfg: LLMConfig) -> PreTrainedModel:
    dtype = torch_dtype(cfg.dtype)
    if cfg.path is not None:
        return AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype,
                                                    quantization_config=_quantization(cfg))
    if not cfg.arch.get("model_type"):
        raise ValueError("model.llm needs a path, or arch with a model_type (e.g. llama)")
    arch = dict(cfg.arch)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def add_lora(llm: PreTrainedModel, cfg: LoraConfig):
    """Wrap the LLM with peft LoRA adapters; the base weights are frozen by peft."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(llm, peft_cfg)
