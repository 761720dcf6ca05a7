"""A training process killed (SIGKILL) at 20 random moments — while it builds, trains, writes
checkpoints, prunes old ones, and while it reruns a stage that had already finished — resumes
every time, and ends with the per-step losses of a run that was never killed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmtune.synth import text

TINY = ["model.llm.arch.hidden_size=32", "model.llm.arch.intermediate_size=64",
        "model.llm.arch.num_hidden_layers=2", "model.llm.arch.num_attention_heads=2",
        "model.llm.arch.num_key_value_heads=2", "train.mixed_precision=no", "train.threads=1",
        "max_steps=80", "stages.sft.batch_size=4", "train.log_every=1", "train.save_every=1",
        "train.keep_last=3", "eval.limit=2"]


def command(data: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "mmtune.cli", "train", "sft", "--config", "tiny", "--output-dir", str(run),
            "--data", str(data), *TINY]


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def started(run: Path, since: float) -> bool:
    """The process has its accelerator and has written config.yaml: it is about to build."""
    config = run / "config.yaml"
    return config.exists() and config.stat().st_mtime >= since


@pytest.mark.slow
def test_twenty_kills_lose_nothing(tmp_path):
    data = tmp_path / "data"
    text.generate(data, n_train=64, n_test=4, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(command(data, reference), check=True, env=env, capture_output=True)

    run, rng = tmp_path / "run", random.Random(0)
    kills, during_save, finished = 0, 0, 0
    while kills < 20:
        rerun = kills >= 15  # the last five kills hit reruns of the finished stage
        if rerun and not (run / "model").exists():
            subprocess.run(command(data, run), check=True, env=env, capture_output=True)
            finished += 1
        launched = time.time()
        proc = subprocess.Popen(command(data, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not started(run, launched) and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 2.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            during_save += any((run / "sft").glob(".checkpoint-*.tmp"))
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            finished += 1
        proc.stderr.close()
    done = subprocess.run(command(data, run), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"kills {kills} (during a checkpoint write: {during_save}), finished runs before the last: {finished}")
    assert losses(run) == losses(reference)  # every step once, with the uninterrupted losses
    assert len(list((run / "sft").glob("checkpoint-*"))) == 3  # keep_last, the newest kept
    assert (run / "model" / "mmtune_config.json").exists() and (run / "train_summary.json").exists()
    from safetensors.torch import load_file  # the final weights, written once, bit for bit

    files = sorted(f.relative_to(reference / "model") for f in (reference / "model").rglob("*.safetensors"))
    assert files and all(
        all(torch.equal(a, load_file(run / "model" / f)[k]) for k, a in load_file(reference / "model" / f).items())
        for f in files)
