"""BLIP-2 / InstructBLIP presets: parameter counts equal transformers' own models of the
published architectures (built on the meta device), and the EVA tower encoder matches HF's."""
from __future__ import annotations

import pytest
import torch
from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2VisionConfig, Blip2VisionModel,
                          InstructBlipConfig, InstructBlipForConditionalGeneration)
from transformers import AutoConfig

from mmtune.config import EncoderConfig
from mmtune.registry import ENCODERS
from mmtune.zoo import count_parameters, preset_config


def hf_reference(name: str) -> torch.nn.Module:
    """transformers' model for the preset, configured from the preset's own dimensions."""
    cfg = preset_config(name)
    vision = Blip2VisionConfig(**cfg.encoders["image"].arch).to_dict()
    opts = cfg.projectors["image"].options
    qformer = dict(hidden_size=opts["hidden_size"], num_hidden_layers=opts["num_layers"],
                   num_attention_heads=opts["num_heads"], intermediate_size=opts["intermediate_size"],
                   cross_attention_frequency=opts["cross_attention_frequency"],
                   vocab_size=opts["vocab_size"], encoder_hidden_size=vision["hidden_size"])
    arch = dict(cfg.llm.arch)
    text = AutoConfig.for_model(arch.pop("model_type"), **arch).to_dict()
    with torch.device("meta"):
        if opts["instruction_aware"]:
            return InstructBlipForConditionalGeneration(InstructBlipConfig(
                vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=opts["num_queries"]))
        return Blip2ForConditionalGeneration(Blip2Config(
            vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=opts["num_queries"]))


@pytest.mark.parametrize("name", ["instructblip-vicuna-7b", "blip2-opt-2.7b"])
def test_preset_counts_match_transformers(name):
    ours = count_parameters(preset_config(name))
    hf = hf_reference(name)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert ours["encoder.image"] == n(hf.vision_model)
    assert ours["projector.image"] == n(hf.qformer) + hf.query_tokens.numel() + n(hf.language_projection)
    assert ours["llm"] == n(hf.language_model) + (n(hf.lm_head) if hasattr(hf, "lm_head") else 0)
    assert ours["total"] == n(hf)


def test_blip_vision_encoder_is_hfs_output():
    arch = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8, qkv_bias=True)
    torch.manual_seed(0)
    enc = ENCODERS.get("hf_blip_vision")(EncoderConfig(type="hf_blip_vision", select_layer=-1, drop_cls=False,
                                                        image_pad=False, arch=arch)).eval()
    ref = Blip2VisionModel(Blip2VisionConfig(**arch)).eval()
    ref.load_state_dict(enc.tower.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(pixels), ref(pixel_values=pixels).last_hidden_state)
    assert enc(pixels).shape == (2, enc.num_tokens(), 32) and enc.num_tokens() == 17  # 16 patches + CLS
