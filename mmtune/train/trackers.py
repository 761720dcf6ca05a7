"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate.

`train.report_to: [tensorboard]` makes the run's accelerator log every metrics.jsonl record
as scalars named `<stage>/<metric>`, with the resolved config as hyper-parameters. Each
tracker writes inside the run directory and needs no network: TensorBoard event files in
RUN/trackers/mmtune/, W&B in offline mode (unless WANDB_MODE says otherwise, then `wandb sync`),
MLflow to RUN/mlflow.db (SQLite; unless MLFLOW_TRACKING_URI is set).
"""
from __future__ import annotations

import atexit
import dataclasses
import os
from pathlib import Path
from typing import Protocol

TRACKERS = ("tensorboard", "wandb", "mlflow")
PROJECT = "mmtune"  # the tracker's project / experiment name


class ScalarSink(Protocol):
    """What MetricsLog forwards to: `accelerate.Accelerator` has this method."""

    def log(self, values: dict, step: int | None = None) -> None: ...


def check_report_to(report_to: list[str], where: str = "train.report_to") -> list[str]:
    unknown = [t for t in report_to if t not in TRACKERS]
    if unknown:
        raise ValueError(f"{where}: unknown tracker(s) {unknown}; choose from {list(TRACKERS)}")
    return list(report_to)


def tracker_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "trackers"


def hyperparameters(cfg) -> dict:
    """The resolved config flattened to `a.b.c: value`; lists and None as text (what every
    tracker's hyper-parameter table accepts)."""
    out: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    walk("", dataclasses.asdict(cfg))
    return out


def start_trackers(accelerator, cfg, report_to: list[str], run_dir: Path) -> None:
    """Start the accelerator's trackers (main process only writes) and close them at exit."""
    if not report_to:
        return
    kwargs = {"wandb": {"mode": os.environ.get("WANDB_MODE", "offline"), "dir": str(run_dir)}}
    if "mlflow" in report_to and "MLFLOW_TRACKING_URI" not in os.environ:
        import mlflow

        # MLflow 3 keeps its file store in maintenance mode; a SQLite file is its local default.
        mlflow.set_tracking_uri(f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}")
    accelerator.init_trackers(PROJECT, config=hyperparameters(cfg), init_kwargs=kwargs)
    atexit.register(accelerator.end_training)


def scalars(record: dict) -> tuple[dict[str, float], int]:
    """A metrics.jsonl record as tracker scalars: `<stage>/<metric>` (stages restart their step)."""
    stage = record.get("stage", "train")
    values = {f"{stage}/{k}": v for k, v in record.items()
              if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return values, int(record["step"])
