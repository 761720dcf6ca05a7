"""LLaVA's projectors: `linear` (LLaVA-1) and `mlp{N}x_gelu` (LLaVA-1.5 uses mlp2x_gelu)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..registry import PROJECTORS


class MLPProjector(nn.Module):
    """Linear, then (GELU, Linear) x (depth - 1). Keeps the number of tokens."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.net = nn.Sequential(*layers)

    def num_tokens(self, n_in: int) -> int:
        return n_in

    def forward(self, features: torch.Tensor, instruction=None) -> torch.Tensor:
        return self.net(features)  # [B, N, D_enc] -> [B, N, D_llm]


def _build_mlp(in_dim: int, out_dim: int, *, depth: int) -> MLPProjector:
    return MLPProjector(in_dim, out_dim, depth)


PROJECTORS.register("linear", partial(_build_mlp, depth=1))
for _depth in (1, 2, 3, 4):  # explicit names, as LLaVA spells them
    PROJECTORS.register(f"mlp{_depth}x_gelu", partial(_build_mlp, depth=_depth))
