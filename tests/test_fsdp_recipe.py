"""The llava recipe under `accelerate launch --config_file fsdp.yaml` on 2 CPU processes: the
model really is sharded by mmtune's engine (accelerate alone would train unsharded here), the
per-step losses equal one process on the same global batch, a run resumed from a sharded
checkpoint reproduces them, and the consolidated model loads and trains on."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL, free_port

from mmtune.recipes.launch import path as launch_config
from mmtune.synth.shapes import generate

STEPS = [*SMALL, "stages.finetune.max_steps=4", "train.save_every=2", "train.log_every=1", "eval.limit=2"]


def train(data: Path, run: Path, processes: int, batch: int) -> None:
    launch = ([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config("fsdp")),
               "--num_processes", str(processes), "--main_process_port", str(free_port()), "--mixed_precision", "no"]
              if processes > 1 else [sys.executable])
    cmd = [*launch, "-m", "mmtune.cli", "train", "llava", "--config", "tiny", "--output-dir", str(run),
           "--data", str(data), "--stage", "finetune", "--fresh", *STEPS, f"stages.finetune.batch_size={batch}",
           "train.threads=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_llava_matches_one_process_and_resumes(tmp_path):
    data = tmp_path / "data"
    generate(data, n_train=32, n_test=4, seed=3, image_size=32)
    one, two = tmp_path / "one", tmp_path / "two"
    train(data, one, 1, 8)
    train(data, two, 2, 4)  # 2 processes x 4 = the same global batch of 8
    summary = json.loads((two / "train_summary.json").read_text())["stages"]["finetune"]
    fsdp = summary["fsdp"]
    assert fsdp["dtensor"] and fsdp["local_numel"] < 0.6 * fsdp["numel"], fsdp  # half the weights each
    assert "fsdp" not in json.loads((one / "train_summary.json").read_text())["stages"]["finetune"]
    print("fsdp", fsdp, "max loss diff", max(abs(a - b) for a, b in zip(losses(two), losses(one))), losses(one))
    assert losses(two) == pytest.approx(losses(one), abs=1e-4)  # measured: 1e-6 (the logged rounding)
    assert (two / "finetune" / "checkpoint-2" / "sharded" / ".metadata").exists()
    # Resume from the sharded checkpoint at step 2: steps 3-4 again, the same losses.
    first = losses(two)
    assert not (two / "finetune" / "checkpoint-4").exists()  # the last step's record is model/
    shutil.rmtree(two / "model")
    train(data, two, 2, 4)
    assert json.loads((two / "train_summary.json").read_text())["stages"]["finetune"]["resumed_from"] == 2
    assert losses(two) == pytest.approx(first, abs=1e-6)
    assert (two / "model" / "mmtune_config.json").exists() and (two / "eval.json").exists()


# The other recipes through the same driver: sharded, trained, saved, on 2 CPU processes.
RECIPES = {
    "instructblip": ("instruct", "shapes", [*SMALL, "model.projectors.image.options.hidden_size=32",
                                            "model.projectors.image.options.intermediate_size=64",
                                            "model.projectors.image.options.num_heads=2"]),
    "video_llama": ("finetune", "motion", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_under_fsdp(recipe, tmp_path):
    from mmtune.model import MultimodalLM
    from mmtune.synth.motion import generate as generate_motion

    stage, task, over = RECIPES[recipe]
    data = tmp_path / "data"
    if task == "shapes":
        generate(data, n_train=16, n_test=4, seed=3, image_size=32)
    else:
        generate_motion(data, n_train=16, n_test=4, seed=3)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config("fsdp")),
           "--num_processes", "2", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "-m", "mmtune.cli", "train", recipe, "--config", "tiny", "--output-dir", str(run), "--data", str(data),
           "--stage", stage, "--fresh", *over, f"stages.{stage}.max_steps=2", f"stages.{stage}.batch_size=2",
           "train.threads=1", "train.log_every=1", "eval.limit=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    fsdp = json.loads((run / "train_summary.json").read_text())["stages"][stage]["fsdp"]
    assert fsdp["dtensor"] and fsdp["local_numel"] < 0.6 * fsdp["numel"], fsdp
    assert len(losses(run)) == 2 and (run / "eval.json").exists()
    MultimodalLM.from_pretrained(run / "model")  # consolidated, in the normal formats


@pytest.mark.slow
def test_sft_under_torchrun(tmp_path):
    """Plain `torchrun` (no accelerate launcher): the processes join over gloo and train as DDP."""
    from mmtune.synth.text import generate as generate_text

    data = tmp_path / "data"
    generate_text(data, n_train=16, n_test=4, seed=1)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "mmtune.cli", "train", "sft", "--config", "tiny", "--output-dir", str(run), "--data", str(data),
           "max_steps=2", "stages.sft.batch_size=2", "train.threads=1", "train.log_every=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one writer
    assert rows[0]["loss_count"] > 0 and (run / "model" / "mmtune_config.json").exists()
