"""The original LLaVA repo's checkpoints (haotian-liu/LLaVA) and its stage-1 projector files.

A full checkpoint is a Llama (or Mistral) causal-LM folder whose config.json adds the `mm_*`
fields and whose weights add `model.mm_projector.*`; the vision tower is not in it but named by
`mm_vision_tower` (a local CLIP folder here, or `model.encoders.image.path`):

    mm_vision_select_layer   -> encoder select_layer
    mm_vision_select_feature -> "patch": CLS dropped (drop_cls), "cls_patch": kept
    mm_projector_type        -> projector type (linear, mlp2x_gelu, ...: mmtune's names are LLaVA's)
    image_aspect_ratio       -> "pad": pad to a square with the mean colour (image_pad)

A stage-1 file (`mm_projector.bin`, what --pretrain_mm_mlp_adapter takes) holds only
`model.mm_projector.*`; it is read with `torch.load(weights_only=True)` or safetensors.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..config import EncoderConfig, ModelConfig, ProjectorConfig
from ..data.text.tokenizer import load_tokenizer
from ..llm import torch_dtype
from ..registry import ENCODERS
from .parts import arch_of, imported_config, llm_dtype, no_quantize, read_config
from .weights import read_tensors

LLM_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral"}  # LLaVA's model_type -> the LLM's
SELECT_FEATURE = {"patch": True, "cls_patch": False}  # -> drop_cls
PROJECTOR_KEY = "mm_projector."
TOWER_KEY = "vision_tower.vision_tower."  # LLaVA's CLIPVisionTower holds a CLIPVisionModel as .vision_tower


def _fail(folder, what: str):
    raise ValueError(f"{Path(folder) / 'config.json'}: cannot import: {what}")


def projector_state(state: dict[str, torch.Tensor], where) -> dict[str, torch.Tensor]:
    """`model.mm_projector.0.weight` -> `net.0.weight` (LLaVA's nn.Sequential is mmtune's `net`;
    a `linear` projector is one bare Linear: `mm_projector.weight` -> `net.0.weight`)."""
    out = {}
    for name, tensor in state.items():
        if PROJECTOR_KEY not in name:
            continue
        rest = name.split(PROJECTOR_KEY, 1)[1]
        out["net." + (rest if rest[0].isdigit() else "0." + rest)] = tensor
    if not out:
        raise ValueError(f"{where}: no {PROJECTOR_KEY}* weights")
    return out


def load_projector_file(model, path: str | Path) -> None:
    """Load a stage-1 projector file into `model`'s image projector (every tensor must fit)."""
    state = projector_state(read_tensors(path), path)
    proj = model.projectors["image"]
    own = proj.state_dict()
    bad = sorted(set(own) ^ set(state))
    if bad:
        raise ValueError(f"{path}: projector tensors {bad} do not match model.projectors.image "
                         f"({model.config.projectors['image'].type})")
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if shapes:
        raise ValueError(f"{path}: projector shapes differ from the model's: {shapes}")
    proj.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load(folder, settings: ModelConfig | None = None):
    from ..model import MultimodalLM, build_projector
    from .weights import read_checkpoint

    no_quantize(settings, folder)
    s = settings or ModelConfig()
    raw = read_config(folder)
    if raw.get("mm_use_im_start_end") or raw.get("mm_patch_merge_type", "flat") != "flat":
        _fail(folder, "image start/end tokens or a patch merge other than 'flat' (LLaVA-NeXT)")
    feature = raw.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        _fail(folder, f"mm_vision_select_feature {feature!r}")
    aspect = raw.get("image_aspect_ratio", "square")
    if aspect not in ("pad", "square"):
        _fail(folder, f"image_aspect_ratio {aspect!r} (only 'pad' and 'square')")
    given = s.encoders["image"].path if "image" in s.encoders else None
    tower = given or raw.get("mm_vision_tower")
    if not tower or not Path(tower).is_dir():
        _fail(folder, f"mm_vision_tower {tower!r} is not a local folder: set model.encoders.image.path to a "
                      "CLIP vision checkpoint folder")
    dtype = llm_dtype(settings)
    llm_fields = {k: v for k, v in raw.items() if not k.startswith("mm_") and k not in
                  ("model_type", "architectures", "transformers_version", "_name_or_path")}
    text_config = AutoConfig.for_model(LLM_TYPES[raw["model_type"]], **llm_fields)
    # The LLM's own weights load with transformers; mm_projector / vision_tower tensors in the
    # same files are reported as unused and read below.
    llm = AutoModelForCausalLM.from_pretrained(folder, config=text_config, dtype=torch_dtype(dtype))
    trainable = s.encoders["image"].trainable if "image" in s.encoders else False
    enc_cfg = EncoderConfig(type="hf_clip", path=str(tower), select_layer=raw.get("mm_vision_select_layer", -2),
                            drop_cls=SELECT_FEATURE[feature], image_pad=aspect == "pad", trainable=trainable)
    encoder = ENCODERS.get("hf_clip")(enc_cfg)
    # A run that unfroze the tower saved it in the checkpoint: those weights, not the folder's.
    tower_state = {k.split(TOWER_KEY, 1)[1]: v for k, v in
                   read_checkpoint(folder, keep=lambda k: TOWER_KEY in k).items()}
    if tower_state:
        encoder.tower.load_state_dict(tower_state)
    proj_cfg = ProjectorConfig(type=raw.get("mm_projector_type", "linear"))
    projector = build_projector("image", proj_cfg, encoder, text_config.hidden_size)
    state = projector_state(read_checkpoint(folder, keep=lambda k: PROJECTOR_KEY in k), folder)
    projector.load_state_dict(state)
    projector.to(torch_dtype(dtype))
    # LLaVA's own conversation template for v1.5 checkpoints, unless the recipe names one.
    if s.tokenizer.chat_template is None:
        s = dataclasses.replace(s, tokenizer=dataclasses.replace(s.tokenizer, chat_template="llava_v1"))
    enc_cfg = dataclasses.replace(enc_cfg, path=None, arch=arch_of(encoder.tower.config, keep_type=False))
    cfg = imported_config(llm, dtype, s, {"image": enc_cfg},
                          {"image": proj_cfg}, str(Path(folder).resolve()))
    tokenizer = load_tokenizer(cfg.tokenizer, None, media=("image",))
    model = MultimodalLM(cfg, llm, {"image": encoder}, {"image": projector}, tokenizer)
    model.encoders["image"].requires_grad_(trainable)
    return model
