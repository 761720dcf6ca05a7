"""benchmarks/gpu_check.py's CPU-checkable parts: arguments, the JSON report, the optimizer
probe and the memory/MFU measurement it calls (the recipes it runs are tested elsewhere;
`bash benchmarks/gpu_check.sh --dry-run` runs everything at toy sizes, ~5 min on 2 cores)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = load("gpu_check")
plan_memory = load("plan_memory")


def test_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--only", "bogus", "--dry-run"])
    assert "unknown check(s) ['bogus']" in capsys.readouterr().err
    if not gpu_check_has_gpu():
        with pytest.raises(SystemExit):
            gpu_check.main(["--out", str(tmp_path)])
        assert "--dry-run" in capsys.readouterr().err


def gpu_check_has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_report_keeps_going_and_records_failures(tmp_path, monkeypatch):
    def boom(out, dry, log):
        raise RuntimeError("exit 1: mmtune train ...")

    monkeypatch.setattr(gpu_check, "CHECKS", {"first": boom, "second": lambda out, dry, log: {"ok": True, "x": 1}})
    code = gpu_check.main(["--out", str(tmp_path), "--dry-run"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1 and report["dry_run"] is True
    assert report["checks"]["first"]["ok"] is False and "exit 1" in report["checks"]["first"]["error"]
    assert report["checks"]["second"]["ok"] is True and report["checks"]["second"]["x"] == 1


def test_optimizer_probe_off_cuda(tmp_path):
    gpu_check.probe_optimizer(tmp_path / "p.json")
    got = json.loads((tmp_path / "p.json").read_text())
    if got["device"] == "cpu":  # QLoRA falls back to torch AdamW off CUDA
        assert got["optimizer"].startswith("none") and got["moved"] is False
    else:
        assert got["optimizer"] == "PagedAdamW8bit" and got["moved"]


def test_plan_memory_measure_and_plan():
    got = plan_memory.measure("tiny", "cpu", "no", steps=3, peak_tflops=1.0)
    assert got["measured_bytes"] > 0 and got["step_s"] > 0 and 0 < got["mfu"] < 1
    planned = plan_memory.planned("tiny", "no")
    assert planned["trainable"] < planned["params"]  # the tower is frozen
    assert planned["total"] == pytest.approx(sum(planned[k] for k in ("weights", "gradients", "optimizer", "activations")))
