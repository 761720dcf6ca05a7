"""Exact resume for every recipe: a run stopped mid-epoch (twice) and resumed trains on the same
records with the same losses, bit for bit, and ends with the same weights as one that never
stopped. Training that draws random numbers (LoRA dropout, Q-Former dropout, diffusion noise
and conditioning dropout, EMA) is included: a resumed run must not be one draw out of step."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL

import mmtune.recipes  # noqa: F401  (fills RECIPES)
from mmtune.registry import RECIPES
from mmtune.synth import edits, motion, shapes, text

STEPS = ["train.log_every=1", "train.log_record_ids=true", "train.save_every=2", "max_steps=6"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    shapes.generate(root / "shapes", n_train=32, n_test=4, seed=3, image_size=32)
    motion.generate(root / "motion", n_train=32, n_test=4, seed=3)
    edits.generate(root / "edits", n_train=32, n_test=4, seed=1, image_size=32)
    text.generate(root / "text", n_train=32, n_test=4, seed=1)
    return root


def lora_base(root: Path) -> Path:
    from test_qlora import save_llama

    path = root / "base"
    if not path.exists():
        save_llama(path)
    return path


CASES = {
    # recipe, config, data, overrides; batch 4 on 32 records: 8 micro-batches an epoch, so
    # steps 1-6 (grad_accum 1) stay inside the first epoch.
    "llava-full": ("llava", "tiny", "shapes", [*SMALL, "stages.finetune.batch_size=4"]),
    "llava-lora-dropout": ("llava", "tiny", "shapes", [*SMALL, "stages.finetune.batch_size=4",
                                                        "model.llm.lora.r=4", "model.llm.lora.dropout=0.2"]),
    "qlora-dropout": ("qlora", "tiny", "text", ["stages.sft.batch_size=4", "model.llm.lora.dropout=0.1"]),
    "instructblip": ("instructblip", "tiny", "shapes",
                     [*SMALL, "model.projectors.image.options.hidden_size=32",
                      "model.projectors.image.options.intermediate_size=64",
                      "model.projectors.image.options.num_heads=2", "stages.instruct.batch_size=4"]),
    "video_llama": ("video_llama", "tiny", "motion", ["stages.finetune.batch_size=4"]),
    "instruct_pix2pix-ema": ("instruct_pix2pix", "tiny", "edits",
                             ["model.unet.sample_size=16", "model.unet.block_out_channels=[8,16]",
                              "model.unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
                              "model.unet.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]", "edit.resolution=16",
                              "stages.train.batch_size=4", "edit.ema_decay=0.9"]),
}


def steps_of(run: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r["loss"], r["record_ids"]) for r in rows]


@pytest.mark.parametrize("case", list(CASES))
def test_stopped_twice_mid_epoch_resumes_bit_for_bit(case, data, tmp_path):
    recipe_name, config, data_name, overrides = CASES[case]
    recipe = RECIPES.get(recipe_name)
    over = [f"data_dir={data / data_name}", *overrides, *STEPS]
    if recipe_name == "qlora":
        over.append(f"model.llm.path={lora_base(data)}")
    cfg = recipe.load_config(config, over)
    stage = list(cfg.stages)[-1]
    stages = [stage]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    recipe(cfg, whole, stages=stages, evaluate=False, fresh=True)
    starts = []
    for stop in (3, 5, None):  # stopped after step 3 (checkpoint 2) and after step 5 (checkpoint 4)
        summary = recipe(cfg, cut, stages=stages, evaluate=False, stop_after=stop, fresh=True)
        starts.append((summary["stages"][stage] if "stages" in summary else summary)["resumed_from"])
    assert starts == [0, 2, 4]
    expected, got = steps_of(whole), steps_of(cut)
    assert [s[1] for s in got] == [1, 2, 3, 4, 5, 6]  # steps logged past a checkpoint were dropped
    assert got == expected  # same records, same losses (to the 6 decimals logged)
    # The final weights (the run's model, written once; EMA weights for pix2pix), bit for bit.
    files = sorted(f.relative_to(whole / "model") for f in (whole / "model").rglob("*.safetensors"))
    assert files and files == sorted(f.relative_to(cut / "model") for f in (cut / "model").rglob("*.safetensors"))
    for f in files:
        a, b = load_file(whole / "model" / f), load_file(cut / "model" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
