"""Exact attention for packed rows without a dense block-diagonal mask.

A packed row holds several examples; position ids restart at 0 for each one. transformers'
default path turns that into a dense [L, L] mask, so a 1,500-token row of eight ~190-token
examples computes 8x the attention scores it needs, through SDPA's masked (slow) kernel on
CPU. `varlen` instead runs causal SDPA on each example's segment alone (the fused
`is_causal` kernel), which is the same arithmetic flash-attention's varlen kernel does on
GPU. Registered with transformers' `AttentionInterface`, so any model written against it
(Llama, Mistral, Qwen2, ...) uses it without a patch.

Without segment boundaries (generation, unpacked batches) it falls back to plain SDPA with
the mask transformers built for SDPA, so one model serves training and generation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN = "mmtune_varlen"
SEGMENTS_KWARG = "mmtune_cu_seqlens"  # cumulative segment starts over the flattened [B * L] tokens


def segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] position ids that restart at 0 per example -> cumulative starts [S + 1] over
    the flattened rows (each row's first token starts a segment, padding tails included)."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().squeeze(1)
    end = torch.tensor([flat.numel()], device=flat.device)
    return torch.cat([starts, end]).to(torch.int64)


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """query/key/value [B, H, L, D] -> [B, L, H, D], causal within each segment only."""
    bounds = kwargs.pop(SEGMENTS_KWARG, None)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    b, h, length, d = query.shape

    def flat(t: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> [1, H, B*L, D]
        return t.transpose(0, 1).reshape(1, h, b * length, t.shape[-1])

    q, k, v = flat(query), flat(key), flat(value)
    edges = bounds.tolist()
    parts = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True,
                                            dropout_p=dropout if module.training else 0.0, scale=scaling)
             for s, e in zip(edges[:-1], edges[1:])]
    out = torch.cat(parts, dim=2).reshape(h, b, length, v.shape[-1])  # [H, B, L, D]
    return out.permute(1, 2, 0, 3).contiguous(), None


AttentionInterface.register(VARLEN, varlen_attention)
# The fallback path needs the mask SDPA would get; packed batches get theirs ignored above.
AttentionMaskInterface.register(VARLEN, sdpa_mask)


def set_attention(llm: torch.nn.Module, name: str) -> None:
    """`name`: "varlen" (mmtune's, above), or any transformers implementation ("sdpa",
    "eager", "flash_attention_2", ...)."""
    impl = VARLEN if name == "varlen" else name
    if llm.config._attn_implementation != impl:
        llm.set_attn_implementation(impl)


def uses_varlen(llm: torch.nn.Module) -> bool:
    return llm.config._attn_implementation == VARLEN
