"""Apply `train`'s speed switches to a model before a stage runs (attention path, frozen-
encoder feature cache, torch.compile). Each is measured on/off in benchmarks/peer_llava.py."""
from __future__ import annotations

import importlib.util

import torch

from ..attention import set_attention
from ..config import TrainConfig
from ..feature_cache import FeatureCache

ATTENTION = ("auto", "varlen", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def attention_for(train: TrainConfig, device: torch.device) -> str:
    """`auto`: packed rows need attention that stays inside each example without a dense
    mask: flash-attention's varlen kernel on CUDA when installed, else mmtune's `varlen`
    (causal SDPA per example). Unpacked rows: SDPA."""
    if train.attention not in ATTENTION:
        raise ValueError(f"train.attention: {train.attention!r} is not one of {list(ATTENTION)}")
    if train.attention != "auto":
        return train.attention
    if not train.packing:
        return "sdpa"
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "varlen"


def configure(model: torch.nn.Module, train: TrainConfig, device: torch.device,
              sharded_weights: bool = False) -> None:
    """`sharded_weights`: the encoders' weights will be partitioned across processes (FSDP,
    ZeRO-3). Their forward is then a collective every process must run, so no feature cache:
    a process whose media were all cached would skip it while another ran it, and hang."""
    set_attention(model.llm, attention_for(train, device))
    if train.feature_cache and not sharded_weights:
        # Kept across stages: the cache empties itself when the encoder's weights change.
        budget = train.feature_cache_mb << 20
        model.feature_caches = {m: model.feature_caches.get(m) or FeatureCache(budget) for m in model.encoders}
    else:
        model.feature_caches = {}
    if train.compile and not getattr(model.llm, "_compiled_call_impl", None):
        model.llm.compile(dynamic=True)  # in place: parameters and state dict keep their names
