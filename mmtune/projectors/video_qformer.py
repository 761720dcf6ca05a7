"""Video-LLaMA's projectors, composed from `QFormerProjector`: the video and the audio Q-Former.

Video (Video-LLaMA's vision-language branch)::

    features [n, T*N, D_enc]  (frame-major, from the `video_frames` encoder)
      -> [n*T, N, D_enc]                      frames folded into the batch
      -> frame Q-Former (optional)            BLIP-2's image Q-Former: [n*T, Qf, Hf]
      -> [n, T, Qf, Hf] + frame_position[t]   Video-LLaMA's video_frame_position_embedding
      -> [n, T*Qf, Hf]                        concatenated over time
      -> video Q-Former -> Linear             2 layers, cross-attention in each, 32 queries
      -> [n, K, D_llm]

In Video-LLaMA the frame Q-Former is BLIP-2's pretrained one (frozen; import its weights with
`load_hf_qformer(projector.frame_qformer, ...)`), and everything after it trains. Without
`frame_qformer` the video Q-Former reads the encoder's frame tokens directly (tiny recipes).

Audio (Video-LLaMA's audio-language branch)::

    features [n, S, D_enc] (+ position[s] when `num_positions` is set: ImageBind's segment
    features carry no position; Whisper's already do) -> audio Q-Former -> Linear -> [n, K, D_llm]

Both take `forward(features, instruction=None)`; the Q-Former options (`num_queries`,
`hidden_size`, `num_layers`, ...) are `QFormerProjector`'s, with Video-LLaMA's defaults below.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..parts import FeatureSpec
from ..registry import PROJECTORS
from .qformer import QFormerProjector

# Video-LLaMA's `init_video_Qformer`: 2 BERT layers, cross-attention in every layer, no text.
VIDEO_QFORMER_DEFAULTS: dict[str, Any] = {"num_queries": 32, "num_layers": 2, "cross_attention_frequency": 1,
                                          "instruction_aware": False}
AUDIO_QFORMER_DEFAULTS: dict[str, Any] = {**VIDEO_QFORMER_DEFAULTS, "num_queries": 8}
# BLIP-2's image Q-Former (bert-base, 12 layers, cross-attention every 2nd layer, 32 queries).
FRAME_QFORMER_DEFAULTS: dict[str, Any] = {"num_queries": 32, "instruction_aware": False}


def _query_outputs_only(qformer: QFormerProjector) -> QFormerProjector:
    """A Q-Former whose output is its query states [B, Q, H]: in Video-LLaMA the frame
    Q-Former feeds the video Q-Former directly, so it has no language projection (and an
    unused Linear would count as trainable and trip DDP's unused-parameter check)."""
    qformer.language_projection = nn.Identity()
    return qformer


class VideoQFormerProjector(nn.Module):
    """[n, T*N, D_enc] -> [n, num_queries, D_llm] (see the module docstring)."""

    def __init__(self, in_dim: int, out_dim: int, *, num_frames: int, frame_qformer: dict | None = None,
                 frame_positions: bool = True, **qformer_options: Any) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1; got {num_frames}")
        self.num_frames = num_frames
        self.frame_qformer: QFormerProjector | None = None
        frame_dim = in_dim
        if frame_qformer is not None:
            opts = {**FRAME_QFORMER_DEFAULTS, **frame_qformer}
            hidden = opts.get("hidden_size", 768)  # QFormerProjector's default width
            self.frame_qformer = _query_outputs_only(QFormerProjector(in_dim, hidden, **opts))
            frame_dim = hidden
        # nn.Embedding's N(0, 1) init, as Video-LLaMA's frame embedding: frames differ from step 0.
        self.frame_position = nn.Embedding(num_frames, frame_dim) if frame_positions else None
        self.video_qformer = QFormerProjector(frame_dim, out_dim, **{**VIDEO_QFORMER_DEFAULTS, **qformer_options})

    def num_tokens(self, n_in: int) -> int:
        return self.video_qformer.num_queries

    def forward(self, features: torch.Tensor, instruction=None) -> torch.Tensor:
        n, length, dim = features.shape
        t = self.num_frames
        if length % t:
            raise ValueError(f"video features of {length} tokens do not split into num_frames={t} frames "
                             "(the projector's num_frames must equal the encoder's)")
        x = features.reshape(n * t, length // t, dim)  # [n*T, N, D_enc]
        if self.frame_qformer is not None:
            x = self.frame_qformer(x)  # [n*T, Qf, Hf]
        x = x.reshape(n, t, x.shape[1], x.shape[2])  # [n, T, Q, H]
        if self.frame_position is not None:
            x = x + self.frame_position.weight.to(x.dtype)[None, :, None, :]
        return self.video_qformer(x.flatten(1, 2), instruction)  # [n, T*Q, H] -> [n, K, D_llm]


class AudioQFormerProjector(nn.Module):
    """[n, S, D_enc] -> [n, num_queries, D_llm]: optional learned positions, then a Q-Former."""

    def __init__(self, in_dim: int, out_dim: int, *, num_positions: int | None = None,
                 **qformer_options: Any) -> None:
        super().__init__()
        # Video-LLaMA: nn.Embedding(8, D) over ImageBind's 8 audio segments.
        self.position = nn.Embedding(num_positions, in_dim) if num_positions else None
        self.qformer = QFormerProjector(in_dim, out_dim, **{**AUDIO_QFORMER_DEFAULTS, **qformer_options})

    def num_tokens(self, n_in: int) -> int:
        return self.qformer.num_queries

    def forward(self, features: torch.Tensor, instruction=None) -> torch.Tensor:
        if self.position is not None:
            s = features.shape[1]
            if s > self.position.num_embeddings:
                raise ValueError(f"{s} audio tokens but only num_positions={self.position.num_embeddings}")
            features = features + self.position.weight[:s].to(features.dtype)
        return self.qformer(features, instruction)  # [n, K, D_llm]


def _build_video_qformer(features: FeatureSpec, out_dim: int, **options: Any) -> VideoQFormerProjector:
    # The frame count is the encoder's (set once, in its config), carried by the FeatureSpec.
    return VideoQFormerProjector(features.hidden_size, out_dim, num_frames=features.frames, **options)


def _build_audio_qformer(features: FeatureSpec, out_dim: int, **options: Any) -> AudioQFormerProjector:
    return AudioQFormerProjector(features.hidden_size, out_dim, **options)


PROJECTORS.register("video_qformer", _build_video_qformer)
PROJECTORS.register("audio_qformer", _build_audio_qformer)
