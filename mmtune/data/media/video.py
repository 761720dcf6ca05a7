"""Video files -> sampled RGB frames, with errors that name the file and the record.

`load_video(path, where, num_frames)` returns `uint8 [T, H, W, 3]` with T == num_frames:

- uniform (default): frame indices `round(linspace(0, F - 1, T))` over the F frames of the
  clip, so the first and last frames are always included (motion direction needs both ends);
- `fps=r`: the frames shown at times 0, 1/r, 2/r, ... (index `round(k * clip_fps / r)`),
  and the last frame repeated when the clip ends before T samples.

Clips shorter than T frames repeat frames, so every video of a batch has the same T.

PyAV (`av`, bundles FFmpeg) is the default backend; `backend="decord"` reads the same
frames with decord (optional dependency), which is faster at random access in long clips.
Both decode the same stream to RGB24 through FFmpeg, and the tests check they agree. decord
0.6.0 fails on some tiny frame widths (48 or 72 px: dmlc/decord#336); PyAV reads those.
`write_video` is the encoder side, used by the synthetic tasks and the tests.
"""
from __future__ import annotations

import os
from typing import Literal

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from .image import MediaError, media_file

Backend = Literal["pyav", "decord"]
BACKENDS: tuple[str, ...] = ("pyav", "decord")


def frame_indices(total: int, num_frames: int, fps: float | None = None,
                  clip_fps: float | None = None) -> list[int]:
    """Which of `total` frames to keep: uniform over the clip, or every 1/fps seconds."""
    if total < 1:
        raise ValueError("a clip with no frames has nothing to sample")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1; got {num_frames}")
    if fps is None:
        return np.rint(np.linspace(0, total - 1, num_frames)).astype(int).tolist()
    if fps <= 0 or not clip_fps or clip_fps <= 0:
        raise ValueError(f"fps sampling needs fps > 0 and the clip's frame rate; got {fps}, {clip_fps}")
    step = clip_fps / fps
    return [min(int(round(k * step)), total - 1) for k in range(num_frames)]


def load_video(path: str | os.PathLike, where: str, num_frames: int, fps: float | None = None,
               backend: Backend = "pyav") -> torch.Tensor:
    """`num_frames` RGB frames of the video at `path` as uint8 [T, H, W, 3].

    A missing, empty, truncated or undecodable file raises MediaError naming `path` and
    `where` (the record's source, e.g. "data.jsonl:12").
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {BACKENDS}")
    if num_frames < 1 or (fps is not None and fps <= 0):
        raise ValueError(f"need num_frames >= 1 and fps > 0 (or None); got {num_frames}, {fps}")
    path = media_file(path, where, "video")
    try:
        frames = (_decord_frames if backend == "decord" else _pyav_frames)(path, num_frames, fps)
    except MediaError as e:
        raise MediaError(f"{where}: video {path} {e}", e.reason) from None
    except (av.error.FFmpegError, RuntimeError, OSError, ValueError, _decord_error()) as e:
        raise MediaError(f"{where}: video {path} cannot be decoded ({str(e).splitlines()[0]})") from None
    return torch.from_numpy(frames)


def _decord_error() -> type[Exception]:
    """decord's own error type (it subclasses Exception only), or a stand-in without decord."""
    try:
        from decord import DECORDError
    except ImportError:
        return MediaError
    return DECORDError


def _pyav_frames(path: str, num_frames: int, fps: float | None) -> np.ndarray:
    with av.open(path) as container:
        if not container.streams.video:
            raise MediaError("has no video stream")
        stream = container.streams.video[0]
        # One thread, as decord gets below: DataLoader workers already decode clips in
        # parallel, and FFmpeg's frame threads cost more to start than a short clip takes.
        stream.thread_type = "NONE"
        # One converter for the clip: per-frame `to_ndarray(format=...)` rebuilds FFmpeg's
        # scaler every frame, which doubles the time of a small clip.
        to_rgb = VideoReformatter()
        clip_fps = float(stream.average_rate) if stream.average_rate else None
        total = stream.frames  # from the container header; 0 when the format does not say
        if total <= 0:
            # No count in the header (e.g. some WebM/MKV): decode everything, then pick.
            frames = [to_rgb.reformat(f, format="rgb24").to_ndarray() for f in container.decode(stream)]
            if not frames:
                raise MediaError("has no decodable frames", "no_content")
            return np.stack([frames[i] for i in frame_indices(len(frames), num_frames, fps, clip_fps)])
        wanted = frame_indices(total, num_frames, fps, clip_fps)
        wanted_set, last = set(wanted), max(wanted)
        kept: dict[int, np.ndarray] = {}
        decoded, previous = 0, None
        # Decode in order and stop after the last wanted frame: only what is needed is converted.
        for frame in container.decode(stream):
            if decoded in wanted_set:
                kept[decoded] = to_rgb.reformat(frame, format="rgb24").to_ndarray()
            decoded, previous = decoded + 1, frame
            if decoded > last:
                break
        if last not in kept:
            # Headers can overcount by a frame or two (edit lists); a cut file falls far short.
            if previous is None or total - decoded > max(1, total // 50):
                raise MediaError(f"is truncated: the header says {total} frames, {decoded} could be decoded",
                                 "truncated")
            tail = to_rgb.reformat(previous, format="rgb24").to_ndarray()
            kept.update({i: tail for i in wanted if i not in kept})
    return np.stack([kept[i] for i in wanted])


def _decord_frames(path: str, num_frames: int, fps: float | None) -> np.ndarray:
    try:
        import decord
    except ImportError:
        raise ImportError("backend='decord' needs the decord package: pip install decord") from None
    reader = decord.VideoReader(path, num_threads=1)
    total = len(reader)
    if total <= 0:
        raise MediaError("has no decodable frames", "no_content")
    wanted = frame_indices(total, num_frames, fps, reader.get_avg_fps())
    return reader.get_batch(wanted).asnumpy()


def write_video(path: str | os.PathLike, frames: np.ndarray | torch.Tensor, fps: int = 8,
                crf: int = 18, faststart: bool = False) -> None:
    """Write uint8 [T, H, W, 3] RGB frames as H.264 mp4 (yuv420p, so H and W must be even).

    `faststart` moves the index (moov atom) to the front, as web videos have it; a truncated
    faststart file still opens and loses its last frames, a default one does not open at all.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3]; got {frames.dtype} {frames.shape}")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(os.fspath(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
