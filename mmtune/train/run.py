"""What every run does first and last: the accelerator, threads, seeds, the run folder's
resolved config and recipe name, and JSON results. Shared by every recipe."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..config import save_yaml
from .trackers import check_report_to, start_trackers, tracker_dir

RUN_FILE = "run.json"  # {"recipe": name}: which recipe's tools read this run folder


def make_accelerator(mixed_precision: str, report_to: list[str] = (), run_dir: Path | None = None):
    """Without a GPU, say so: accelerate then joins `torchrun` / `accelerate launch --multi_gpu`
    processes over gloo (multi-CPU) instead of running each one alone; under a DeepSpeed launch
    it is not told, so that accelerate engages DeepSpeed (train/deepspeed.py). `report_to`: accelerate's
    trackers, writing under run_dir (see train/trackers.py)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        # accelerate keeps one precision per process; a process that runs several recipes
        # (the test suite, a notebook) must drop that singleton to change it. The process
        # group (PartialState) is kept.
        AcceleratorState._reset_state()
    from .deepspeed import accelerator_kwargs, build_whole

    kwargs = {"cpu": not torch.cuda.is_available(),
              **accelerator_kwargs(torch.cuda.is_available())}  # DeepSpeed on CPU too (over gloo)
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with=list(report_to) or None,
                              project_dir=run_dir and tracker_dir(run_dir), **kwargs)
    build_whole(accelerator, accelerator.print)
    return accelerator


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, data: dict) -> None:
    """Write-then-rename, so a kill never leaves half a JSON file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def recipe_of(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text())["recipe"] if path.exists() else None


def start_run(recipe: str, cfg, train, run_dir: Path):
    """The accelerator, torch threads, seeds, and the resolved config (any config dataclass)
    in run_dir/config.yaml with the recipe's name in run_dir/run.json. `train` is the
    config's TrainConfig."""
    accelerator = make_accelerator(train.mixed_precision, check_report_to(train.report_to), run_dir)
    start_trackers(accelerator, cfg, train.report_to, run_dir)
    if train.threads:
        torch.set_num_threads(train.threads)
    seed_everything(train.seed)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        write_json(run_dir / RUN_FILE, {"recipe": recipe})
    accelerator.wait_for_everyone()
    return accelerator
