"""Features of a frozen encoder, computed once per distinct medium.

A frozen encoder maps the same preprocessed medium to the same features every epoch (LLaVA's
pretrain stage, InstructBLIP, Video-LLaMA), so its forward is repeated work from the second
epoch on. The key is a hash of the *preprocessed* tensor, so any change of content or of
preprocessing (size, mean/std, frames, sample rate, an augmentation) is a different key, never
a stale hit; the cache empties itself when the encoder's weights change (a parameter's
version counter moves on every in-place update, `load_state_dict` included) or when autocast
is switched.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def medium_key(medium: torch.Tensor) -> str:
    data = medium.detach().contiguous().cpu()
    h = hashlib.sha1(str((tuple(data.shape), str(data.dtype))).encode())
    h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_state(encoder: nn.Module, device_type: str) -> tuple:
    tensors = list(encoder.parameters()) + list(encoder.buffers())
    return (tuple((t.data_ptr(), t._version) for t in tensors), torch.is_autocast_enabled(device_type))


class FeatureCache:
    def __init__(self) -> None:
        self.store: dict[str, torch.Tensor] = {}
        self.state: tuple | None = None
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def encode(self, encoder: nn.Module, media: torch.Tensor) -> torch.Tensor:
        """media [n, ...] -> features [n, N, D], running `encoder` only on unseen media."""
        state = weights_state(encoder, media.device.type)
        if state != self.state:
            self.store.clear()
            self.state = state
        keys = [medium_key(m) for m in media]
        first: dict[str, int] = {}  # unseen key -> its first index in this batch
        for i, k in enumerate(keys):
            if k not in self.store:
                first.setdefault(k, i)
        missing = list(first.values())
        if missing:
            features = encoder(media[missing])
            for i, f in zip(missing, features):
                self.store[keys[i]] = f
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.store[k] for k in keys])
