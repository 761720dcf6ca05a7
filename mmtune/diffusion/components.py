"""The InstructPix2Pix model's parts, built from config or a local text-to-image checkpoint.

UNet2DConditionModel whose first convolution takes the noisy latent and the encoded input
image side by side (2 x latent channels: 8 for Stable Diffusion, 6 in pixel space); a
frozen VAE (or the identity in pixel space) and a frozen CLIP text encoder; a DDPM noise
schedule for training and DDIM for editing. Everything is a stock diffusers/transformers
class, so the saved pipeline is plain diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionInstructPix2PixPipeline,
                       UNet2DConditionModel)
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from ..synth.edits import edit_words
from ..data.text.tokenizer import build_word_tokenizer
from .config import EditModelConfig
from .pixel_vae import PixelSpaceVAE


@dataclass
class EditComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL | PixelSpaceVAE
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerBase
    scheduler: DDPMScheduler  # the training noise schedule

    def vae_scale_factor(self) -> int:
        """Pixels per latent position along each side (as diffusers' pipelines compute it)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline(self) -> StableDiffusionInstructPix2PixPipeline:
        """The editing pipeline over these very modules (DDIM on the training schedule)."""
        return StableDiffusionInstructPix2PixPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> None:
    """Give the UNet's first convolution `in_channels` inputs. The existing weights keep the
    first channels and the new ones start at zero, so at step 0 the model is exactly the
    text-to-image model and ignores the input image (the paper's initialisation)."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return
    if old.in_channels > in_channels:
        raise ValueError(f"the UNet already takes {old.in_channels} input channels (> {in_channels})")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)  # so save/load rebuilds the wider conv


def unet_blocks(unet: UNet2DConditionModel) -> list[torch.nn.Module]:
    """The UNet's FSDP units (train/engine.shard_units): its down, mid and up blocks."""
    mid = [unet.mid_block] if unet.mid_block is not None else []
    return [*unet.down_blocks, *mid, *unet.up_blocks]


def unsharded_unet(unet: UNet2DConditionModel, state: dict[str, torch.Tensor]) -> UNet2DConditionModel:
    """A plain UNet of `unet`'s config holding `state` (the gathered weights, on rank 0), for
    the saved pipeline; other ranks (empty `state`) keep theirs."""
    if not state:
        return unet
    twin = UNet2DConditionModel.from_config(unet.config)
    twin.load_state_dict(state)
    return twin


def latent_channels(vae) -> int:
    return int(vae.config.latent_channels)


def _tokenizer(cfg: EditModelConfig) -> PreTrainedTokenizerBase:
    if cfg.pretrained and cfg.tokenizer == "synthetic":
        return AutoTokenizer.from_pretrained(Path(cfg.pretrained) / "tokenizer")
    if cfg.tokenizer == "synthetic":
        tok = build_word_tokenizer(edit_words())
    else:
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    tok.model_max_length = cfg.max_text_length  # the pipeline pads every prompt to this
    return tok


def _text_encoder(cfg: EditModelConfig, tok: PreTrainedTokenizerBase) -> CLIPTextModel:
    if cfg.pretrained:
        return CLIPTextModel.from_pretrained(Path(cfg.pretrained) / "text_encoder")
    ids = {"vocab_size": len(tok), "max_position_embeddings": cfg.max_text_length,
           "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id}
    return CLIPTextModel(CLIPTextConfig(**{**ids, **cfg.text_encoder}))


def _vae(cfg: EditModelConfig):
    if cfg.pretrained:
        return AutoencoderKL.from_pretrained(Path(cfg.pretrained) / "vae")
    return PixelSpaceVAE() if cfg.vae is None else AutoencoderKL(**cfg.vae)


def _unet(cfg: EditModelConfig, channels: int, text_dim: int) -> UNet2DConditionModel:
    if cfg.pretrained:
        unet = UNet2DConditionModel.from_pretrained(Path(cfg.pretrained) / "unet")
        widen_conv_in(unet, 2 * channels)
        return unet
    arch = {"in_channels": 2 * channels, "out_channels": channels, "cross_attention_dim": text_dim,
            **cfg.unet}
    if arch["in_channels"] != 2 * channels or arch["out_channels"] != channels:
        raise ValueError(f"model.unet: in_channels/out_channels must be {2 * channels}/{channels} "
                         f"(noisy latent + input image in, latent out; the VAE has {channels} channels)")
    if arch["cross_attention_dim"] != text_dim:
        raise ValueError(f"model.unet.cross_attention_dim={arch['cross_attention_dim']} must equal the "
                         f"text encoder's hidden size {text_dim}")
    return UNet2DConditionModel(**arch)


def noise_scheduler(cfg: EditModelConfig) -> DDPMScheduler:
    if cfg.pretrained:
        base = DDPMScheduler.from_pretrained(Path(cfg.pretrained) / "scheduler")
        return DDPMScheduler.from_config({**base.config, **cfg.scheduler})
    return DDPMScheduler(**cfg.scheduler)


def build_components(cfg: EditModelConfig) -> EditComponents:
    """Fresh parts (random UNet) or a text-to-image checkpoint widened to take the input image.
    The VAE and text encoder come back frozen and in eval mode."""
    tok = _tokenizer(cfg)
    text_encoder = _text_encoder(cfg, tok)
    vae = _vae(cfg)
    unet = _unet(cfg, latent_channels(vae), text_encoder.config.hidden_size)
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    return EditComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                          scheduler=noise_scheduler(cfg))


def count_parameters(cfg: EditModelConfig) -> dict[str, int]:
    """Parameters per part, built on the meta device from the architecture alone."""
    with torch.device("meta"):
        parts = build_components(cfg)
    counts = {name: sum(p.numel() for p in getattr(parts, name).parameters())
              for name in ("unet", "vae", "text_encoder")}
    counts["total"] = sum(counts.values())
    return counts


def load_pipeline(path: str | Path, device: str | torch.device = "cpu") -> StableDiffusionInstructPix2PixPipeline:
    from ..quiet import quiet_diffusers

    quiet_diffusers()  # "Loading pipeline components" bars, unless `mmtune --verbose`
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(path), safety_checker=None,
                                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
