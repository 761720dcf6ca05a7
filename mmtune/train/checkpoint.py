"""Checkpoints of what a stage changes, written so that a kill at any moment loses at most the
work since the previous one, and loaded without running any code.

    checkpoint-<step>/
      trainable.safetensors   trainable weights (frozen ones come from the model's own source)
      hooks.safetensors       hook state, e.g. the EMA weights
      optimizer.pt            optimizer state: tensors and numbers only (loads weights_only=True)
      scheduler.json          learning-rate schedule position
      rank-<r>.json           each process's RNG states and data cursor
      sharded/ | deepspeed/   under FSDP / DeepSpeed ZeRO, instead of the weights and optimizer
                              files: each rank's shards (torch DCP / the engine's own files)
      progress.json           {"step", "world"}: written last; its presence marks completeness

A checkpoint is written into `.checkpoint-<step>.tmp`, every file fsynced, and renamed into
place in one step; a complete checkpoint is never rewritten. A stage's last step gets no
checkpoint: the stage's model, published the same way, records the end (train/finish.py), so
a finished run holds its final weights once. `latest_checkpoint` skips (and
says so) any checkpoint it cannot read and falls back to the one before.
"""
from __future__ import annotations

import base64
import json
import os
import pickle  # only for its error type: nothing here unpickles
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

WEIGHTS = "trainable.safetensors"
HOOKS = "hooks.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.json"
PROGRESS = "progress.json"
SHARDED = "sharded"  # under FSDP: weights and optimizer state, one file per rank (torch DCP)
DEEPSPEED = "deepspeed"  # under DeepSpeed ZeRO: the engine's own checkpoint, one optimizer file per rank


class CheckpointError(RuntimeError):
    pass


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """Every generator training draws from, as JSON (no pickle)."""
    np_state = np.random.get_state()
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])]}
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    def tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


# --------------------------------------------------------------------------- save
def tmp_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp"


def begin_save(path: Path) -> Path:
    """Main process, before anyone writes: a fresh temporary folder for `path`."""
    tmp = tmp_dir(path)
    if tmp.exists():  # left by a killed save
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_state(tmp: Path, rank: int, cursor: int) -> None:
    """Every process: its RNG states and how far it has read its share of the data."""
    _fsync_write(tmp / f"rank-{rank}.json", json.dumps({"cursor": cursor, "rng": rng_state()}).encode())


def write_sharded_state(tmp: Path, model, optimizer) -> None:
    """Every process under FSDP: its shards of the trainable weights and optimizer state."""
    from .engine import save_sharded

    save_sharded(tmp / SHARDED, model, optimizer)


def write_deepspeed_state(tmp: Path, engine) -> None:
    """Every process under DeepSpeed: its ZeRO partitions, written by the engine itself."""
    from .deepspeed import save_state

    save_state(tmp / DEEPSPEED, engine)


def write_main_state(tmp: Path, model, optimizer, scheduler, hooks: dict[str, torch.Tensor],
                     sharded: bool = False) -> None:
    """Main process: weights and optimizer (processes hold the same ones under DDP; under FSDP
    `write_sharded_state` wrote them), hook state and schedule."""
    if not sharded:
        save_file(trainable_state(model), tmp / WEIGHTS)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
    if hooks:
        save_file({k: v.detach().contiguous().cpu() for k, v in hooks.items()}, tmp / HOOKS)
    _fsync_write(tmp / SCHEDULER, json.dumps(scheduler.state_dict()).encode())
    for f in (WEIGHTS, HOOKS, OPTIMIZER):
        if (tmp / f).exists():
            _fsync(tmp / f)


def finish_save(tmp: Path, path: Path, step: int, world: int) -> None:
    """Main process, after every process wrote: the progress marker, then one rename."""
    _fsync_write(tmp / PROGRESS, json.dumps({"step": step, "world": world}).encode())
    _fsync(tmp)
    if path.exists():  # an unreadable leftover (a complete one is never rewritten)
        shutil.rmtree(path)
    os.replace(tmp, path)
    _fsync(path.parent)


# --------------------------------------------------------------------------- load
def step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def check_complete(path: Path, world: int) -> dict:
    """progress.json of a checkpoint every file of which is present and readable, else raise."""
    try:
        progress = json.loads((path / PROGRESS).read_text())
        if progress["step"] != step_of(path):
            raise CheckpointError(f"step {progress['step']} in progress.json")
        if progress["world"] != world:
            raise CheckpointError(f"written by {progress['world']} process(es), this run has {world}; "
                                  "resume on the same number of processes")
        if (path / SHARDED).is_dir():
            whole = [f"{SHARDED}/.metadata"]
        elif (path / DEEPSPEED).is_dir():
            from .deepspeed import required_files

            whole = [f"{DEEPSPEED}/{f}" for f in required_files(path / DEEPSPEED, world)]
        else:
            with safe_open(path / WEIGHTS, framework="pt"):
                pass
            whole = [OPTIMIZER]
        for name in whole + [SCHEDULER] + [f"rank-{r}.json" for r in range(world)]:
            if not (path / name).is_file() or (path / name).stat().st_size == 0:
                raise CheckpointError(f"{name} is missing or empty")
        return progress
    except CheckpointError:
        raise
    except Exception as e:  # truncated JSON or safetensors header, missing file, ...
        raise CheckpointError(f"{type(e).__name__}: {e}") from None


def checkpoints(stage_dir: Path) -> list[Path]:
    """checkpoint-<step> folders, newest first (temporary folders never match)."""
    found = [p for p in Path(stage_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=step_of, reverse=True)


def latest_checkpoint(stage_dir: Path, world: int = 1, say=print) -> Path | None:
    """The newest complete checkpoint; an incomplete or unreadable one is skipped, with a word."""
    for path in checkpoints(stage_dir):
        try:
            check_complete(path, world)
            return path
        except CheckpointError as e:
            say(f"skipping checkpoint {path}: {e}")
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int,
                    engine=None) -> tuple[int, int, dict[str, torch.Tensor]]:
    """Restore in place; returns (step, this process's data cursor, hook state). A sharded
    (FSDP) checkpoint loads into the identically sharded model, a DeepSpeed one into the
    DeepSpeedEngine `engine` (both collective)."""
    if (path / DEEPSPEED).is_dir() or engine is not None:
        if engine is None or not (path / DEEPSPEED).is_dir():
            raise CheckpointError(f"{path} was {'' if engine is None else 'not '}written under DeepSpeed; "
                                  "resume it under the launch config that wrote it")
        from .deepspeed import load_state

        load_state(path / DEEPSPEED, engine)
    elif (path / SHARDED).is_dir():
        from .engine import load_sharded

        load_sharded(path / SHARDED, model, optimizer)
    else:
        _load_whole(path, model, optimizer)
    scheduler.load_state_dict(json.loads((path / SCHEDULER).read_text()))
    hooks = load_file(path / HOOKS) if (path / HOOKS).exists() else {}
    mine = json.loads((path / f"rank-{rank}.json").read_text())
    set_rng_state(mine["rng"])
    return step_of(path), int(mine["cursor"]), hooks


def _load_whole(path: Path, model, optimizer) -> None:
    state = load_file(path / WEIGHTS)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unexpected = [n for n in state if n not in params]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the stage's trainable parameters: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
    # weights_only: tensors, numbers and containers only; a planted pickle is refused, not run.
    try:
        optim_state = torch.load(path / OPTIMIZER, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path / OPTIMIZER}: refused, it holds more than tensors and numbers "
                              f"(loaded with weights_only=True; {str(e).splitlines()[0]})") from None
    optimizer.load_state_dict(optim_state)


def prune(stage_dir: Path, keep_last: int, world: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (0: keep all), and any
    unreadable one older than those; the newest good one is never deleted. Each is renamed
    away first, so a kill mid-delete never leaves a half-deleted `checkpoint-N` behind."""
    if keep_last <= 0:
        return
    for trash in Path(stage_dir).glob(".checkpoint-*.trash"):  # a delete a kill interrupted
        shutil.rmtree(trash, ignore_errors=True)
    good = 0
    for path in checkpoints(stage_dir):
        try:
            check_complete(path, world)
            good += 1
            if good <= keep_last:
                continue
        except CheckpointError:
            if good == 0:  # newer than every good one: not ours to judge
                continue
        discard(path)


def set_aside(path: Path) -> Path | None:
    """Rename `path` to a hidden `.<name>.trash` beside it (None when absent), so a kill while
    it is deleted never leaves half of it under its own name."""
    if not path.exists():
        return None
    trash = path.parent / f".{path.name}.trash"
    os.replace(path, trash)
    return trash


def discard(path: Path) -> None:
    """Delete `path` (a checkpoint, a stale model), set aside first."""
    trash = set_aside(path)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
