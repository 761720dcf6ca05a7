"""Synthetic video-QA task: which way does the shape move?

One shape from the shapes task (same colours and drawing) slides across `num_frames` frames
in one of four directions; the question names the shape, so only the frames' *order* tells
the answer (a model that ignores time still sees the axis of motion: ~50%, chance 25%).
Clips are real H.264 mp4 files written with PyAV, so training exercises the video decoder.

``generate(out_dir)`` writes the layout described in :mod:`mmtune.synth.common`, with
clips in ``videos/``. A test record::

    {"id": "test_00012", "videos": ["videos/test_00012.mp4"],
     "messages": [{"role": "user", "content": "<video>\\nwhich way does the circle move ?"},
                  {"role": "assistant", "content": "left"}],
     "meta": {"type": "direction", "split": "motion", "shape": "circle", "colour": "red", ...}}
"""
from __future__ import annotations

import os
import random

import numpy as np

from .shapes_draw import COLOURS, SHAPES, _size_range, render
from .common import balanced, user_turn, vocab_of, write_task
from ..data.media.video import write_video

__all__ = ["DIRECTIONS", "ANSWERS", "VOCAB", "generate", "render_clip", "trajectory"]

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
ANSWERS: dict[str, tuple[str, ...]] = {"direction": DIRECTIONS}
Q_DIRECTION = "which way does the {shape} move ?"
CAPTION_PROMPTS: tuple[str, ...] = ("describe the video .", "what happens in the video ?")
CAPTION = "a {colour} {shape} moves {direction} ."
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y grows down


def trajectory(rng: random.Random, direction: str, frame_size: int, num_frames: int,
               size: int) -> list[tuple[int, int]]:
    """Shape centres (cx, cy) per frame: a straight move of a third to a half of the frame."""
    dx, dy = _STEP[direction]
    half = size // 2
    lo, hi = half + 1, frame_size - (size - half) - 1  # centre range keeping the shape inside
    travel = min(rng.randint(frame_size // 3, frame_size // 2), hi - lo)
    start_along = rng.randint(lo, hi - travel)
    across = rng.randint(lo, hi)
    path = [start_along + round(travel * t / max(num_frames - 1, 1)) for t in range(num_frames)]
    if dx + dy < 0:  # left / up: towards smaller coordinates
        path.reverse()
    return [(p, across) if dx else (across, p) for p in path]


def render_clip(shape: str, colour: str, size: int, centres: list[tuple[int, int]],
                frame_size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] frames of one shape at the given centres."""
    return np.stack([np.asarray(render([{"shape": shape, "colour": colour, "cx": cx, "cy": cy,
                                         "size": size}], frame_size)) for cx, cy in centres])


def random_motion(rng: random.Random, frame_size: int, num_frames: int,
                  direction: str | None = None) -> dict:
    """A clip description: shape, colour, size, direction and per-frame centres."""
    lo, hi = _size_range(frame_size, 18, 24)
    size = rng.randint(lo, hi)
    direction = direction or rng.choice(DIRECTIONS)
    return {"shape": rng.choice(SHAPES), "colour": rng.choice(COLOURS), "size": size,
            "direction": direction, "centres": trajectory(rng, direction, frame_size, num_frames, size)}


def write_clip(out_dir: str, rel: str, clip: dict, frame_size: int, fps: int) -> None:
    frames = render_clip(clip["shape"], clip["colour"], clip["size"], clip["centres"], frame_size)
    write_video(os.path.join(out_dir, rel), frames, fps=fps)


def _question(clip: dict) -> tuple[str, str]:
    return Q_DIRECTION.format(shape=clip["shape"]), clip["direction"]


def _public(clip: dict) -> dict:
    return {k: clip[k] for k in ("shape", "colour", "size", "direction", "centres")}


def _build_vocab() -> list[str]:
    texts = [*CAPTION_PROMPTS, *DIRECTIONS]
    texts += [Q_DIRECTION.format(shape=s) for s in SHAPES]
    texts += [CAPTION.format(colour=c, shape=s, direction=d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    return vocab_of(texts)


VOCAB: list[str] = _build_vocab()


def generate(out_dir: str | os.PathLike, n_train: int = 4000, n_test: int = 400, seed: int = 0,
             frame_size: int = 32, num_frames: int = 8, fps: int = 8) -> dict:
    """Write the motion dataset to ``out_dir``; returns the meta dict (also in meta.json)."""
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f"frame_size must be even and >= 16 (H.264 4:2:0); got {frame_size}")
    if num_frames < 2:
        raise ValueError("motion needs at least 2 frames")
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    rng_train = random.Random(f"mmtune.synth_motion:{seed}:train")
    rng_cap = random.Random(f"mmtune.synth_motion:{seed}:caption")
    rng_test = random.Random(f"mmtune.synth_motion:{seed}:test")

    train, captions, test = [], [], []
    for i in range(n_train):
        clip = random_motion(rng_train, frame_size, num_frames)
        name, rel = f"train_{i:05d}", f"videos/train_{i:05d}.mp4"
        write_clip(out_dir, rel, clip, frame_size, fps)
        q, a = _question(clip)
        meta = {"type": "direction", "split": "motion", **_public(clip)}
        train.append({"id": name, "messages": [user_turn(q, ("video",)), {"role": "assistant", "content": a}],
                      "videos": [rel], "meta": meta})
        caption = CAPTION.format(colour=clip["colour"], shape=clip["shape"], direction=clip["direction"])
        captions.append({"id": f"{name}_cap", "videos": [rel],
                         "messages": [user_turn(rng_cap.choice(CAPTION_PROMPTS), ("video",)),
                                      {"role": "assistant", "content": caption}],
                         "meta": {**meta, "type": "caption"}})
    answers = balanced(rng_test, DIRECTIONS)
    for i in range(n_test):
        clip = random_motion(rng_test, frame_size, num_frames, next(answers))
        name, rel = f"test_{i:05d}", f"videos/test_{i:05d}.mp4"
        write_clip(out_dir, rel, clip, frame_size, fps)
        q, a = _question(clip)
        test.append({"id": name, "messages": [user_turn(q, ("video",)), {"role": "assistant", "content": a}],
                     "videos": [rel], "meta": {"type": "direction", "split": "motion", **_public(clip)}})
    args = {"n_train": n_train, "n_test": n_test, "seed": seed, "frame_size": frame_size,
            "num_frames": num_frames, "fps": fps}
    return write_task(out_dir, "mmtune.synth.motion", args, train, captions, test, ANSWERS)
