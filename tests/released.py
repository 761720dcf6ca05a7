"""Tiny "released" checkpoints, built offline with transformers' own classes and saved to a
folder, as llava-hf / Salesforce / the original LLaVA repo publish them (random init)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_clip_arch, tiny_llm_arch, tiny_siglip_arch
from PIL import Image

from mmtune.data.text.tokenizer import build_word_tokenizer, synthetic_words
from mmtune.interop.templates import parts_template


def _llm_kwargs() -> dict:
    arch = tiny_llm_arch()
    arch.pop("model_type")
    return arch


def word_tokenizer():
    tok = build_word_tokenizer(synthetic_words())
    tok.chat_template = parts_template(tok.chat_template)
    return tok


def llava_hf(folder: Path, tower: str = "clip", seed: int = 0):
    """LlavaForConditionalGeneration + LlavaProcessor in `folder`; returns the model (eval)."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaImageProcessor, LlavaProcessor, SiglipVisionConfig)
    from mmtune.encoders.hf_vision import CLIP_MEAN, CLIP_STD

    tok = word_tokenizer()
    clip = tower == "clip"
    vision = CLIPVisionConfig(**tiny_clip_arch()) if clip else SiglipVisionConfig(**tiny_siglip_arch())
    strategy = "default" if clip else "full"
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=LlamaConfig(**_llm_kwargs()).to_dict(),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                         vision_feature_select_strategy=strategy)
    torch.manual_seed(seed)
    hf = LlavaForConditionalGeneration(config).eval()
    hf.save_pretrained(folder)
    size = vision.image_size
    if clip:
        images = LlavaImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                     image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_pad=True)
    else:
        images = LlavaImageProcessor(size={"height": size, "width": size}, do_center_crop=False,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=vision.patch_size,
                   vision_feature_select_strategy=strategy, chat_template=tok.chat_template,
                   num_additional_image_tokens=1 if clip else 0).save_pretrained(folder)
    return hf


def image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def blip(folder: Path, instruction_aware: bool, seed: int = 0):
    """InstructBlipForConditionalGeneration (or Blip2ForConditionalGeneration) + its processor."""
    import transformers
    from mmtune.encoders.hf_vision import CLIP_MEAN, CLIP_STD

    names = (("InstructBlip", "InstructBlipProcessor") if instruction_aware else ("Blip2", "Blip2Processor"))
    cls = lambda suffix: getattr(transformers, names[0] + suffix)  # noqa: E731
    tok = word_tokenizer()
    vision = cls("VisionConfig")(**tiny_clip_arch())
    qformer = cls("QFormerConfig")(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   encoder_hidden_size=32, cross_attention_frequency=1, vocab_size=len(tok))
    config = cls("Config")(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                           text_config=transformers.LlamaConfig(**_llm_kwargs()).to_dict(), num_query_tokens=4,
                           image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    hf = cls("ForConditionalGeneration")(config).eval()
    with torch.no_grad():  # the init leaves query tokens at zero: make every part matter
        hf.query_tokens.normal_(0, 0.5)
    hf.save_pretrained(folder)
    images = transformers.BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=list(CLIP_MEAN),
                                             image_std=list(CLIP_STD))
    extra = {"qformer_tokenizer": build_word_tokenizer(synthetic_words())} if instruction_aware else {}
    getattr(transformers, names[1])(image_processor=images, tokenizer=tok, num_query_tokens=4,
                                    **extra).save_pretrained(folder)
    return hf


def llava_original(folder: Path, hf, tower_dir: Path, tower_in_checkpoint: bool = False) -> dict:
    """The original LLaVA repo's layout of llava-hf model `hf` (CLIP tower, 'default' strategy),
    as transformers' convert_llava_weights_to_hf.py reads it: LLM keys `model.*` / `lm_head.*`,
    the projector as `model.mm_projector.{0,2}.*`, the tower in its own folder named by
    `mm_vision_tower`; with `tower_in_checkpoint` (a run that trained the tower) the tower's
    weights are in the checkpoint and the folder holds a different, untrained tower. Returns the
    projector tensors (a stage-1 file's content)."""
    import json

    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor
    from mmtune.encoders.hf_vision import CLIP_MEAN, CLIP_STD

    c = hf.config
    if tower_in_checkpoint:
        torch.manual_seed(123)
        type(hf.model.vision_tower)(c.vision_config).save_pretrained(tower_dir)
    else:
        hf.model.vision_tower.save_pretrained(tower_dir)
    size = c.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(tower_dir)
    proj = hf.model.multi_modal_projector
    projector = {f"model.mm_projector.{i}.{k}": v.clone() for i, layer in ((0, proj.linear_1), (2, proj.linear_2))
                 for k, v in layer.state_dict().items()}
    state = {f"model.{k}": v.clone() for k, v in hf.model.language_model.state_dict().items()}
    state.update({"lm_head.weight": hf.lm_head.weight.clone(), **projector})
    if tower_in_checkpoint:
        state.update({f"model.vision_tower.vision_tower.{k}": v.clone()
                      for k, v in hf.model.vision_tower.state_dict().items()})
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors")
    config = {**c.text_config.to_dict(), "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
              "mm_vision_tower": str(tower_dir), "mm_vision_select_layer": c.vision_feature_layer,
              "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu",
              "mm_hidden_size": c.vision_config.hidden_size, "image_aspect_ratio": "pad",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tune_mm_mlp_adapter": False}
    (folder / "config.json").write_text(json.dumps(config))
    word_tokenizer().save_pretrained(folder)
    return projector
