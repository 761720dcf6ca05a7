"""Named model presets: published architectures and tiny CPU variants.

A preset is a function returning `ModelConfig` fields with every dimension written out.
Architectures are separate from weights: a real preset builds at random init unless
`model.llm.path` / `model.encoders.image.path` point at local checkpoints.
Parameter counts are computed on the meta device: no memory, no weights.
"""
from __future__ import annotations

import dataclasses

import torch

from . import encoders as _encoders  # noqa: F401  (fills ENCODERS)
from . import projectors as _projectors  # noqa: F401  (fills PROJECTORS)
from .config import ModelConfig, from_dict, merge
from .registry import ENCODERS, PRESETS


def clip_vit_l14_336() -> dict:
    """OpenAI CLIP ViT-L/14 at 336 px (LLaVA-1.5's tower): penultimate layer, CLS dropped."""
    return {"type": "hf_clip", "select_layer": -2, "drop_cls": True, "image_pad": True,
            "arch": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                     "projection_dim": 768, "hidden_act": "quick_gelu"}}


def vicuna(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    """Vicuna v1.5 = Llama-2 architecture, 32000-token vocabulary, 4096 context."""
    return {"arch": {"model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate,
                     "num_hidden_layers": layers, "num_attention_heads": heads,
                     "num_key_value_heads": heads, "vocab_size": 32000,
                     "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                     "tie_word_embeddings": False}, "dtype": "bfloat16"}


def _llava15(llm: dict) -> dict:
    return {"llm": llm, "encoders": {"image": clip_vit_l14_336()},
            "projectors": {"image": {"type": "mlp2x_gelu"}},
            "tokenizer": {"type": "auto", "chat_template": "llava_v1"}}


PRESETS.register("llava-1.5-7b", lambda: _llava15(vicuna(4096, 11008, 32, 32)))
# Text-only Llama-2-7B (the architecture Vicuna-7B v1.5 finetunes), so the SFT / QLoRA configs
# build at random init and `mmtune plan` can count them; `model.llm.path` loads real weights.
PRESETS.register("llama-2-7b", lambda: {"llm": vicuna(4096, 11008, 32, 32)})
PRESETS.register("llava-1.5-13b", lambda: _llava15(vicuna(5120, 13824, 40, 40)))


def _tiny_llava() -> dict:
    """The CPU model that learns the synthetic shapes task in minutes (see CALIBRATION)."""
    from .data.text.tokenizer import build_word_tokenizer, synthetic_words

    vocab = len(build_word_tokenizer(synthetic_words()))
    return {
        "llm": {"arch": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
                         "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                         "vocab_size": vocab, "max_position_embeddings": 512,
                         "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 2,
                         "eos_token_id": 3}},
        "encoders": {"image": {"type": "hf_clip", "select_layer": -1, "drop_cls": True,
                               "image_pad": True,
                               "arch": {"hidden_size": 128, "intermediate_size": 256,
                                        "num_hidden_layers": 2, "num_attention_heads": 4,
                                        "image_size": 64, "patch_size": 8}}},
        # 2x2 token merge: 16 image tokens instead of 64, ~2x faster steps on CPU. The 2-D
        # position code makes left/right learnable on every seed (without it, one of two
        # inits stayed at chance on position after 1000 steps).
        "projectors": {"image": {"type": "mlp2x_gelu", "options": {"token_merge": 2, "pos_embed": True}}},
        "tokenizer": {"type": "synthetic"},
    }


PRESETS.register("tiny-llava", _tiny_llava)


def _tiny_lm() -> dict:
    """A text-only tiny Llama for SFT / QLoRA on the synthetic text skills."""
    from .data.text.tokenizer import build_word_tokenizer, synthetic_words

    vocab = len(build_word_tokenizer(synthetic_words()))
    return {"llm": {"arch": {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
                             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                             "vocab_size": vocab, "max_position_embeddings": 256,
                             "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 2,
                             "eos_token_id": 3}},
            "tokenizer": {"type": "synthetic"}}


PRESETS.register("tiny-lm", _tiny_lm)


def eva_vit_g() -> dict:
    """BLIP-2's EVA ViT-g/14 at 224 px, last layer dropped (39 of 40), as transformers'
    `Blip2VisionConfig` holds it; the Q-Former reads all 257 tokens (CLS included)."""
    return {"type": "hf_blip_vision", "select_layer": -1, "drop_cls": False, "image_pad": False,
            "arch": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
                     "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
                     "qkv_bias": True, "layer_norm_eps": 1e-6}}


def blip_qformer(instruction_aware: bool) -> dict:
    """BERT-base Q-Former with 32 queries, cross-attention every 2nd layer (BLIP-2 and
    InstructBLIP). The instruction-aware one reads the instruction with BERT's tokenizer
    (vocabulary 30522 + the [DEC] token); point `instruction_tokenizer.path` at a local
    bert-base-uncased tokenizer."""
    proj: dict = {"type": "qformer",
                  "options": {"num_queries": 32, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
                              "intermediate_size": 3072, "cross_attention_frequency": 2,
                              "instruction_aware": instruction_aware, "vocab_size": 30523}}
    if instruction_aware:
        proj["instruction_tokenizer"] = {"type": "auto", "path": "bert-base-uncased"}
    return proj


def opt(hidden: int, ffn: int, layers: int, heads: int) -> dict:
    """OPT decoder (BLIP-2's frozen LLMs), 50272-token vocabulary, 2048 context."""
    return {"arch": {"model_type": "opt", "hidden_size": hidden, "ffn_dim": ffn, "num_hidden_layers": layers,
                     "num_attention_heads": heads, "vocab_size": 50272, "max_position_embeddings": 2048,
                     "word_embed_proj_dim": hidden}, "dtype": "float16"}


def _blip(llm: dict, instruction_aware: bool) -> dict:
    return {"llm": llm, "encoders": {"image": eva_vit_g()},
            "projectors": {"image": blip_qformer(instruction_aware)},
            "tokenizer": {"type": "auto", "chat_template": "plain"}}


# InstructBLIP's Vicuna-7B is v1.1 with a pad token added (32001 ids).
PRESETS.register("instructblip-vicuna-7b",
                 lambda: _blip(merge(vicuna(4096, 11008, 32, 32), {"arch": {"vocab_size": 32001}}), True))
PRESETS.register("instructblip-vicuna-13b",
                 lambda: _blip(merge(vicuna(5120, 13824, 40, 40), {"arch": {"vocab_size": 32001}}), True))
PRESETS.register("blip2-opt-2.7b", lambda: _blip(opt(2560, 10240, 32, 32), False))
PRESETS.register("blip2-opt-6.7b", lambda: _blip(opt(4096, 16384, 32, 32), False))


def _tiny_instructblip() -> dict:
    """Tiny InstructBLIP for CPU: tiny-llava's frozen tower and LLM, an instruction-aware
    Q-Former (16 queries, 2 layers) that reads the question with the synthetic tokenizer."""
    from .data.text.tokenizer import build_word_tokenizer, synthetic_words

    vocab = len(build_word_tokenizer(synthetic_words()))
    tiny = _tiny_llava()
    # Frozen as in the paper; a frozen random LLM at the default init std 0.02 bounds its
    # logits (the frozen lm_head) and the loss stalls, so the tiny one starts at std 0.1.
    tiny["llm"]["arch"].update(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               initializer_range=0.1)
    tiny["encoders"]["image"].update(select_layer=-1, drop_cls=True)  # 8x8 patch grid
    tiny["projectors"] = {"image": {
        "type": "qformer", "instruction_tokenizer": {"type": "synthetic"}, "max_instruction_length": 32,
        "options": {"num_queries": 16, "hidden_size": 128, "num_layers": 2, "num_heads": 4,
                    "intermediate_size": 256, "cross_attention_frequency": 1, "instruction_aware": True,
                    "vocab_size": vocab, "max_position_embeddings": 64, "dropout": 0.0,
                    "feature_pos_embed": True}}}
    return tiny


PRESETS.register("tiny-instructblip", _tiny_instructblip)


def whisper_large_v3_encoder() -> dict:
    """Whisper-large-v3's encoder (128 mel bins, 30 s windows -> 1500 tokens of width 1280).
    Video-LLaMA's audio encoder is ImageBind-Huge's audio branch, which transformers does not
    provide: this is a stand-in (another architecture and size, ~637M parameters), so the
    audio branch's count differs from the paper's. Point `path` at a local Whisper checkpoint."""
    return {"type": "whisper_audio", "select_layer": -1, "drop_cls": False,
            "arch": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                     "encoder_ffn_dim": 5120, "num_mel_bins": 128, "max_source_positions": 1500}}


def _video_llama(llm: dict) -> dict:
    """Video-LLaMA (DAMO-NLP-SG): EVA ViT-g per frame (8 frames), BLIP-2's Q-Former per
    frame, trainable frame positions, a 2-layer video Q-Former (32 queries) -> Vicuna; audio:
    an audio encoder -> 2-layer audio Q-Former (8 queries) -> Vicuna. Frame positions live in
    the projector, after the frame Q-Former, as in the paper."""
    return {"llm": llm,
            "encoders": {"video": {"type": "video_frames", "arch": {
                             "frame_encoder": eva_vit_g(), "num_frames": 8, "frame_positions": False}},
                         "audio": whisper_large_v3_encoder()},
            "projectors": {"video": {"type": "video_qformer", "options": {
                               "frame_qformer": {"num_layers": 12, "cross_attention_frequency": 2}}},
                           "audio": {"type": "audio_qformer"}},
            "tokenizer": {"type": "auto", "chat_template": "plain"}}


PRESETS.register("video-llama-7b", lambda: _video_llama(vicuna(4096, 11008, 32, 32)))


def _tiny_video_llama(modalities: tuple[str, ...]) -> dict:
    """Tiny Video-LLaMA for CPU (shared/CALIBRATION.md, "Video"): 32 px frames through a
    3-layer conv (16 tokens per frame), trainable frame positions in the projector, a 2-layer
    video Q-Former (hidden 64, 8 queries); 1 s of audio through a 2-layer random Whisper
    encoder (50 tokens), an audio Q-Former (8 queries); a 2-layer Llama (hidden 128)."""
    from .data.text.tokenizer import build_word_tokenizer, synthetic_words

    vocab = len(build_word_tokenizer(synthetic_words()))
    qformer = {"num_queries": 8, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
               "intermediate_size": 128, "dropout": 0.0}
    encoders = {"video": {"type": "video_frames", "arch": {
                    "frame_encoder": {"type": "conv", "image_pad": False,
                                      "arch": {"image_size": 32, "channels": [32, 64, 64]}},
                    "num_frames": 8, "frame_positions": False}},
                # init_std 0.1: at Whisper's 0.02 the random convs shrink the log-mel so much that the
                # sinusoidal positions make up ~95% of every frozen feature, and the branch stayed at
                # chance; at 0.1 the sound is most of the feature.
                "audio": {"type": "whisper_audio", "select_layer": -1, "drop_cls": False, "arch": {
                    "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128,
                    "num_mel_bins": 80, "max_source_positions": 50, "init_std": 0.1}}}
    projectors = {"video": {"type": "video_qformer", "options": qformer},
                  "audio": {"type": "audio_qformer", "options": qformer}}
    # The LLM stays frozen, as in the paper. At transformers' default init (std 0.02) a frozen
    # random lm_head and final norm bound the logits to about +-2.5 and attention is near
    # uniform: the projector-only loss stalled at ~2.7 (LoRA adapters too). At std 0.1 the
    # frozen random Llama is readable, and motion direction trains to ~0.1 loss in 400 steps.
    return {"llm": {"arch": {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                             "vocab_size": vocab, "max_position_embeddings": 256, "initializer_range": 0.1,
                             "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 2,
                             "eos_token_id": 3}},
            "encoders": {m: encoders[m] for m in modalities},
            "projectors": {m: projectors[m] for m in modalities},
            "tokenizer": {"type": "synthetic"}}


PRESETS.register("tiny-video-llama", lambda: _tiny_video_llama(("video",)))
PRESETS.register("tiny-video-llama-audio", lambda: _tiny_video_llama(("audio",)))
PRESETS.register("tiny-video-llama-av", lambda: _tiny_video_llama(("video", "audio")))


def resolve_model(data: dict) -> dict:
    """Expand `preset:` — the preset's fields lie under the ones given explicitly."""
    name = data.get("preset")
    if not name:
        return data
    return merge(PRESETS.get(name)(), {k: v for k, v in data.items() if k != "preset"})


def preset_config(name: str) -> ModelConfig:
    return from_dict(ModelConfig, resolve_model({"preset": name}), f"preset {name}: ")


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per part, built on the meta device from the architecture alone."""
    from .llm import load_llm
    from .model import build_projector

    counts: dict[str, int] = {}
    with torch.device("meta"):
        llm = load_llm(dataclasses.replace(cfg.llm, path=None, quantize=None))
        counts["llm"] = sum(p.numel() for p in llm.parameters())
        d_llm = llm.get_input_embeddings().embedding_dim
        for modality, enc_cfg in cfg.encoders.items():
            enc = ENCODERS.get(enc_cfg.type)(dataclasses.replace(enc_cfg, path=None))
            counts[f"encoder.{modality}"] = sum(p.numel() for p in enc.parameters())
            proj = build_projector(modality, cfg.projectors[modality], enc, d_llm)
            counts[f"projector.{modality}"] = sum(p.numel() for p in proj.parameters())
    counts["total"] = sum(counts.values())
    return counts


def zoo_table() -> list[dict]:
    return [{"name": name, **count_parameters(preset_config(name))} for name in PRESETS.names()]
