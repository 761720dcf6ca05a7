"""Tiny text SFT learns a held-out synthetic skill (word reversal) from scratch."""
from __future__ import annotations

import json

import pytest

from mmtune.cli import main as cli


@pytest.mark.slow
def test_tiny_sft_learns_reversal(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    cli(["data", "synth", "text", "--out", str(data), "--n-train", "4000", "--n-test", "200",
         "--seed", "5", "--skills", "reverse"])
    cli(["train", "sft", "--config", "tiny", "--output-dir", str(run), "--data", str(data)])
    result = json.loads((run / "eval.json").read_text())
    assert result["n"] == 200
    # Exact match of the whole reply: every word, in reversed order, then the end of turn.
    assert result["exact_match"] >= 0.90, result["examples"]
    assert result["blank_media_accuracy"] is None  # text-only: no medium to blank
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] / 4
