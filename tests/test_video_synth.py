"""Synthetic motion / tones / audio-visual tasks: every answer is recoverable from the decoded
media alone (a pixel / sample solver), records are valid, test answers balanced, CLI works."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmtune.cli import main as cli
from mmtune.synth import av as synth_av, motion as synth_motion, tones as synth_tones
from mmtune.data.media.audio import load_audio
from mmtune.data.formats.records import read_records
from mmtune.synth.shapes_draw import BACKGROUND, COUNT_WORDS
from mmtune.data.media.video import load_video

N_TRAIN, N_TEST = 24, 16


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def solve_direction(frames) -> str:
    """Centroid of the non-background pixels in the first and last frame."""
    def centre(frame):
        ys, xs = np.nonzero(np.abs(frame.astype(int) - BACKGROUND).sum(-1) > 90)
        return xs.mean(), ys.mean()
    (x0, y0), (x1, y1) = centre(frames[0].numpy()), centre(frames[-1].numpy())
    dx, dy = x1 - x0, y1 - y0
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def solve_tones(wave) -> tuple[str, str]:
    """(beep count word, pitch) from 10 ms energy frames and the spectrum's peak."""
    w = wave.numpy()
    energy = np.sqrt((w[: len(w) // 160 * 160].reshape(-1, 160) ** 2).mean(1))
    on = energy > 0.05
    count = int(on[0]) + int(np.sum(on[1:] & ~on[:-1]))
    freq = np.argmax(np.abs(np.fft.rfft(w))) * 16000 / len(w)
    return COUNT_WORDS[count - 1], ("high" if freq > 800 else "low")


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    out = tmp_path_factory.mktemp("motion")
    return out, synth_motion.generate(out, n_train=N_TRAIN, n_test=N_TEST, seed=0)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    out = tmp_path_factory.mktemp("tones")
    return out, synth_tones.generate(out, n_train=N_TRAIN, n_test=N_TEST, seed=0)


def test_motion_answers_are_in_the_frames(motion):
    out, meta = motion
    for split in ("train", "test"):
        records, bad = read_records(out / f"{split}.jsonl")
        assert not bad and len(records) == meta["counts"][split]["records"]
        for r in records:
            frames = load_video(r.media["video"][0], r.source, num_frames=8)
            assert frames.shape == (8, 32, 32, 3)
            assert solve_direction(frames) == r.messages[-1]["content"] == r.meta["direction"]
            assert r.meta["shape"] in r.messages[0]["content"]


def test_motion_test_set_is_balanced_and_layout_matches_shapes(motion):
    out, meta = motion
    test = read_jsonl(out / "test.jsonl")
    assert Counter(r["messages"][-1]["content"] for r in test) == {d: N_TEST // 4 for d in synth_motion.DIRECTIONS}
    assert {r["meta"]["type"] for r in test} == {"direction"}
    assert meta["chance"] == {"direction": 0.25}
    assert sorted(p.name for p in out.iterdir()) == ["captions.jsonl", "meta.json", "test.jsonl", "train.jsonl", "videos"]
    captions = read_jsonl(out / "captions.jsonl")
    assert len(captions) == N_TRAIN and all(r["messages"][0]["content"].startswith("<video>\n") for r in captions)


def test_vocabularies_cover_the_text(motion, tones, tmp_path):
    synth_av.generate(tmp_path, n_train=4, n_test=8)
    for root, vocab in ((motion[0], synth_motion.VOCAB), (tones[0], synth_tones.VOCAB), (tmp_path, synth_av.VOCAB)):
        for name in ("train.jsonl", "captions.jsonl", "test.jsonl"):
            for r in read_jsonl(root / name):
                for m in r["messages"]:
                    words = m["content"].replace("<video>\n", "").replace("<audio>\n", "").split()
                    assert set(words) <= set(vocab), (name, m["content"])


def test_tones_answers_are_in_the_samples(tones):
    out, meta = tones
    for split in ("train", "test"):
        for r in read_records(out / f"{split}.jsonl")[0]:
            wave = load_audio(r.media["audio"][0], r.source, 16000)
            assert wave.shape == (16000,)
            count, pitch = solve_tones(wave)
            answers = dict(zip(r.meta["types"], [m["content"] for m in r.messages[1::2]])) if split == "train" \
                else {r.meta["type"]: r.messages[-1]["content"]}
            assert answers.get("count", count) == count and answers.get("pitch", pitch) == pitch


def test_tones_test_set_is_balanced(tones):
    out, meta = tones
    types = meta["counts"]["test"]["types"]
    assert types == {"count": N_TEST // 2, "pitch": N_TEST // 2}
    pitch = meta["counts"]["test"]["answers"]["pitch"]
    assert pitch == {"low": N_TEST // 4, "high": N_TEST // 4}
    assert max(meta["counts"]["test"]["answers"]["count"].values()) - \
        min(meta["counts"]["test"]["answers"]["count"].values()) <= 1


def test_av_records_need_both_streams(tmp_path):
    meta = synth_av.generate(tmp_path, n_train=4, n_test=16, seed=1)
    assert meta["chance"] == {"av": 1 / 8}
    for r in read_records(tmp_path / "test.jsonl")[0]:
        assert r.messages[0]["content"].startswith("<video>\n<audio>\n")
        frames = load_video(r.media["video"][0], r.source, num_frames=8)
        _, pitch = solve_tones(load_audio(r.media["audio"][0], r.source, 16000))
        assert r.messages[-1]["content"] == f"{solve_direction(frames)} {pitch}"
    answers = Counter(r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "test.jsonl"))
    assert answers == {a: 2 for a in synth_av.ANSWERS["av"]}


def test_generation_is_deterministic(tmp_path):
    a = synth_motion.generate(tmp_path / "a", n_train=3, n_test=4, seed=5)
    b = synth_motion.generate(tmp_path / "b", n_train=3, n_test=4, seed=5)
    assert a == b
    assert (tmp_path / "a" / "test.jsonl").read_text() == (tmp_path / "b" / "test.jsonl").read_text()


@pytest.mark.parametrize("task,folder", [("motion", "videos"), ("tones", "audios"), ("av", "audios")])
def test_cli(tmp_path, capsys, task, folder):
    cli(["data", "synth", task, "--out", str(tmp_path), "--n-train", "3", "--n-test", "4"])
    assert "wrote" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "test.jsonl")) == 4 and any((tmp_path / folder).iterdir())
