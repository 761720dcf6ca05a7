"""Frozen-encoder feature cache on / off through the recipes' own loop.

Tiny Video-LLaMA (frozen conv frame encoder, `finetune` stage) on the motion task and the tiny
LLaVA `pretrain` stage (frozen CLIP tower, projector only) on shapes captions. The training
set is small enough that the stage runs several epochs; the cache can only help from the
second epoch, so tokens/s is reported for the whole stage and for the epochs after the first.
The two settings alternate per task in one process, same thread count.

    python benchmarks/feature_cache.py --out benchmarks/results/feature_cache.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from mmtune.recipes.common import load_recipe_config
from mmtune.recipes.stages import run_stages
from mmtune.synth.motion import generate as generate_motion
from mmtune.synth.shapes import generate as generate_shapes


def run(recipe: str, stage: str, data: Path, steps: int, per_epoch: int, cache: bool, out: Path) -> dict:
    cfg = load_recipe_config(recipe, "tiny", [f"data_dir={data}", f"stages.{stage}.max_steps={steps}",
                                              "train.log_every=1", f"train.feature_cache={str(cache).lower()}"])
    summary = run_stages(recipe, cfg, out, stages=[stage], resume=False, evaluate=False, fresh=True)["stages"][stage]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [m["elapsed_s"] for m in metrics]
    rates = [m["tokens_per_s"] for m in metrics]
    # tokens of step i = rate_i * its duration; after epoch 1 = steps per_epoch+1 .. steps
    durations = [elapsed[0]] + [b - a for a, b in zip(elapsed, elapsed[1:])]
    tokens = [r * d for r, d in zip(rates, durations)]
    later_s = elapsed[-1] - elapsed[per_epoch - 1]
    cpu = [m["process_cpu_s"] for m in metrics]
    later_cpu = cpu[-1] - cpu[per_epoch - 1]  # robust to a shared machine's waiting
    return {"feature_cache": cache, "steps": steps, "steps_per_epoch": per_epoch,
            "tokens_per_s": summary["tokens_per_s"],
            "tokens_per_s_after_epoch_1": round(sum(tokens[per_epoch:]) / later_s, 1),
            "tokens_per_cpu_s_after_epoch_1": round(sum(tokens[per_epoch:]) / later_cpu, 1),
            "seconds": summary["train_seconds"], "mfu": summary["mfu"], "final_loss": summary["final_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/feature_cache.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = {  # name: (recipe, stage, generator, batch size of the stage)
        "video_llama_finetune": ("video_llama", "finetune", lambda d, n: generate_motion(d, n_train=n, n_test=4), 32),
        "llava_pretrain": ("llava", "pretrain", lambda d, n: generate_shapes(d, n_train=n, n_test=4), 32),
    }
    result = {"threads": args.threads, "loadavg_start": list(os.getloadavg()), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="feature_cache-") as tmp:
        for name, (recipe, stage, make, batch) in tasks.items():
            data = Path(tmp) / name
            make(data, args.samples)
            n_records = len((data / load_recipe_config(recipe, "tiny").stages[stage].data).read_text().splitlines())
            per_epoch = n_records // batch
            runs = {}
            for cache in (False, True):
                runs["on" if cache else "off"] = run(recipe, stage, data, args.epochs * per_epoch, per_epoch, cache,
                                                      Path(tmp) / f"{name}-{cache}")
            runs["speedup_after_epoch_1"] = round(runs["on"]["tokens_per_s_after_epoch_1"]
                                                  / runs["off"]["tokens_per_s_after_epoch_1"], 3)
            runs["speedup_after_epoch_1_cpu_time"] = round(runs["on"]["tokens_per_cpu_s_after_epoch_1"]
                                                           / runs["off"]["tokens_per_cpu_s_after_epoch_1"], 3)
            runs["speedup_whole_stage"] = round(runs["on"]["tokens_per_s"] / runs["off"]["tokens_per_s"], 3)
            runs["loadavg_after"] = list(os.getloadavg())
            result["tasks"][name] = runs
            print(name, json.dumps(runs), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
