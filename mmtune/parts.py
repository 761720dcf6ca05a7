"""The contracts between a MultimodalLM's parts: encoder -> projector, and what the data side
needs from each medium. A leaf module: every encoder and projector keeps these promises, so
nothing else has to ask a part what it is (no name or signature inspection).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .batch import RawMedium


@dataclass(frozen=True)
class FeatureSpec:
    """What an encoder hands its projector per medium: [tokens, hidden_size], made of `frames`
    equal groups of tokens (1 for an image or a clip of audio, T for T video frames)."""

    hidden_size: int
    tokens: int
    frames: int = 1


class Encoder(Protocol):
    """`forward(media [n, ...]) -> features [n, N, D]`; knows its own files and preprocessing."""

    modality: str  # "image" | "video" | "audio"
    hidden_size: int
    num_frames: int  # frames per medium (1 unless the encoder reads clips of frames)

    def num_tokens(self) -> int: ...

    def load(self, path: str, where: str) -> RawMedium: ...  # raises MediaError naming `where`

    def blank(self) -> RawMedium: ...  # a content-free stand-in (flat image, flat frames, silence)

    def preprocess(self, media: list[RawMedium]) -> torch.Tensor: ...

    def save_pretrained(self, out_dir) -> None: ...

    def __call__(self, media: torch.Tensor) -> torch.Tensor: ...


def feature_spec(encoder: Encoder) -> FeatureSpec:
    return FeatureSpec(encoder.hidden_size, encoder.num_tokens(), encoder.num_frames)


class Projector(Protocol):
    """`forward(features [n, N, D_enc], instruction=None) -> [n, K, D_llm]`. Built by a
    registered builder `(features: FeatureSpec, d_llm: int, **options)`."""

    def num_tokens(self, n_in: int) -> int: ...

    def __call__(self, features: torch.Tensor, instruction=None) -> torch.Tensor: ...
