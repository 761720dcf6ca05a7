"""LLaVA's projectors: `linear` (LLaVA-1) and `mlp{N}x_gelu` (LLaVA-1.5 uses mlp2x_gelu)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..parts import FeatureSpec
from ..registry import PROJECTORS


class MLPProjector(nn.Module):
    """Linear, then (GELU, Linear) x (depth - 1).

    `token_merge=k` first concatenates each k x k block of neighbouring patch features into one
    token (the "pixel shuffle" downsampling of InternVL / Idefics3): k^2 fewer image tokens for
    the LLM, no information dropped. k=1 keeps LLaVA's one token per patch.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, token_merge: int = 1,
                 pos_embed: bool = False) -> None:
        super().__init__()
        self.token_merge = token_merge
        # Optional fixed 2-D sin-cos position code added to the patch features (as Qwen-VL's
        # resampler does): it states each token's grid cell outright. A pretrained tower
        # carries that information in its features; a random-init tiny tower barely does.
        self.pos_embed = pos_embed
        layers: list[nn.Module] = [nn.Linear(in_dim * token_merge**2, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.net = nn.Sequential(*layers)

    def num_tokens(self, n_in: int) -> int:
        return n_in // self.token_merge**2

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        k = self.token_merge
        b, n, d = x.shape
        g = int(round(n**0.5))
        if g * g != n or g % k:
            raise ValueError(f"token_merge={k} needs a square grid divisible by {k}; got {n} tokens")
        x = x.reshape(b, g // k, k, g // k, k, d).permute(0, 1, 3, 2, 4, 5)  # [B, g/k, g/k, k, k, D]
        return x.reshape(b, (g // k) ** 2, k * k * d)

    def forward(self, features: torch.Tensor, instruction=None) -> torch.Tensor:
        if self.pos_embed:
            features = features + sincos_2d(features.shape[1], features.shape[2]).to(features)
        if self.token_merge > 1:
            features = self.merge(features)  # [B, N, D] -> [B, N/k^2, k^2 D]
        return self.net(features)  # -> [B, N', D_llm]


def sincos_2d(n_tokens: int, dim: int) -> torch.Tensor:
    """[N, D] fixed 2-D sin-cos position code of a square grid (MAE's), rows then columns."""
    g = int(round(n_tokens**0.5))
    if g * g != n_tokens or dim % 4:
        raise ValueError(f"sin-cos 2-D positions need a square grid and dim % 4 == 0; got {n_tokens}, {dim}")
    freq = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    ys, xs = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32),
                            indexing="ij")
    parts = [f(c.reshape(-1, 1) * freq) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


def _build_mlp(features: FeatureSpec, out_dim: int, *, depth: int, token_merge: int = 1,
               pos_embed: bool = False) -> MLPProjector:
    return MLPProjector(features.hidden_size, out_dim, depth, token_merge, pos_embed)


PROJECTORS.register("linear", partial(_build_mlp, depth=1))
for _depth in (1, 2, 3, 4):  # explicit names, as LLaVA spells them
    PROJECTORS.register(f"mlp{_depth}x_gelu", partial(_build_mlp, depth=_depth))
