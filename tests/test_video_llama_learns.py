"""Tiny Video-LLaMA learns: the direction of motion only from the frames' order, the beep
count and pitch only from the audio. Each trains the packaged tiny config on real mp4 / wav
files through the whole data path (about 2 minutes each on 2 CPU cores)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from mmtune.synth import motion as synth_motion, tones as synth_tones
from mmtune.recipes.common import load_recipe_config
from mmtune.registry import RECIPES


def train_and_evaluate(tmp_path: Path, generate: Callable, config: str) -> dict:
    """Synthesise 4000 training clips and 400 held-out questions, train `config`, return eval."""
    generate(tmp_path / "data", n_train=4000, n_test=400, seed=0)
    cfg = load_recipe_config("video_llama", config, [f"data_dir={tmp_path / 'data'}"])
    return RECIPES.get("video_llama")(cfg, tmp_path / "run", resume=False)["eval"]


@pytest.mark.slow
def test_tiny_video_llama_learns_direction_from_frame_order(tmp_path):
    result = train_and_evaluate(tmp_path, synth_motion.generate, "tiny")
    assert result["chance"] == 0.25
    assert result["accuracy"] >= 0.90, result["by_type"]
    # Order matters: shuffled frames keep the axis of motion (~50%) but not its sense.
    assert result["shuffled_frames_accuracy"] <= result["accuracy"] - 0.30, result["by_type"]
    assert result["blank_media_accuracy"] <= result["chance"] + 0.10, result["by_type"]


@pytest.mark.slow
def test_tiny_audio_branch_learns_tones_and_not_silence(tmp_path):
    result = train_and_evaluate(tmp_path, synth_tones.generate, "tiny-audio")
    assert result["accuracy"] >= 0.90, result["by_type"]
    assert abs(result["blank_media_accuracy"] - result["chance"]) <= 0.10, result["by_type"]
