"""`mmtune demo`, the README's main job, end to end with a seconds-long model."""
from __future__ import annotations

import json

from mmtune.cli import main as cli

from conftest import SMALL


def test_demo_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    cli(["demo", "--out", str(out), *SMALL, "stages.pretrain.max_steps=2", "stages.finetune.max_steps=2"])
    text = capsys.readouterr().out
    assert "with media" in text and "sample chat" in text and "mmtune chat" in text
    assert f"mmtune export {out / 'run'}" in text  # the demo ends with the export command, then the paths
    result = json.loads((out / "run" / "eval.json").read_text())
    assert result["n"] == 400 and result["blank_media_accuracy"] is not None
    # It ends with the paths of the eval table and the curves.
    assert text.rstrip().endswith(f"eval table: {out / 'run' / 'eval.json'}\ncurves: {out / 'run' / 'curves.png'}")
    for name in ("config.yaml", "metrics.jsonl", "model/mmtune_config.json", "train_summary.json", "curves.png"):
        assert (out / "run" / name).exists(), name
