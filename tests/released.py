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
