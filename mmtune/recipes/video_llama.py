"""Video-LLaMA: a video and an audio branch into one frozen LLM, each through a Q-Former.

Vision-language branch (`model.encoders.video`): frames -> frozen image encoder (+ frozen
BLIP-2 frame Q-Former) -> frame positions -> video Q-Former -> Linear. Stage `pretrain`
learns it on video-caption pairs (`task: caption`: the user turn keeps only its `<video>`),
stage `finetune` on video instructions. Audio-language branch (`model.encoders.audio`):
frozen audio encoder -> audio Q-Former -> Linear, trained the same way on audio data.

Encoders stay frozen; the LLM stays frozen in the paper's configs. `llm` in a stage's `train`
(with `model.llm.lora.r > 0`: the LoRA adapters) is allowed for models whose LLM cannot be
used frozen, and each config says why it does so.

Stages are data (configs/video_llama/*.yaml); the shared driver runs them, so the same file
runs on one process or under `accelerate launch` / `torchrun`.
"""
from __future__ import annotations


from ..config import RecipeConfig
from ..registry import RECIPES
from .stages import multimodal_recipe

BRANCHES = ("video", "audio")


def check_config(cfg: RecipeConfig) -> None:
    """A Video-LLaMA model has a video and/or an audio branch and nothing else, and its
    encoders never train (frame positions and everything after them live in the projector)."""
    modalities = set(cfg.model.encoders)
    if not modalities or not modalities <= set(BRANCHES):
        raise ValueError(f"model.encoders: Video-LLaMA has branches {list(BRANCHES)}; got {sorted(modalities)}")
    for name, stage in cfg.stages.items():
        if "encoder" in stage.train:
            raise ValueError(f"stages.{name}.train: Video-LLaMA keeps its encoders frozen "
                             "(the frame positions train with the video projector)")
    for modality, enc in cfg.model.encoders.items():
        if enc.trainable:
            raise ValueError(f"model.encoders.{modality}.trainable: Video-LLaMA keeps its encoders frozen")


main = multimodal_recipe("video_llama", check_config)
RECIPES.register("video_llama", main)
