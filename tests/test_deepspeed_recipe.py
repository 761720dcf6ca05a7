"""The llava recipe under `accelerate launch --config_file zero2.yaml / zero3.yaml` on 2 CPU
processes: DeepSpeed really runs it (the summary names the live engine and its ZeRO stage;
under ZeRO-3 each rank holds half of the weights), the per-step losses equal one process on
the same global batch (ZeRO-2 through gradient accumulation), a step where one rank has no
image and the other has images does not hang, a run resumed from the engine's checkpoint
reproduces the losses, and the consolidated model loads and equals the one-process model."""
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

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")

# warmup 1: steps 2-4 take full-size updates (clipped at max_grad_norm 1.0), so a wrong
# scale, schedule or clip shows in the losses.
STEPS = [*SMALL, "stages.finetune.max_steps=4", "stages.finetune.warmup_steps=1", "train.save_every=2",
         "train.log_every=1", "eval.limit=2", "train.threads=1"]
N, GLOBAL, TEXT_ONLY_STEP = 32, 8, 3


def text_only_at(data: Path, step: int, rank: int, world: int, batch: int, accum: int) -> None:
    """Make every record `rank` reads in optimizer step `step` text-only (the other rank keeps
    its images): the model then runs its encoder on a zero-weighted placeholder there, so
    every ZeRO-3 rank gathers the encoder's weights."""
    from mmtune.recipes.common import load_recipe_config
    from mmtune.train.loop import BatchPlan

    plan = BatchPlan(N, batch, load_recipe_config("llava", "tiny", []).train.seed, rank, world)
    chosen = {i for k in range((step - 1) * accum, step * accum) for i in plan.indices(k)}
    lines = (data / "train.jsonl").read_text().splitlines()
    for i in chosen:
        record = json.loads(lines[i])
        record.pop("images")
        for m in record["messages"]:
            m["content"] = m["content"].replace("<image>\n", "").replace("<image>", "")
        lines[i] = json.dumps(record)
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")


def train(data: Path, run: Path, launch: str | None, batch: int, accum: int = 1) -> None:
    prefix = ([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config(launch)),
               "--num_processes", "2", "--main_process_port", str(free_port()), "--mixed_precision", "no"]
              if launch else [sys.executable])
    cmd = [*prefix, "-m", "mmtune.cli", "train", "llava", "--config", "tiny", "--output-dir", str(run),
           "--data", str(data), "--stage", "finetune", "--fresh", *STEPS, f"stages.finetune.batch_size={batch}",
           f"stages.finetune.grad_accum={accum}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict:
    from mmtune.model import MultimodalLM

    return MultimodalLM.from_pretrained(run / "model").state_dict()


@pytest.fixture(scope="module")
def data_and_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    data = root / "data"
    generate(data, n_train=N, n_test=4, seed=3, image_size=32)
    # Both layouts below (2 x 4 and 2 x 2 x accumulation 2) give rank 1 the same records in step 3.
    text_only_at(data, TEXT_ONLY_STEP, rank=1, world=2, batch=4, accum=1)
    one = root / "one"
    train(data, one, None, GLOBAL)  # one process, the whole global batch of 8
    return data, one


@pytest.mark.slow
# Both through gradient accumulation: under ZeRO-3 the second text-only micro-batch of rank 1
# once hung, when the feature cache let it skip the (partitioned) encoder's forward that rank 0
# ran; the cache is off when encoder weights are sharded.
@pytest.mark.parametrize("launch,batch,accum", [("zero2", 2, 2), ("zero3", 2, 2)])
def test_deepspeed_llava_matches_one_process_and_resumes(data_and_reference, tmp_path, launch, batch, accum):
    data, one = data_and_reference
    run = tmp_path / launch
    train(data, run, launch, batch, accum)  # 2 processes x batch x accum = the same global batch of 8
    summary = json.loads((run / "train_summary.json").read_text())["stages"]["finetune"]
    ds = summary["deepspeed"]  # taken from the live engine
    assert ds["engine"] == "DeepSpeedEngine" and ds["world"] == 2, ds
    assert ds["zero_stage"] == int(launch[-1]), ds
    assert ds["optimizer_local_numel"] < 0.6 * ds["numel"], ds  # optimizer state: half on each rank
    if launch == "zero3":
        assert ds["local_numel"] < 0.6 * ds["numel"], ds  # the weights themselves: half on each rank
    ref = json.loads((one / "train_summary.json").read_text())["stages"]["finetune"]
    assert "deepspeed" not in ref
    diff = max(abs(a - b) for a, b in zip(losses(run), losses(one)))
    print(launch, ds, "max loss diff", diff, losses(one))
    assert losses(run) == pytest.approx(losses(one), abs=1e-5)  # measured 1e-6: the metrics' 6-decimal rounding
    mine, theirs = weights(run), weights(one)
    assert mine.keys() == theirs.keys()
    assert max(float((mine[k].float() - theirs[k].float()).abs().max()) for k in mine) < 1e-5  # measured 7e-9
    assert (run / "finetune" / "checkpoint-2" / "deepspeed" / "state").is_dir()
    # Resume from the engine's checkpoint at step 2 (read with weights_only=True): the same losses.
    first = losses(run)
    assert not (run / "finetune" / "checkpoint-4").exists()  # the last step's record is model/
    shutil.rmtree(run / "model")
    train(data, run, launch, batch, accum)
    assert json.loads((run / "train_summary.json").read_text())["stages"]["finetune"]["resumed_from"] == 2
    assert losses(run) == pytest.approx(first, abs=1e-6)
    assert (run / "model" / "mmtune_config.json").exists() and (run / "eval.json").exists()


@pytest.mark.slow
def test_instruct_pix2pix_under_zero3(tmp_path):
    """The UNet partitioned by ZeRO-3 trains and is gathered once into the saved pipeline; an
    EMA (which would average partitions) is refused with a one-line error before training."""
    from mmtune.diffusion.components import load_pipeline
    from mmtune.synth.edits import generate as generate_edits
    from test_pix2pix import SMALL as EDIT_SMALL

    data = tmp_path / "edits"
    generate_edits(data, n_train=16, n_test=4, seed=1, image_size=32)

    def launch(run: Path, *over: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config("zero3")),
               "--num_processes", "2", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "-m", "mmtune.cli", "train", "instruct_pix2pix", "--config", "tiny", "--output-dir", str(run),
               "--data", str(data), *EDIT_SMALL, "eval.limit=2", "train.threads=1", *over]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    done = launch(tmp_path / "run", "max_steps=2", "edit.ema_decay=0")
    assert done.returncode == 0, done.stderr[-3000:]
    ds = json.loads((tmp_path / "run" / "train_summary.json").read_text())["deepspeed"]
    assert ds["zero_stage"] == 3 and ds["local_numel"] < 0.6 * ds["numel"], ds
    pipe = load_pipeline(tmp_path / "run" / "model")
    assert sum(p.numel() for p in pipe.unet.parameters()) == ds["numel"]  # whole, not a partition
    refused = launch(tmp_path / "ema", "max_steps=2", "edit.ema_decay=0.9")
    # Each rank exits 2 with the one-line error; the launcher reports the failure as 1.
    assert refused.returncode != 0 and "edit.ema_decay > 0 under DeepSpeed ZeRO-3" in refused.stderr, refused.stderr[-2000:]
    assert not (tmp_path / "ema" / "train").exists()  # refused before any step


@pytest.mark.slow
def test_qlora_under_zero3_matches_one_process(tmp_path):
    """QLoRA (nf4 base, LoRA adapters trained) under ZeRO-3 on 2 processes: the same losses as
    1 process on the same global batch, and an adapter saved in peft's format."""
    from mmtune.synth.text import generate as generate_text
    from test_qlora import save_llama

    data, base = tmp_path / "data", tmp_path / "base"
    generate_text(data, n_train=16, n_test=4, seed=1)
    save_llama(base)
    over = [f"model.llm.path={base}", "model.llm.lora.dropout=0", "max_steps=3", "train.threads=1",
            "train.log_every=1", "eval.limit=2"]

    def run(out: Path, launch: list[str], batch: int) -> list[float]:
        cmd = [*launch, "-m", "mmtune.cli", "train", "qlora", "--config", "tiny", "--output-dir", str(out),
               "--data", str(data), *over, f"stages.sft.batch_size={batch}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return losses(out)

    one = run(tmp_path / "one", [sys.executable], 4)
    two = run(tmp_path / "zero3", [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                   str(launch_config("zero3")), "--num_processes", "2", "--main_process_port",
                                   str(free_port()), "--mixed_precision", "no"], 2)
    ds = json.loads((tmp_path / "zero3" / "train_summary.json").read_text())["stages"]["sft"]["deepspeed"]
    assert ds["zero_stage"] == 3 and ds["optimizer_local_numel"] < 0.6 * ds["numel"], ds
    assert two == pytest.approx(one, abs=1e-5)
    assert (tmp_path / "zero3" / "model" / "llm_adapter" / "adapter_model.safetensors").exists()
