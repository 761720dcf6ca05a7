"""Synthetic audio-visual task: the answer needs both the video and the audio.

Each record holds a motion clip (:mod:`synth_motion`) and a tones clip (:mod:`synth_tones`)
and asks "which way does the circle move and is the tone high or low ?"; the answer is two
words, direction then pitch ("left high"), scored as a whole: chance is 1/8, one stream alone
gets at most 1/2 (the right word from it, a guess for the other).

``generate(out_dir)`` writes the layout of :mod:`mmtune.synth.common` with clips in
``videos/`` and ``audios/``; records carry both ``<video>`` and ``<audio>`` placeholders::

    {"id": "test_00004", "videos": ["videos/test_00004.mp4"], "audios": ["audios/test_00004.wav"],
     "messages": [{"role": "user", "content": "<video>\\n<audio>\\nwhich way does the square move and
                   is the tone high or low ?"}, {"role": "assistant", "content": "up low"}],
     "meta": {"type": "av", "split": "av", "direction": "up", "pitch": "low", ...}}
"""
from __future__ import annotations

import os
import random

from ..data.media.audio import write_wav
from .shapes_draw import COLOURS, SHAPES
from .common import balanced, user_turn, vocab_of, write_task
from .motion import DIRECTIONS, random_motion, write_clip
from .tones import PITCHES, random_tones, render_tones

__all__ = ["ANSWERS", "VOCAB", "generate"]

ANSWERS: dict[str, tuple[str, ...]] = {"av": tuple(f"{d} {p}" for d in DIRECTIONS for p in PITCHES)}
Q_AV = "which way does the {shape} move and is the tone high or low ?"
CAPTION_PROMPTS: tuple[str, ...] = ("describe the video and the sound .",)
CAPTION = "a {colour} {shape} moves {direction} with {pitch} beeps ."
VOCAB: list[str] = vocab_of([*CAPTION_PROMPTS, *[Q_AV.format(shape=s) for s in SHAPES], *ANSWERS["av"],
                             *[CAPTION.format(colour=c, shape=s, direction=d, pitch=p)
                               for c in COLOURS for s in SHAPES for d in DIRECTIONS for p in PITCHES]])


def generate(out_dir: str | os.PathLike, n_train: int = 4000, n_test: int = 400, seed: int = 0,
             frame_size: int = 32, num_frames: int = 8, fps: int = 8, sample_rate: int = 16000,
             duration: float = 1.0) -> dict:
    """Write the audio-visual dataset to ``out_dir``; returns the meta dict (also in meta.json)."""
    out_dir = os.fspath(out_dir)
    for sub in ("videos", "audios"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    rng = {s: random.Random(f"mmtune.synth_av:{seed}:{s}") for s in ("train", "test", "caption")}

    def record(split: str, i: int, answer: str | None) -> dict:
        r = rng[split]
        direction, pitch = answer.split() if answer else (None, None)
        clip = random_motion(r, frame_size, num_frames, direction)
        tones = random_tones(r, duration, pitch=pitch)
        name = f"{split}_{i:05d}"
        video, audio = f"videos/{name}.mp4", f"audios/{name}.wav"
        write_clip(out_dir, video, clip, frame_size, fps)
        write_wav(os.path.join(out_dir, audio), render_tones(tones, sample_rate, duration), sample_rate)
        q = Q_AV.format(shape=clip["shape"])
        a = f"{clip['direction']} {tones['pitch']}"
        return {"id": name, "messages": [user_turn(q, ("video", "audio")), {"role": "assistant", "content": a}],
                "videos": [video], "audios": [audio],
                "meta": {"type": "av", "split": "av", "shape": clip["shape"], "colour": clip["colour"],
                         "direction": clip["direction"], "pitch": tones["pitch"], "beeps_count": tones["count"]}}

    train = [record("train", i, None) for i in range(n_train)]
    captions = []
    for r in train:
        m = r["meta"]
        text = CAPTION.format(colour=m["colour"], shape=m["shape"], direction=m["direction"], pitch=m["pitch"])
        captions.append({"id": f"{r['id']}_cap", "videos": r["videos"], "audios": r["audios"],
                         "messages": [user_turn(rng["caption"].choice(CAPTION_PROMPTS), ("video", "audio")),
                                      {"role": "assistant", "content": text}],
                         "meta": {**m, "type": "caption"}})
    answers = balanced(rng["test"], ANSWERS["av"])
    test = [record("test", i, next(answers)) for i in range(n_test)]
    args = {"n_train": n_train, "n_test": n_test, "seed": seed, "frame_size": frame_size,
            "num_frames": num_frames, "fps": fps, "sample_rate": sample_rate, "duration": duration}
    return write_task(out_dir, "mmtune.synth.av", args, train, captions, test, ANSWERS)
