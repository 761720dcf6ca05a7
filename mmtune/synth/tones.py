"""Synthetic audio-QA task: how many beeps, and is the tone high or low?

Each clip (default 1 s at 16 kHz) holds one to three beeps of one pitch, low (250-450 Hz) or
high (1200-2000 Hz), at random times and loudness over faint noise. Clips are real 16-bit WAV
files (soundfile), so training exercises the audio decoder. Silence answers nothing.

``generate(out_dir)`` writes the layout described in :mod:`mmtune.synth.common`, with
clips in ``audios/``. Training records ask both questions (random order, two turns); test
records ask one, with answers balanced per type. A test record::

    {"id": "test_00003", "audios": ["audios/test_00003.wav"],
     "messages": [{"role": "user", "content": "<audio>\\nhow many beeps are there ?"},
                  {"role": "assistant", "content": "two"}],
     "meta": {"type": "count", "split": "tones", "beeps": 2, "pitch": "high", ...}}
"""
from __future__ import annotations

import os
import random

import numpy as np

from ..data.media.audio import write_wav
from .shapes_draw import COUNT_WORDS
from .common import balanced, user_turn, vocab_of, write_task

__all__ = ["PITCHES", "ANSWERS", "VOCAB", "generate", "render_tones", "random_tones"]

PITCHES: tuple[str, ...] = ("low", "high")
PITCH_HZ: dict[str, tuple[float, float]] = {"low": (250.0, 450.0), "high": (1200.0, 2000.0)}
ANSWERS: dict[str, tuple[str, ...]] = {"count": COUNT_WORDS, "pitch": PITCHES}
Q_COUNT = "how many beeps are there ?"
Q_PITCH = "is the tone high or low ?"
CAPTION_PROMPTS: tuple[str, ...] = ("describe the sound .", "what do you hear ?")
CAPTION = "{count} {pitch} {beeps} ."
BEEP_S = (0.10, 0.16)  # beep length range, seconds
GAP_S = 0.08  # least silence between beeps, so they stay countable
FADE_S = 0.01  # raised-cosine edges: no clicks that would sound like extra beeps


def random_tones(rng: random.Random, duration: float, count: int | None = None,
                 pitch: str | None = None) -> dict:
    """A clip description: pitch, frequency, amplitude, and (start, length) of each beep."""
    count = count or rng.randint(1, len(COUNT_WORDS))
    pitch = pitch or rng.choice(PITCHES)
    lengths = [rng.uniform(*BEEP_S) for _ in range(count)]
    slack = duration - sum(lengths) - GAP_S * (count + 1)
    if slack < 0:
        raise ValueError(f"{count} beeps do not fit in {duration} s")
    # Split the slack at random between the count + 1 gaps (sorted uniform cut points).
    cuts = sorted(rng.uniform(0, slack) for _ in range(count))
    extra = [b - a for a, b in zip([0.0] + cuts, cuts)]
    beeps, t = [], 0.0
    for length, more in zip(lengths, extra):
        t += GAP_S + more
        beeps.append((round(t, 4), round(length, 4)))
        t += length
    return {"count": count, "pitch": pitch, "freq": round(rng.uniform(*PITCH_HZ[pitch]), 1),
            "amplitude": round(rng.uniform(0.3, 0.6), 3), "beeps": beeps,
            "noise_seed": rng.randrange(2**31)}


def render_tones(clip: dict, sample_rate: int, duration: float) -> np.ndarray:
    """float32 [S] waveform in [-1, 1] of the clip description."""
    n = int(round(sample_rate * duration))
    wave = np.random.default_rng(clip["noise_seed"]).normal(0.0, 0.005, n).astype(np.float32)
    fade = int(FADE_S * sample_rate)
    for start, length in clip["beeps"]:
        a, m = int(start * sample_rate), int(length * sample_rate)
        t = np.arange(m) / sample_rate
        env = np.ones(m)
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        env[:fade], env[m - fade:] = ramp, ramp[::-1]
        wave[a:a + m] += (clip["amplitude"] * env * np.sin(2 * np.pi * clip["freq"] * t)).astype(np.float32)
    return np.clip(wave, -1.0, 1.0)


def _question(qtype: str, clip: dict) -> tuple[str, str]:
    if qtype == "count":
        return Q_COUNT, COUNT_WORDS[clip["count"] - 1]
    if qtype == "pitch":
        return Q_PITCH, clip["pitch"]
    raise ValueError(f"unknown question type {qtype!r}")


def caption_for(clip: dict) -> str:
    return CAPTION.format(count=COUNT_WORDS[clip["count"] - 1], pitch=clip["pitch"],
                          beeps="beep" if clip["count"] == 1 else "beeps")


def _public(clip: dict) -> dict:
    return {"beeps_count": clip["count"], "pitch": clip["pitch"], "freq": clip["freq"], "beeps": clip["beeps"]}


def _build_vocab() -> list[str]:
    texts = [Q_COUNT, Q_PITCH, *CAPTION_PROMPTS, *COUNT_WORDS, *PITCHES]
    texts += [caption_for({"count": n, "pitch": p}) for n in range(1, len(COUNT_WORDS) + 1) for p in PITCHES]
    return vocab_of(texts)


VOCAB: list[str] = _build_vocab()


def generate(out_dir: str | os.PathLike, n_train: int = 4000, n_test: int = 400, seed: int = 0,
             sample_rate: int = 16000, duration: float = 1.0) -> dict:
    """Write the tones dataset to ``out_dir``; returns the meta dict (also in meta.json)."""
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "audios"), exist_ok=True)
    rng_train = random.Random(f"mmtune.synth_tones:{seed}:train")
    rng_cap = random.Random(f"mmtune.synth_tones:{seed}:caption")
    rng_test = random.Random(f"mmtune.synth_tones:{seed}:test")

    def write(rel: str, clip: dict) -> None:
        write_wav(os.path.join(out_dir, rel), render_tones(clip, sample_rate, duration), sample_rate)

    train, captions, test = [], [], []
    for i in range(n_train):
        clip = random_tones(rng_train, duration)
        name, rel = f"train_{i:05d}", f"audios/train_{i:05d}.wav"
        write(rel, clip)
        types = list(ANSWERS)
        rng_train.shuffle(types)
        messages = []
        for j, qtype in enumerate(types):
            q, a = _question(qtype, clip)
            messages += [user_turn(q, ("audio",) if j == 0 else ()), {"role": "assistant", "content": a}]
        meta = {"split": "tones", **_public(clip)}
        train.append({"id": name, "messages": messages, "audios": [rel],
                      "meta": {"type": "qa", "types": types, **meta}})
        captions.append({"id": f"{name}_cap", "audios": [rel],
                         "messages": [user_turn(rng_cap.choice(CAPTION_PROMPTS), ("audio",)),
                                      {"role": "assistant", "content": caption_for(clip)}],
                         "meta": {"type": "caption", **meta}})
    pools = {t: balanced(rng_test, a) for t, a in ANSWERS.items()}
    qtypes = tuple(ANSWERS)
    for i in range(n_test):
        qtype = qtypes[i % len(qtypes)]
        answer = next(pools[qtype])
        clip = (random_tones(rng_test, duration, count=COUNT_WORDS.index(answer) + 1) if qtype == "count"
                else random_tones(rng_test, duration, pitch=answer))
        name, rel = f"test_{i:05d}", f"audios/test_{i:05d}.wav"
        write(rel, clip)
        q, a = _question(qtype, clip)
        test.append({"id": name, "messages": [user_turn(q, ("audio",)), {"role": "assistant", "content": a}],
                     "audios": [rel], "meta": {"type": qtype, "split": "tones", **_public(clip)}})
    args = {"n_train": n_train, "n_test": n_test, "seed": seed, "sample_rate": sample_rate, "duration": duration}
    return write_task(out_dir, "mmtune.synth.tones", args, train, captions, test, ANSWERS)
