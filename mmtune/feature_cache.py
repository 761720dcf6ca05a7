"""Features of a frozen encoder, computed once per distinct medium, and its decoded media.

A frozen encoder maps the same preprocessed medium to the same features every epoch (LLaVA's
pretrain stage, InstructBLIP, Video-LLaMA), so its forward is repeated work from the second
epoch on. The key is a hash of the *preprocessed* tensor, so any change of content or of
preprocessing (size, mean/std, frames, sample rate, an augmentation) is a different key, never
a stale hit; the features are dropped when the encoder's weights change (a parameter's
version counter moves on every in-place update, `load_state_dict` included) or when autocast
is switched.

Decoding a video costs more than a small encoder's forward, so the cache also keeps decoded
media (`loader`), keyed by the file's identity (real path, size, modification time): the
decode is deterministic for a given encoder (its frame count and sampling), and preprocessing
still runs on every read; media that are not tensors (PIL images) are not kept. Both stores
share one memory budget (`train.feature_cache_mb`); past it, new media are simply not kept.
Decoding runs where the data is read: each DataLoader worker keeps its own decoded media,
within its own budget.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable

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
    def __init__(self, max_bytes: int = 4 << 30) -> None:
        self.store: dict[str, torch.Tensor] = {}  # preprocessed-medium hash -> features
        self.decoded: dict[tuple, torch.Tensor] = {}  # (real path, size, mtime) -> decoded medium
        self.state: tuple | None = None
        self.max_bytes = max_bytes
        self.feature_bytes = self.decoded_bytes = 0
        self.hits = 0
        self.misses = 0
        self.decode_hits = 0

    def _fits(self, nbytes: int) -> bool:
        return self.feature_bytes + self.decoded_bytes + nbytes <= self.max_bytes

    @torch.no_grad()
    def encode(self, encoder: nn.Module, media: torch.Tensor) -> torch.Tensor:
        """media [n, ...] -> features [n, N, D], running `encoder` only on unseen media."""
        state = weights_state(encoder, media.device.type)
        if state != self.state:
            self.store.clear()
            self.feature_bytes = 0
            self.state = state
        keys = [medium_key(m) for m in media]
        first: dict[str, int] = {}  # unseen key -> its first index in this batch
        for i, k in enumerate(keys):
            if k not in self.store:
                first.setdefault(k, i)
        missing = list(first.values())
        if not missing:
            self.hits += len(keys)
            return torch.stack([self.store[k] for k in keys])
        features = encoder(media[missing])
        fresh = dict(zip((keys[i] for i in missing), features))  # views into this batch's output
        for k, f in fresh.items():
            if self._fits(f.nbytes):
                self.store[k] = f.clone()  # a kept view would hold the whole batch's memory
                self.feature_bytes += f.nbytes
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([fresh[k] if k in fresh else self.store[k] for k in keys])

    def loader(self, load: Callable[[str, str], object]) -> Callable[[str, str], object]:
        """`load` (path, where) -> decoded medium, reading each unchanged file once; media that
        are not tensors (PIL images) pass through."""
        def cached(path: str, where: str):
            try:
                st = os.stat(path)
            except OSError:
                return load(path, where)  # the loader names what is wrong with the file
            key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
            hit = self.decoded.get(key)
            if hit is not None:
                self.decode_hits += 1
                return hit.clone()  # a transform downstream must not alter the kept copy
            raw = load(path, where)
            if isinstance(raw, torch.Tensor) and self._fits(raw.nbytes):
                self.decoded[key] = raw.clone()
                self.decoded_bytes += raw.nbytes
            return raw

        return cached
