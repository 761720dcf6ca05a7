"""What every family's importer and exporter shares: configs, the LLM, the image processor.

Importers take the parts out of transformers' own model classes (so their checkpoint-key
conversions, shards and dtypes are transformers' business) and hand them to `MultimodalLM`
by composition; exporters do the reverse.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from ..config import EncoderConfig, ModelConfig, TokenizerConfig


class ExportRefused(ValueError):
    """The model has a part no transformers class expresses; raised before anything is written."""


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no config.json (not a transformers or LLaVA checkpoint folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None


def arch_of(config: PretrainedConfig, keep_type: bool) -> dict:
    """A config as the `arch` mapping mmtune's builders take. LLM builders need `model_type`
    (AutoConfig.for_model); vision-tower builders know their class and take none."""
    arch = config.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        arch.pop(key, None)
    if not keep_type:
        arch.pop("model_type", None)
    return arch


def causal_lm(text_config: PretrainedConfig, decoder: torch.nn.Module, head: torch.nn.Module) -> PreTrainedModel:
    """A `*ForCausalLM` around an already-loaded decoder and lm_head (a multimodal model's
    `language_model` + `lm_head`): built on the meta device, then the real modules put in, so
    no second copy of the weights is ever allocated."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config)
    setattr(llm, llm.base_model_prefix, decoder)
    llm.set_output_embeddings(head)
    left = [n for n, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{type(llm).__name__}: parts not taken from the checkpoint: {left[:5]}")
    return llm


def decoder_and_head(llm: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    return llm.base_model, llm.get_output_embeddings()


# Image-processor fields every transformers image processor shares. Copied by name: an
# importer turns a LLaVA / BLIP processor into the tower's plain one (padding is mmtune's own
# `image_pad` step), an exporter the other way.
PROCESSOR_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def processor_fields(processor) -> dict:
    d = processor.to_dict()
    return {k: d[k] for k in PROCESSOR_FIELDS if d.get(k) is not None}


def imported_config(llm: PreTrainedModel, dtype: str, settings: ModelConfig | None,
                    encoders: dict[str, EncoderConfig], projectors: dict, tokenizer_path: str) -> ModelConfig:
    """The ModelConfig of an imported model. From `settings` (the recipe's `model:` section)
    only how to train applies: llm.lora / dtype / quantize, encoders.<m>.trainable and
    tokenizer.chat_template; the architecture is the checkpoint's."""
    s = settings or ModelConfig()
    llm_cfg = dataclasses.replace(s.llm, path=None, arch=arch_of(llm.config, keep_type=True), dtype=dtype)
    for m, enc in encoders.items():
        if m in s.encoders:
            encoders[m] = dataclasses.replace(enc, trainable=s.encoders[m].trainable)
    tok = TokenizerConfig(type="auto", path=tokenizer_path, chat_template=s.tokenizer.chat_template)
    return ModelConfig(llm=llm_cfg, encoders=encoders, projectors=projectors, tokenizer=tok)


def llm_dtype(settings: ModelConfig | None) -> str:
    return (settings or ModelConfig()).llm.dtype


def no_quantize(settings: ModelConfig | None, folder) -> None:
    s = settings or ModelConfig()
    if s.llm.quantize:
        raise ValueError(
            f"model.llm.quantize with model.init_from={folder}: 4-bit weights are quantised while an LLM "
            "checkpoint loads, and this folder holds a whole multimodal model. Convert it once with "
            f"`mmtune import {folder} --out DIR` (the LLM then has a checkpoint of its own) and set "
            "model.init_from=DIR.")


def config_view(src: Path, into: Path, edit) -> Path:
    """A folder that reads as the saved MultimodalLM `src` but with its mmtune_config.json changed
    by `edit(dict)`: links to every other entry of `src` (nothing is copied), in `into`/model."""
    view = into / "model"
    view.mkdir()
    for entry in src.iterdir():
        if entry.name != "mmtune_config.json":
            (view / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    cfg = json.loads((src / "mmtune_config.json").read_text())
    edit(cfg)
    (view / "mmtune_config.json").write_text(json.dumps(cfg, indent=2))
    return view


__all__ = ["config_view", "ExportRefused", "arch_of", "causal_lm", "decoder_and_head", "imported_config",
           "processor_fields", "read_config"]
