"""The LLaVA recipe under `accelerate launch` with 2 processes on CPU (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmtune.data.collate import collate
from mmtune.synth.shapes import generate
from mmtune.model import MultimodalLM
from mmtune.recipes.common import load_recipe_config, training_data
from mmtune.train.loop import BatchPlan

from conftest import SMALL, free_port


def test_two_process_run(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is a dependency and must be installed"
    data = tmp_path / "data"
    generate(data, n_train=48, n_test=12, seed=5, image_size=32)
    over = [*SMALL, "stages.pretrain.max_steps=2", "stages.finetune.max_steps=3",
            "stages.pretrain.batch_size=4", "stages.finetune.batch_size=4", "train.log_every=1"]
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu selects torchrun's launcher; without a GPU the recipe joins the processes
    # over gloo on CPU.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(free_port()),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmtune.cli", "train", "llava",
           "--config", "tiny", "--output-dir", str(run), "--data", str(data), *over]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # One writer (the main process): each step logged once.
    assert [(r["stage"], r["step"]) for r in rows] == [("pretrain", 1), ("pretrain", 2),
                                                       ("finetune", 1), ("finetune", 2), ("finetune", 3)]
    assert (run / "model" / "mmtune_config.json").exists() and (run / "eval.json").exists()

    # Step 1 of finetune saw both ranks' shards: its token count is the sum over ranks.
    cfg = load_recipe_config("llava", "tiny", [f"data_dir={data}", *over])
    model = MultimodalLM.build(cfg.model)
    dataset, _, _ = training_data(model, cfg, data / "train.jsonl", None)
    per_rank = []
    for rank in (0, 1):
        plan = BatchPlan(len(dataset), 4, cfg.train.seed, rank=rank, world=2)
        batch = collate([dataset[i] for i in plan.indices(0)], model.tokenizer.pad_token_id)
        per_rank.append(batch.num_loss_tokens())
    assert min(per_rank) > 0
    assert rows[2]["loss_count"] == sum(per_rank)
