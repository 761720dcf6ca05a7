"""Released checkpoints in, standard checkpoints out.

Import (`from_hf`, `MultimodalLM.from_hf`, `model.init_from`), by the folder's `model_type`:
  llava         transformers LlavaForConditionalGeneration (llava-hf; CLIP or SigLIP tower)
  instructblip  transformers InstructBlipForConditionalGeneration
  blip-2        transformers Blip2ForConditionalGeneration (decoder-only LLMs)
  llava_llama   the original LLaVA repo (LlavaLlamaForCausalLM, model.mm_projector.*,
                mm_vision_tower naming a local CLIP folder)
plus a saved mmtune model folder, and a stage-1 projector file (`mm_projector.bin` /
`.safetensors`, LLaVA's --pretrain_mm_mlp_adapter) loaded into a model built from config.

Export (`export_hf`): LlavaForConditionalGeneration + LlavaProcessor, or
InstructBlipForConditionalGeneration / Blip2ForConditionalGeneration + processor; anything
else is refused (ExportRefused naming the part) before a file is written.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from .parts import ExportRefused, read_config

__all__ = ["ExportRefused", "check_exportable", "export_hf", "from_hf", "init_from"]
PROJECTOR_FILES = (".bin", ".pt", ".safetensors")


def _importers() -> dict:
    from . import blip, llava_hf, llava_original

    return {"llava": llava_hf.load, "instructblip": blip.load_instructblip, "blip-2": blip.load_blip2,
            **{t: llava_original.load for t in llava_original.LLM_TYPES}}


def from_hf(path: str | Path, settings: ModelConfig | None = None):
    """A MultimodalLM from a released checkpoint folder (see the module docstring).
    `settings`: a recipe's `model:` section, of which only the training choices apply
    (llm.lora / dtype, encoders.<m>.trainable, tokenizer.chat_template); llm.quantize is refused
    with a pointer to `mmtune import`, after which it applies."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder")
    model_type = read_config(folder).get("model_type")
    importers = _importers()
    if model_type not in importers:
        raise ValueError(f"{folder / 'config.json'}: model_type {model_type!r} is not one mmtune imports "
                         f"({', '.join(importers)})")
    return importers[model_type](folder, settings)


def init_from(cfg: ModelConfig):
    """`model.init_from`: a released folder (its model, `cfg`'s training choices), or a stage-1
    projector file loaded into the model `cfg` describes."""
    import dataclasses

    from ..model import MultimodalLM
    from .llava_original import load_projector_file

    path = Path(cfg.init_from)
    if path.is_file() and path.suffix in PROJECTOR_FILES:
        model = MultimodalLM.build(dataclasses.replace(cfg, init_from=None))
        load_projector_file(model, path)
        return model
    if not path.is_dir():
        raise FileNotFoundError(f"model.init_from: {path} is neither a checkpoint folder nor a projector file "
                                f"({', '.join(PROJECTOR_FILES)})")
    if (path / "mmtune_config.json").exists():
        return _saved(path, cfg)
    return from_hf(path, cfg)


def _saved(path: Path, settings: ModelConfig):
    """A saved mmtune model (e.g. a released folder converted by `mmtune import`) with the recipe's
    training choices. Its LLM is a checkpoint of its own, so `llm.quantize: nf4` (QLoRA) works."""
    import tempfile

    from ..model import MultimodalLM
    from .parts import config_view

    def edit(cfg: dict) -> None:
        if (path / "llm_adapter").exists():
            raise ValueError(f"model.init_from: {path} holds a LoRA adapter: merge it first "
                             f"(mmtune export {path} --merge --out DIR)")
        s = settings.llm
        cfg["llm"].update(dtype=s.dtype, quantize=s.quantize, quantize_embeddings=s.quantize_embeddings,
                          lora={"r": s.lora.r, "alpha": s.lora.alpha, "dropout": s.lora.dropout,
                                "target_modules": s.lora.target_modules})
        for m, enc in settings.encoders.items():
            if m in cfg["encoders"]:
                cfg["encoders"][m]["trainable"] = enc.trainable
        if settings.tokenizer.chat_template is not None:
            cfg["tokenizer"]["chat_template"] = settings.tokenizer.chat_template

    with tempfile.TemporaryDirectory(prefix="mmtune-init-") as tmp:
        model = MultimodalLM.from_pretrained(config_view(path, Path(tmp), edit))
        # The base an adapter is saved against: the link's target, not the view that goes now.
        model.config.llm.path = str(Path(model.config.llm.path).resolve())
    return model


def _exporters() -> dict:
    from . import blip, llava_hf

    return {"mlp2x_gelu": (llava_hf.check, llava_hf.export), "qformer": (blip.check, blip.export)}


def check_exportable(model) -> None:
    """Raise ExportRefused naming the part no transformers class expresses."""
    proj_types = {p.type for p in model.config.projectors.values()}
    exporters = _exporters()
    if len(proj_types) != 1 or next(iter(proj_types)) not in exporters:
        raise ExportRefused(f"projectors {sorted(proj_types)}: transformers classes hold one image projector "
                            f"of type {' or '.join(exporters)}")
    exporters[next(iter(proj_types))][0](model)


def export_hf(model, out: str | Path) -> Path:
    """Write a full-precision, adapter-free `model` as a transformers folder `out`."""
    check_exportable(model)
    exporters = _exporters()
    (proj_type,) = {p.type for p in model.config.projectors.values()}
    out = Path(out)
    exporters[proj_type][1](model, out)
    return out
