"""A stage's end: its model, published in one rename, is the record that the stage finished.

    <model dir>/stage.json    {"stage", "fingerprint"}: written last, before the rename

A rerun skips a stage whose model is published with the same fingerprint (the settings that
shape its weights), and stops with an error naming the stage when they differ, before it
touches the run folder. Once a stage trains, every model derived from an older version of it
(its own, every later stage's) is retired first, so no stale model can be skipped into later.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from .checkpoint import _fsync, _fsync_write, checkpoints, discard, set_aside

STAGE_FILE = "stage.json"


class StageChangedError(ValueError):
    pass


def fingerprint(*parts: object) -> str:
    """A hash of config dataclasses and values (data paths, ...): what a stage's weights depend on."""
    plain = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def publish(tmp: Path, path: Path, stage: str, print_: str) -> None:
    """Main process: the model written in full at `tmp` becomes `path` in one rename, with
    its stage record written last and every file fsynced. An older model there is renamed
    away first and deleted after, so `path` never holds half of one."""
    _fsync_write(tmp / STAGE_FILE, json.dumps({"stage": stage, "fingerprint": print_}).encode())
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync(f)
    _fsync(tmp)
    trash = set_aside(path)
    os.replace(tmp, path)
    _fsync(path.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def published(path: Path) -> dict | None:
    """The stage record of a published model, or None (absent, or not written by `publish`)."""
    try:
        return json.loads((Path(path) / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None


def skipped_stages(stages: list[tuple[str, Path, str]], resume: bool, fresh: bool) -> list[bool]:
    """Which of the (name, model dir, fingerprint) stages, in order, finished earlier and are
    skipped: only with `resume`, only while every stage before was skipped too, and not the
    first under `fresh` (which asks to train it from the config's model). A finished stage
    whose fingerprint differs raises StageChangedError."""
    skips: list[bool] = []
    for i, (name, model_dir, print_) in enumerate(stages):
        done = published(model_dir)
        if done is None or not resume or (fresh and i == 0) or not all(skips):
            skips.append(False)
            continue
        if done["fingerprint"] != print_:
            raise StageChangedError(
                f"stage {name!r} finished in {model_dir} with other settings than this run's (model, "
                f"stage or data changed): pass --no-resume to train it again, or use a new --output-dir")
        skips.append(True)
    return skips


def retire(stage_dir: Path, stale_models: list[Path], checkpoints_too: bool) -> None:
    """Main process, before a stage trains: the published models it makes stale (its own and
    every later stage's), and with `checkpoints_too` (no resume) its older checkpoints."""
    doomed = [m for m in stale_models if m.exists()]
    if checkpoints_too:
        doomed += checkpoints(stage_dir)
    for path in doomed:
        discard(path)
