"""Broken video and audio files in a training JSONL, through the real data path
(`training_data` -> DataLoader -> DataStats, and a recipe stage): `on_bad_sample: error`
raises naming the file and the record's line; `skip` drops and counts them."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmtune.synth import av as synth_av
from mmtune.data.collate import DataStats
from mmtune.data.media.image import MediaError
from mmtune.model import MultimodalLM
from mmtune.recipes.common import load_recipe_config, training_data
from mmtune.registry import RECIPES

# record index -> (file, damage): line i + 1 of train.jsonl holds record i
BROKEN = {1: ("videos/train_00001.mp4", "truncated"), 2: ("videos/train_00002.mp4", "empty"),
          3: ("audios/train_00003.wav", "truncated"), 4: ("audios/train_00004.wav", "empty")}


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("av_clean")
    synth_av.generate(out, n_train=8, n_test=4, seed=4)
    return out


def damaged(clean: Path, tmp_path: Path, index: int | None = None) -> Path:
    """A copy of the data with BROKEN applied (or only BROKEN[index])."""
    out = tmp_path / "data"
    shutil.copytree(clean, out)
    for i, (rel, how) in BROKEN.items():
        if index is not None and i != index:
            continue
        data = (out / rel).read_bytes()
        (out / rel).write_bytes(data[: len(data) // 2] if how == "truncated" else b"")
    return out


def config(data: Path, on_bad_sample: str, *extra: str):
    return load_recipe_config("video_llama", "tiny", [
        "model.preset=tiny-video-llama-av", f"data_dir={data}", f"train.on_bad_sample={on_bad_sample}", *extra])


@pytest.mark.parametrize("index", sorted(BROKEN))
def test_error_names_the_file_and_the_line(clean_dir, tmp_path, index):
    data = damaged(clean_dir, tmp_path, index)
    cfg = config(data, "error")
    dataset, collate_fn, _ = training_data(MultimodalLM.build(cfg.model), cfg, data / "train.jsonl", None)
    rel, how = BROKEN[index]
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_fn)
    with pytest.raises(MediaError) as e:
        next(iter(loader))
    message = str(e.value)
    assert f"{data / 'train.jsonl'}:{index + 1}" in message and str(data / rel) in message
    if how == "empty":
        assert "empty" in message


def test_skip_drops_and_counts_through_a_stage(clean_dir, tmp_path):
    data = damaged(clean_dir, tmp_path)
    cfg = config(data, "skip")
    dataset, collate_fn, _ = training_data(MultimodalLM.build(cfg.model), cfg, data / "train.jsonl", None)
    stats = DataStats()
    for batch in torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_fn):
        stats.update(batch)
    assert stats.examples == 8 - len(BROKEN) and len(stats.dropped) == len(BROKEN)
    for i, (rel, _) in BROKEN.items():
        assert any(d.startswith(f"train_{i:05d}: ") and str(data / rel) in d for d in stats.dropped)

    summary = RECIPES.get("video_llama")(
        config(data, "skip", "stages.finetune.batch_size=8", "stages.finetune.max_steps=1"),
        tmp_path / "run", stages=["finetune"], evaluate=False, fresh=True)
    counted = summary["stages"]["finetune"]["data"]
    assert counted["examples"] == 8 - len(BROKEN) and counted["dropped"] == len(BROKEN)
