"""Video-LLaMA wiring: video and audio records go through the collator (decode, blank, frames
shuffled in time) into the model; the recipe trains, saves, evaluates; config errors name the field."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmtune.cli import main as cli
from mmtune.synth import av as synth_av, motion as synth_motion
from mmtune.data.collate import collate
from mmtune.data.formats.records import read_records
from mmtune.model import MultimodalLM
from mmtune.recipes.common import example_builder, load_recipe_config
from mmtune.registry import RECIPES
from mmtune.train.evaluate import ShuffledFrames

QUICK = ["stages.pretrain.max_steps=2", "stages.finetune.max_steps=2", "stages.pretrain.batch_size=4",
         "stages.finetune.batch_size=4", "train.log_every=1", "eval.limit=4", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def av_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("av")
    synth_av.generate(out, n_train=8, n_test=4, seed=3)
    return out


@pytest.fixture(scope="module")
def motion_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("motion")
    synth_motion.generate(out, n_train=8, n_test=4, seed=3)
    return out


def av_model_and_config(av_dir: Path, *overrides: str):
    cfg = load_recipe_config("video_llama", "tiny", ["model.preset=tiny-video-llama-av", f"data_dir={av_dir}",
                                                     *overrides])
    torch.manual_seed(0)
    return MultimodalLM.build(cfg.model).eval(), cfg


def test_video_and_audio_records_reach_the_model(av_dir):
    model, cfg = av_model_and_config(av_dir)
    records, _ = read_records(av_dir / "train.jsonl")
    examples = [example_builder(model, cfg, None).encode(r) for r in records[:2]]
    batch = collate(examples, model.tokenizer.pad_token_id)
    assert batch.media["video"].shape == (2, 8, 3, 32, 32)  # [n, T, 3, S, S]
    assert batch.media["audio"].shape == (2, 80, 100)  # [n, mels, 2P]: 1 s of log-mel
    for m in ("video", "audio"):
        assert (batch.input_ids == model.placeholder_ids[m]).sum() == 2 * model.tokens_per_medium(m)
    with torch.no_grad():
        assert torch.isfinite(model(batch)).all()

    blank = collate([example_builder(model, cfg, None, blank=True).encode(r) for r in records[:2]],
                    model.tokenizer.pad_token_id)
    frames = blank.media["video"]  # flat frames of the mean colour (to 1/255): ~0 after normalising
    assert torch.allclose(frames, torch.zeros_like(frames), atol=2 / 255) and frames.unique().numel() == 1
    silence = model.encoders["audio"].preprocess([model.encoders["audio"].blank()])
    assert torch.equal(blank.media["audio"], silence.expand_as(blank.media["audio"]))


def test_shuffled_frames_permute_time_only_and_repeat(av_dir):
    model, cfg = av_model_and_config(av_dir)
    (record, *_), _ = read_records(av_dir / "test.jsonl")
    ordered = example_builder(model, cfg, None).encode_prompt(record).media
    shuffle = example_builder(model, cfg, None, media_transform={"video": ShuffledFrames(0)})
    shuffled = shuffle.encode_prompt(record).media
    assert torch.equal(shuffled["audio"], ordered["audio"])  # other media untouched
    frames, mixed = ordered["video"][0], shuffled["video"][0]  # [T, 3, S, S]
    assert not torch.equal(frames, mixed)
    assert sorted(f.sum().item() for f in frames) == sorted(f.sum().item() for f in mixed)
    assert torch.equal(shuffle.encode_prompt(record).media["video"], shuffled["video"])  # same order again
    with pytest.raises(ValueError, match="cannot be shuffled"):
        ShuffledFrames(0)(frames[:1], "one-frame")


def test_projector_takes_the_encoders_frame_count(av_dir):
    model, _ = av_model_and_config(av_dir, "model.encoders.video.arch.num_frames=4")
    assert model.projectors["video"].num_frames == 4 and model.encoders["video"].num_frames == 4
    with pytest.raises(ValueError, match=r"model.projectors.video.options.num_frames=6.*arch.num_frames"):
        av_model_and_config(av_dir, "model.projectors.video.options.num_frames=6")


def test_recipe_trains_the_projector_then_cli_evaluates(motion_dir, tmp_path, capsys):
    run = tmp_path / "run"
    cli(["train", "video_llama", "--config", "tiny", "--output-dir", str(run), "--data", str(motion_dir), *QUICK])
    summary = json.loads((run / "train_summary.json").read_text())
    rows = {r["part"]: r for r in summary["stages"]["finetune"]["parameters"]}
    assert rows["encoder.video"]["trainable"] == 0 and rows["projector.video"]["trainable"] > 0
    assert summary["stages"]["pretrain"]["data"]["examples"] == 8  # 2 steps x 4 captions
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "pretrain/model", "model"):
        assert (run / name).exists(), name
    (run / "eval.json").unlink()
    cli(["eval", str(run)])
    result = json.loads((run / "eval.json").read_text())
    assert result["n"] == 4 and result["shuffled_frames_accuracy"] is not None
    assert result["by_type"]["direction"]["shuffled_frames_accuracy"] is not None
    assert "shuffled frames" in capsys.readouterr().out
    model = MultimodalLM.from_pretrained(run / "model")
    assert model.projectors["video"].num_frames == 8


def test_config_errors_name_the_field(motion_dir):
    recipe = RECIPES.get("video_llama")
    cfg = load_recipe_config("video_llama", "tiny", [f"data_dir={motion_dir}",
                                                     "stages.finetune.train=[projector, encoder]"])
    with pytest.raises(ValueError, match="stages.finetune.train"):
        recipe(cfg, "unused")
    cfg = load_recipe_config("video_llama", "tiny", ["model.encoders.video.trainable=true"])
    with pytest.raises(ValueError, match="model.encoders.video.trainable"):
        recipe(cfg, "unused")
    cfg = load_recipe_config("video_llama", "tiny", ["model.preset=tiny-llava"])
    cfg = replace(cfg, model=replace(cfg.model, encoders={"image": cfg.model.encoders["image"]}))
    with pytest.raises(ValueError, match="model.encoders"):
        recipe(cfg, "unused")
