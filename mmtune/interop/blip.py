"""transformers' `InstructBlipForConditionalGeneration` / `Blip2ForConditionalGeneration` <-> MultimodalLM.

    pixels -> vision_model (EVA ViT) -> last_hidden_state (after post_layernorm, CLS kept)
           -> Q-Former(query_tokens [+ instruction ids: InstructBLIP]) -> language_projection
           -> <image> positions of the decoder-only LM

which is mmtune's `hf_blip_vision` encoder (select_layer -1) -> `qformer` projector
(`instruction_aware` for InstructBLIP). Q-Former weights go through `load_hf_qformer`'s name map
both ways.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (AutoImageProcessor, Blip2VisionConfig, Blip2VisionModel, BlipImageProcessor,
                          PretrainedConfig)

from ..batch import MEDIA_TOKENS
from ..config import EncoderConfig, ModelConfig, ProjectorConfig, TokenizerConfig
from ..data.text.tokenizer import load_tokenizer
from ..encoders.base import ImageSpec
from ..encoders.hf_vision import HFVisionEncoder
from ..llm import torch_dtype
from ..projectors.qformer import QFormerProjector, hf_qformer_key, load_hf_qformer
from .parts import ExportRefused, arch_of, imported_config, llm_dtype, no_quantize, processor_fields
from .templates import check_string_content

QFORMER_TOKENIZER = "qformer_tokenizer"  # InstructBlipProcessor's subfolder for it


def _qformer_options(config: PretrainedConfig, instruction_aware: bool, folder) -> dict:
    q = config.qformer_config
    if q.hidden_act != "gelu":
        raise ValueError(f"{folder}: cannot import: Q-Former activation {q.hidden_act!r} (mmtune's is gelu)")
    if q.encoder_hidden_size != config.vision_config.hidden_size:
        raise ValueError(f"{folder}: cannot import: Q-Former reads width {q.encoder_hidden_size}, "
                         f"the vision model gives {config.vision_config.hidden_size}")
    return dict(num_queries=config.num_query_tokens, hidden_size=q.hidden_size, num_layers=q.num_hidden_layers,
                num_heads=q.num_attention_heads, intermediate_size=q.intermediate_size,
                cross_attention_frequency=q.cross_attention_frequency, instruction_aware=instruction_aware,
                vocab_size=q.vocab_size, max_position_embeddings=q.max_position_embeddings,
                pad_token_id=q.pad_token_id, layer_norm_eps=q.layer_norm_eps, dropout=q.hidden_dropout_prob)


def _load(folder, settings: ModelConfig | None, model_cls, instruction_aware: bool):
    from ..model import MultimodalLM

    no_quantize(settings, folder)
    dtype = llm_dtype(settings)
    hf = model_cls.from_pretrained(folder, dtype=torch_dtype(dtype))
    c = hf.config
    if not c.use_decoder_only_language_model:
        raise ValueError(f"{folder}: cannot import: an encoder-decoder language model "
                         f"({c.text_config.model_type}); mmtune's LLM is a causal LM")
    tower = Blip2VisionModel(Blip2VisionConfig(**arch_of(c.vision_config, keep_type=False)))
    tower.load_state_dict(hf.vision_model.state_dict())
    tower.to(hf.vision_model.dtype)
    processor = BlipImageProcessor(**processor_fields(AutoImageProcessor.from_pretrained(folder)))
    spec = ImageSpec(size=tower.config.image_size, mean=tuple(processor.image_mean),
                     std=tuple(processor.image_std), pad_to_square=False)
    encoder = HFVisionEncoder(tower, spec, processor, select_layer=-1, drop_cls=False, has_cls=True,
                              output_norm=True)
    options = _qformer_options(c, instruction_aware, folder)
    projector = QFormerProjector(c.vision_config.hidden_size, c.text_config.hidden_size, **options)
    with torch.no_grad():
        untouched = load_hf_qformer(projector, hf.qformer.state_dict(), hf.query_tokens,
                                    hf.language_projection.state_dict())
    if untouched:
        raise ValueError(f"{folder}: Q-Former weights missing from the checkpoint: {untouched}")
    projector.to(torch_dtype(dtype))
    inst_tok = None
    if instruction_aware:
        inst_tok = TokenizerConfig(type="auto", path=str(Path(folder).resolve() / QFORMER_TOKENIZER))
    enc_cfg = EncoderConfig(type="hf_blip_vision", arch=arch_of(tower.config, keep_type=False), select_layer=-1,
                            drop_cls=False, image_pad=False)
    proj_cfg = ProjectorConfig(type="qformer", options=options, instruction_tokenizer=inst_tok)
    cfg = imported_config(hf.language_model, dtype, settings, {"image": enc_cfg}, {"image": proj_cfg},
                          str(Path(folder).resolve()))
    tokenizer = load_tokenizer(cfg.tokenizer, None, media=("image",))
    check_string_content(tokenizer, folder)
    image_id = tokenizer.convert_tokens_to_ids(MEDIA_TOKENS["image"])
    if image_id != c.image_token_id:
        raise ValueError(f"{folder}: cannot import: the tokenizer's {MEDIA_TOKENS['image']} is id {image_id}, "
                         f"the config's image_token_index {c.image_token_id}")
    inst = {"image": load_tokenizer(inst_tok, None, media=())} if inst_tok else {}
    model = MultimodalLM(cfg, hf.language_model, {"image": encoder}, {"image": projector}, tokenizer, inst)
    model.encoders["image"].requires_grad_(cfg.encoders["image"].trainable)
    return model


def load_instructblip(folder, settings: ModelConfig | None = None):
    from transformers import InstructBlipForConditionalGeneration

    return _load(folder, settings, InstructBlipForConditionalGeneration, instruction_aware=True)


def load_blip2(folder, settings: ModelConfig | None = None):
    from transformers import Blip2ForConditionalGeneration

    return _load(folder, settings, Blip2ForConditionalGeneration, instruction_aware=False)


# ---------------------------------------------------------------------------------- export
def check(model) -> None:
    """Raise ExportRefused naming the first part no BLIP class can hold."""
    if set(model.encoders) != {"image"}:
        raise ExportRefused(f"modalities {sorted(model.encoders)}: InstructBLIP / BLIP-2 take images only "
                            "(a video or audio Q-Former has no transformers class)")
    enc_cfg = model.config.encoders["image"]
    encoder, proj = model.encoders["image"], model.projectors["image"]
    if enc_cfg.type != "hf_blip_vision":
        raise ExportRefused(f"image encoder {enc_cfg.type!r}: InstructBLIP / BLIP-2 hold a BLIP vision "
                            "model (hf_blip_vision)")
    if not encoder.output_norm or encoder.drop_cls:
        raise ExportRefused(f"image encoder layer {enc_cfg.select_layer}, drop_cls={enc_cfg.drop_cls}: the "
                            "Q-Former reads the vision model's output (select_layer -1, CLS kept)")
    if not isinstance(proj, QFormerProjector):
        raise ExportRefused(f"image projector {type(proj).__name__}: not a Q-Former")
    if proj.feature_pos_embed:
        raise ExportRefused("image projector 2-D position code on the features (feature_pos_embed): "
                            "InstructBLIP / BLIP-2's Q-Former reads the features as they are")


def _hf_qformer_state(proj: QFormerProjector, hf_qformer: nn.Module) -> dict:
    """Our Q-Former weights under transformers' names (the inverse of load_hf_qformer)."""
    own = proj.state_dict()
    out = {}
    for name, tensor in hf_qformer.state_dict().items():
        key = hf_qformer_key(name)
        if key is None and name.endswith("position_ids"):
            out[name] = tensor
            continue
        if key is None or key not in own:
            raise ExportRefused(f"Q-Former weight {name}: no counterpart in this projector")
        out[name] = own[key]
    return out


def export(model, out: Path) -> None:
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
                              InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor,
                              InstructBlipQFormerConfig)

    check(model)
    encoder, proj, tok, llm = model.encoders["image"], model.projectors["image"], model.tokenizer, model.llm
    if len(tok) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tok))
    aware = proj.instruction_aware
    first = proj.layers[0]
    q_kwargs = dict(hidden_size=proj.query_tokens.shape[-1], num_hidden_layers=len(proj.layers),
                    num_attention_heads=first.self_attn.heads, intermediate_size=first.ffn_query.fc1.out_features,
                    cross_attention_frequency=_cross_frequency(proj), encoder_hidden_size=encoder.hidden_size,
                    layer_norm_eps=proj.embed_norm.eps, hidden_dropout_prob=proj.dropout,
                    attention_probs_dropout_prob=proj.dropout)
    if aware:
        q_kwargs.update(vocab_size=proj.word_embeddings.num_embeddings,
                        max_position_embeddings=proj.position_embeddings.num_embeddings,
                        pad_token_id=proj.word_embeddings.padding_idx)
    config_cls, model_cls, qcfg_cls = ((InstructBlipConfig, InstructBlipForConditionalGeneration,
                                        InstructBlipQFormerConfig) if aware else
                                       (Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig))
    config = config_cls(vision_config=encoder.tower.config.to_dict(), qformer_config=qcfg_cls(**q_kwargs).to_dict(),
                        text_config=llm.config.to_dict(), num_query_tokens=proj.num_queries,
                        image_token_index=tok.convert_tokens_to_ids(MEDIA_TOKENS["image"]))
    with torch.device("meta"):
        hf = model_cls(config)
    vision = type(hf.vision_model)(config.vision_config)
    vision.load_state_dict(encoder.tower.state_dict())
    qformer = type(hf.qformer)(config.qformer_config)
    qformer.load_state_dict(_hf_qformer_state(proj, qformer))
    hf.vision_model, hf.qformer, hf.language_model = vision, qformer, llm
    hf.query_tokens = nn.Parameter(proj.query_tokens.detach().clone())
    hf.language_projection = proj.language_projection
    hf.generation_config.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)
    images = BlipImageProcessor(**processor_fields(encoder.processor))
    if aware:
        processor = InstructBlipProcessor(image_processor=images, tokenizer=tok,
                                          qformer_tokenizer=model.instruction_tokenizers["image"],
                                          num_query_tokens=proj.num_queries)
    else:
        processor = Blip2Processor(image_processor=images, tokenizer=tok, num_query_tokens=proj.num_queries)
    hf.save_pretrained(out)
    processor.save_pretrained(out)


def _cross_frequency(proj: QFormerProjector) -> int:
    """Cross-attention sits in layers 0, f, 2f, ...: f is the second such layer's index."""
    cross = [i for i, layer in enumerate(proj.layers) if layer.cross_attn is not None]
    return cross[1] if len(cross) > 1 else len(proj.layers)
