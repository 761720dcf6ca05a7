"""The proof that the InstructBLIP wiring is right: the tiny recipe learns to read images
through an instruction-aware Q-Former.

Trains `mmtune train instructblip --config tiny` on freshly synthesised shapes and checks
held-out questions about new images: >= 90% with the image, within 10 points of chance with
the image blanked (the answer is only in the image). Minutes on 2 CPU cores.
"""
from __future__ import annotations

import json

import pytest
from conftest import assert_reads_the_medium

from mmtune.cli import main as cli


@pytest.mark.slow
def test_tiny_instructblip_learns_shapes(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    cli(["data", "synth", "shapes", "--out", str(data), "--seed", "11"])
    cli(["train", "instructblip", "--config", "tiny", "--output-dir", str(run), "--data", str(data)])
    result = json.loads((run / "eval.json").read_text())
    assert_reads_the_medium(result, ("colour", "shape", "position", "count"))
    # Only the Q-Former (queries, layers, language projection) and the LLM's LoRA adapters trained.
    summary = json.loads((run / "train_summary.json").read_text())
    rows = {r["part"]: r for r in summary["stages"]["instruct"]["parameters"]}
    assert rows["encoder.image"]["trainable"] == 0
    assert rows["projector.image"]["trainable"] == rows["projector.image"]["params"]
    assert 0 < rows["llm"]["trainable"] < rows["llm"]["params"]
