"""transformers' `LlavaForConditionalGeneration` (the llava-hf layout) <-> MultimodalLM.

    pixels -> vision_tower (CLIP / SigLIP) -> hidden_states[vision_feature_layer]
           -> [:, 1:] if vision_feature_select_strategy == "default" (CLS dropped)
           -> multi_modal_projector (linear_1, GELU, linear_2) -> <image> positions of the LM

which is mmtune's `hf_clip`/`hf_siglip` encoder (`select_layer`, `drop_cls`) -> `mlp2x_gelu`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..batch import MEDIA_TOKENS
from ..config import EncoderConfig, ModelConfig, ProjectorConfig
from ..data.text.chat import resolve_template
from ..data.text.tokenizer import load_tokenizer
from ..encoders.base import ImageSpec
from ..encoders.hf_vision import HFVisionEncoder
from ..llm import torch_dtype
from ..projectors.mlp import MLPProjector
from .parts import (ExportRefused, arch_of, causal_lm, decoder_and_head, imported_config, llm_dtype, no_quantize,
                    processor_fields)
from .templates import check_string_content, parts_template

# transformers vision-config type -> (mmtune encoder type, has a CLS token, plain processor class)
TOWERS = {"clip_vision_model": ("hf_clip", True, "CLIPImageProcessor"),
          "siglip_vision_model": ("hf_siglip", False, "SiglipImageProcessor")}
ENCODER_TYPES = {v[0]: (k, v[1]) for k, v in TOWERS.items()}


def _refuse_unless(ok: bool, folder, what: str) -> None:
    if not ok:
        raise ValueError(f"{folder}: cannot import: {what}")


def load(folder: str | Path, settings: ModelConfig | None = None):
    """A MultimodalLM with the folder's weights, tokenizer and image preprocessing."""
    import transformers
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    from ..model import MultimodalLM

    no_quantize(settings, folder)
    dtype = llm_dtype(settings)
    hf = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch_dtype(dtype))
    c = hf.config
    vtype = c.vision_config.model_type
    _refuse_unless(vtype in TOWERS, folder, f"vision tower {vtype!r} (known: {', '.join(TOWERS)})")
    enc_type, has_cls, proc_cls = TOWERS[vtype]
    _refuse_unless(isinstance(c.vision_feature_layer, int), folder,
                   f"vision_feature_layer={c.vision_feature_layer} (features of several layers concatenated)")
    _refuse_unless(c.vision_feature_select_strategy in ("default", "full"), folder,
                   f"vision_feature_select_strategy={c.vision_feature_select_strategy!r}")
    drop_cls = c.vision_feature_select_strategy == "default"
    _refuse_unless(has_cls or not drop_cls, folder, f"strategy 'default' drops a CLS token {vtype} has not")
    _refuse_unless(c.projector_hidden_act == "gelu" and c.multimodal_projector_bias, folder,
                   f"projector act {c.projector_hidden_act!r}, bias {c.multimodal_projector_bias} "
                   "(mmtune's mlp2x_gelu is Linear+GELU+Linear with biases)")

    source = AutoImageProcessor.from_pretrained(folder)
    processor = getattr(transformers, proc_cls)(**processor_fields(source))
    pad = bool(source.to_dict().get("do_pad", False))
    tower = hf.model.vision_tower
    spec = ImageSpec(size=tower.config.image_size, mean=tuple(processor.image_mean),
                     std=tuple(processor.image_std), pad_to_square=pad)
    encoder = HFVisionEncoder(tower, spec, processor, c.vision_feature_layer, drop_cls, has_cls=has_cls)
    llm = causal_lm(c.text_config, hf.model.language_model, hf.lm_head)
    d_llm = c.text_config.hidden_size
    projector = MLPProjector(tower.config.hidden_size, d_llm, depth=2).to(torch_dtype(dtype))
    with torch.no_grad():
        projector.net[0].load_state_dict(hf.model.multi_modal_projector.linear_1.state_dict())
        projector.net[2].load_state_dict(hf.model.multi_modal_projector.linear_2.state_dict())

    enc_cfg = EncoderConfig(type=enc_type, arch=arch_of(tower.config, keep_type=False),
                            select_layer=c.vision_feature_layer, drop_cls=drop_cls, image_pad=pad)
    cfg = imported_config(llm, dtype, settings, {"image": enc_cfg},
                          {"image": ProjectorConfig(type="mlp2x_gelu")}, str(Path(folder).resolve()))
    tokenizer = load_tokenizer(cfg.tokenizer, None, media=("image",))
    check_string_content(tokenizer, folder)
    image_id = tokenizer.convert_tokens_to_ids(MEDIA_TOKENS["image"])
    _refuse_unless(image_id == c.image_token_id, folder,
                   f"the tokenizer's {MEDIA_TOKENS['image']} is id {image_id}, the config's image_token_id "
                   f"{c.image_token_id}")
    model = MultimodalLM(cfg, llm, {"image": encoder}, {"image": projector}, tokenizer)
    model.encoders["image"].requires_grad_(cfg.encoders["image"].trainable)
    return model


# ---------------------------------------------------------------------------------- export
def check(model) -> None:
    """Raise ExportRefused naming the first part LlavaForConditionalGeneration cannot hold."""
    if set(model.encoders) != {"image"}:
        raise ExportRefused(f"modalities {sorted(model.encoders)}: LlavaForConditionalGeneration takes "
                            "images only")
    enc_cfg, proj_cfg = model.config.encoders["image"], model.config.projectors["image"]
    if enc_cfg.type not in ENCODER_TYPES:
        raise ExportRefused(f"image encoder {enc_cfg.type!r}: LlavaForConditionalGeneration holds a "
                            f"transformers tower ({', '.join(ENCODER_TYPES)})")
    proj = model.projectors["image"]
    if proj_cfg.type != "mlp2x_gelu" or not isinstance(proj, MLPProjector):
        raise ExportRefused(f"image projector {proj_cfg.type!r}: LlavaForConditionalGeneration's projector "
                            "is mlp2x_gelu")
    if proj.token_merge != 1:
        raise ExportRefused(f"image projector token merge {proj.token_merge}x{proj.token_merge}: "
                            "LlavaForConditionalGeneration has one token per patch")
    if proj.pos_embed:
        raise ExportRefused("image projector 2-D position code (pos_embed): LlavaForConditionalGeneration "
                            "adds nothing to the tower's features")


def export(model, out: Path) -> None:
    """Write `model` (full precision, no adapter) as LlavaForConditionalGeneration + LlavaProcessor."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessor, LlavaProcessor

    check(model)
    encoder, proj = model.encoders["image"], model.projectors["image"]
    tok = model.tokenizer
    llm = model.llm
    if len(tok) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tok))  # the placeholder row is never read: features replace it
    image_id = tok.convert_tokens_to_ids(MEDIA_TOKENS["image"])
    strategy = "default" if encoder.drop_cls else "full"
    config = LlavaConfig(vision_config=encoder.tower.config.to_dict(), text_config=llm.config.to_dict(),
                         image_token_id=image_id, vision_feature_layer=encoder.select_layer,
                         vision_feature_select_strategy=strategy, projector_hidden_act="gelu",
                         multimodal_projector_bias=True, image_seq_length=model.tokens_per_medium("image"),
                         tie_word_embeddings=llm.config.tie_word_embeddings)
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(config)
    decoder, head = decoder_and_head(llm)
    hf.model.vision_tower = encoder.tower
    hf.model.multi_modal_projector.linear_1 = proj.net[0]
    hf.model.multi_modal_projector.linear_2 = proj.net[2]
    hf.model.language_model = decoder
    hf.lm_head = head
    hf.generation_config.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)
    template = parts_template(resolve_template(tok, None))
    tok.chat_template = template
    fields = processor_fields(encoder.processor)
    fields.setdefault("do_center_crop", False)  # SigLIP's processor resizes to the square itself
    image_processor = LlavaImageProcessor(**fields, do_pad=encoder.spec.pad_to_square)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok,
                               patch_size=encoder.tower.config.patch_size,
                               vision_feature_select_strategy=strategy, chat_template=template,
                               image_token=MEDIA_TOKENS["image"],
                               num_additional_image_tokens=1 if encoder.has_cls else 0)
    hf.save_pretrained(out)
    processor.save_pretrained(out)
