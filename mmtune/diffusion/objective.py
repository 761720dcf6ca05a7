"""The InstructPix2Pix training objective: latent diffusion loss with conditioning dropout.

    z0 = VAE(edited) * scale            the clean target latent        [B, C, h, w]
    c_I = VAE(original).mode()          the input image's latent (unscaled, as the pipeline does)
    z_t = q(z0, t, noise)               forward diffusion at a random step t
    loss = || UNet([z_t ; c_I], t, text) - target ||^2

`target` is what the scheduler's prediction_type says the UNet predicts: the noise
(epsilon), the clean sample, or the velocity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .components import EditComponents


def conditioning_dropout(batch: int, p: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text, drop_image) masks [B]: text alone, image alone and both are each dropped
    for a share `p` of samples (the paper: p = 5%), from one uniform draw per sample."""
    u = torch.rand(batch, device=device)
    drop_text = u < 2 * p  # [0, p): text only, [p, 2p): both
    drop_image = (u >= p) & (u < 3 * p)  # [p, 2p): both, [2p, 3p): image only
    return drop_text, drop_image


@torch.no_grad()
def encode_images(parts: EditComponents, original: torch.Tensor, edited: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [-1, 1] -> (scaled target latents, unscaled input-image latents)."""
    vae = parts.vae
    dtype = next(iter(vae.buffers()), next(iter(vae.parameters()), original)).dtype
    target = vae.encode(edited.to(dtype)).latent_dist.sample() * vae.config.scaling_factor
    image = vae.encode(original.to(dtype)).latent_dist.mode()
    return target.float(), image.float()


def diffusion_target(parts: EditComponents, z0: torch.Tensor, noise: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
    kind = parts.scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return z0
    if kind == "v_prediction":
        return parts.scheduler.get_velocity(z0, noise, t)
    raise ValueError(f"model.scheduler.prediction_type: {kind!r} is not epsilon, sample or v_prediction")


def edit_loss(parts: EditComponents, unet, original: torch.Tensor, edited: torch.Tensor,
              ids: torch.Tensor, null_text: torch.Tensor, dropout: float) -> torch.Tensor:
    """Each sample's mean squared error [B]; `unet` may be the DDP-wrapped parts.unet.
    `null_text` [1, L, D] is the encoding of the empty instruction (what guidance uses)."""
    z0, image = encode_images(parts, original, edited)
    bsz = z0.shape[0]
    noise = torch.randn_like(z0)
    t = torch.randint(0, parts.scheduler.config.num_train_timesteps, (bsz,), device=z0.device)
    z_t = parts.scheduler.add_noise(z0, noise, t)
    with torch.no_grad():
        text = parts.text_encoder(ids)[0]  # [B, L, D]
    if dropout > 0:
        drop_text, drop_image = conditioning_dropout(bsz, dropout, z0.device)
        text = torch.where(drop_text[:, None, None], null_text.to(text.dtype), text)
        image = image * (~drop_image).to(image.dtype)[:, None, None, None]  # zeros, as at inference
    pred = unet(torch.cat([z_t, image], dim=1), t, encoder_hidden_states=text).sample
    err = F.mse_loss(pred.float(), diffusion_target(parts, z0, noise, t).float(), reduction="none")
    return err.mean(dim=(1, 2, 3))  # [B]
