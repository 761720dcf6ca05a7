"""The run directory's record of what happened: metrics.jsonl, and the configured trackers."""
from __future__ import annotations

import json
from pathlib import Path

from .trackers import ScalarSink, scalars


class MetricsLog:
    """Appends one JSON object per logged step; only the main process writes. With `trackers`
    (the run's accelerator, whose trackers `train.report_to` started), each record also goes
    to TensorBoard / W&B / MLflow."""

    def __init__(self, run_dir: Path, enabled: bool = True, trackers: ScalarSink | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = trackers

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            values, step = scalars(record)
            self.trackers.log(values, step=step)

    def truncate_after(self, stage: str, step: int) -> None:
        """On resume, drop lines the interrupted run logged past its last checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if not (json.loads(line).get("stage") == stage and json.loads(line).get("step", 0) > step)]
        self.path.write_text("".join(line + "\n" for line in keep))
