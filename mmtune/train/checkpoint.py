"""Checkpoints of what a stage changes: trainable weights, optimizer, scheduler, step, RNG.

Frozen weights are not written (they come from the model's own source), so a checkpoint of a
projector-only stage is megabytes, not gigabytes. The data position is the step itself
(see `BatchPlan`), so resuming needs no sampler state.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE = "trainable.safetensors"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), path / STATE)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": np.random.get_state()}}, path / "state.pt")
    (path / "progress.json").write_text(json.dumps({"step": step, **(extra or {})}))


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    """Restore in place; returns the step to continue from."""
    state = load_file(path / STATE)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unexpected = [n for n in state if n not in params]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the stage's trainable parameters: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
    other = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(other["optimizer"])
    scheduler.load_state_dict(other["scheduler"])
    torch.set_rng_state(other["rng"]["torch"])
    random.setstate(other["rng"]["python"])
    np.random.set_state(other["rng"]["numpy"])
    return json.loads((path / "progress.json").read_text())["step"]


def latest_checkpoint(stage_dir: Path) -> Path | None:
    found = [p for p in stage_dir.glob("checkpoint-*") if (p / "progress.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)
