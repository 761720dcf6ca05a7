"""Video encoder: any registered image encoder applied to every frame, plus frame positions.

    videos [n, T, 3, H, W] --fold frames into the batch--> [n*T, 3, H, W]
        --image encoder--> [n*T, N, D] --unfold--> [n, T, N, D]
        (+ frame_position[t] added to every token of frame t)
        --> features [n, T*N, D], frame-major: token t*N + i is token i of frame t

A projector that works over time (the video Q-Former) reshapes back to [n, T, N, D] with
`num_frames` = T; a plain MLP projector just sees T*N tokens. As with Video-LLaMA's
`video_frame_position_embedding`, the positions are an `nn.Embedding` (N(0, 1) init), so they
tell frames apart even while the encoder is frozen; they train with the encoder.

Config (`type: video_frames`)::

    arch: {frame_encoder: {type: conv, arch: {...}},   # any EncoderConfig, built via ENCODERS
           num_frames: 8, fps: null, backend: pyav, frame_positions: true}

`path`, when given, is a directory this encoder saved (its own json + the frame tower in
`frames/`); the frame tower's pretrained weights go in `arch.frame_encoder.path`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import EncoderConfig, from_dict, to_dict
from ..data.media.video import BACKENDS, load_video
from ..registry import ENCODERS
from .base import ImageSpec

_ARCH = "video_frames.json"
_WEIGHTS = "video_frames.safetensors"
_FRAMES_DIR = "frames"


@dataclass
class VideoFramesArch:
    frame_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_frames: int = 8  # T: frames sampled from every clip
    fps: float | None = None  # None: T frames spread uniformly; else one frame every 1/fps s
    backend: str = "pyav"  # or "decord" (same frames, optional dependency)
    frame_positions: bool = True


@dataclass(frozen=True)
class VideoSpec:
    """How a video file becomes the encoder's input. Saved with the model."""

    num_frames: int
    fps: float | None
    backend: str
    frame: ImageSpec  # the frame encoder's own preprocessing


class VideoFramesEncoder(nn.Module):
    """`forward(videos [n, T, 3, H, W]) -> [n, T*N, D]` (see the module docstring)."""

    modality = "video"

    def __init__(self, frame_encoder: nn.Module, arch: VideoFramesArch) -> None:
        super().__init__()
        if arch.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1; got {arch.num_frames}")
        if arch.backend not in BACKENDS:
            raise ValueError(f"backend {arch.backend!r} is not one of {BACKENDS}")
        self.frame_encoder = frame_encoder
        self.arch = arch
        self.hidden_size: int = frame_encoder.hidden_size
        self.tokens_per_frame: int = frame_encoder.num_tokens()
        self.spec = VideoSpec(arch.num_frames, arch.fps, arch.backend, frame_encoder.spec)
        self.frame_position = nn.Embedding(arch.num_frames, self.hidden_size) if arch.frame_positions else None

    @property
    def num_frames(self) -> int:
        return self.spec.num_frames

    def num_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    def load(self, path: str, where: str) -> torch.Tensor:
        """Decode `path` to uint8 [T, H, W, 3]; MediaError names the file and `where`."""
        return load_video(path, where, self.num_frames, self.spec.fps, self.spec.backend)

    def blank(self) -> torch.Tensor:
        """T flat frames of the normalisation mean: zeros after preprocessing."""
        fill = torch.tensor([round(255 * m) for m in self.spec.frame.mean], dtype=torch.uint8)
        return fill.expand(self.num_frames, self.spec.frame.size, self.spec.frame.size, 3).clone()

    def preprocess(self, videos: list[torch.Tensor]) -> torch.Tensor:
        """uint8 [T, H, W, 3] clips -> [n, T, 3, S, S] through the frame encoder's preprocessing."""
        for i, v in enumerate(videos):
            if v.ndim != 4 or v.shape[0] != self.num_frames or v.shape[-1] != 3:
                raise ValueError(f"video {i}: expected uint8 [{self.num_frames}, H, W, 3], got {tuple(v.shape)}")
        frames = [Image.fromarray(f.numpy()) for v in videos for f in v]
        pixels = self.frame_encoder.preprocess(frames)  # [n*T, 3, S, S]
        return pixels.reshape(len(videos), self.num_frames, *pixels.shape[1:])

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        n, t = videos.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames per video, got {t}")
        feats = self.frame_encoder(videos.flatten(0, 1))  # [n*T, N, D]
        feats = feats.reshape(n, t, feats.shape[1], feats.shape[2])  # [n, T, N, D]
        if self.frame_position is not None:
            positions = self.frame_position.weight.to(feats.dtype)  # [T, D]
            feats = feats + positions[None, :, None, :]
        return feats.flatten(1, 2)  # [n, T*N, D], frame-major

    def save_pretrained(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.frame_encoder.save_pretrained(out_dir / _FRAMES_DIR)
        # The saved arch points at the saved tower, so the directory rebuilds on its own.
        saved = dataclasses.replace(self.arch, frame_encoder=dataclasses.replace(
            self.arch.frame_encoder, path=_FRAMES_DIR))
        (out_dir / _ARCH).write_text(json.dumps(to_dict(saved), indent=2))
        if self.frame_position is not None:
            save_file({"frame_position": self.frame_position.weight.detach().contiguous()}, out_dir / _WEIGHTS)


@ENCODERS.register("video_frames")
def build_video_frames(cfg: EncoderConfig) -> VideoFramesEncoder:
    if cfg.path is None:
        arch = from_dict(VideoFramesArch, cfg.arch, "encoder video_frames arch: ")
        return VideoFramesEncoder(ENCODERS.get(arch.frame_encoder.type)(arch.frame_encoder), arch)
    root = Path(cfg.path)
    if not (root / _ARCH).exists():
        raise FileNotFoundError(f"video_frames encoder: {root} holds no {_ARCH}; `path` is a directory this "
                                "encoder saved (put the frame tower's weights in arch.frame_encoder.path)")
    arch = from_dict(VideoFramesArch, json.loads((root / _ARCH).read_text()), f"{root / _ARCH}: ")
    arch.frame_encoder.path = str(root / _FRAMES_DIR)
    encoder = VideoFramesEncoder(ENCODERS.get(arch.frame_encoder.type)(arch.frame_encoder), arch)
    if encoder.frame_position is not None:
        encoder.frame_position.weight.data.copy_(load_file(root / _WEIGHTS)["frame_position"])
    return encoder
