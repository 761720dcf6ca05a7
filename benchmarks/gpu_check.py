"""The checks behind benchmarks/gpu_check.sh: one JSON for a lent GPU, written after every check.

    python benchmarks/gpu_check.py --out runs/gpu_check            # on the GPU (~6-9 minutes)
    python benchmarks/gpu_check.py --out /tmp/gc --dry-run         # CPU, minimal sizes (the test)

Checks (each a subprocess with its own time limit; a failure is recorded and the next runs):
  llava_bf16     tiny LLaVA (both stages) in bf16 on shapes data learns: held-out accuracy
  qlora_cuda     4-bit base on CUDA through bitsandbytes + LoRA trains (copy skill), and
                 QLoRA's optimizer is bitsandbytes' paged 8-bit AdamW on CUDA
  step_1b        ~1B-parameter LLaVA finetune step: time, MFU, peak memory vs `mmtune plan`
  fsdp_1gpu      the shipped fsdp.yaml through `accelerate launch` on 1 GPU (NCCL): DTensor
                 parameters on CUDA, fp32 masters, bf16 compute
--dry-run runs the same commands at toy sizes on CPU, so the plumbing is tested without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
H200_BF16_TFLOPS = 989.0  # dense bf16 peak (NVIDIA H200 SXM datasheet)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Report:
    """The JSON file, rewritten after each check so a cut-off run keeps what it finished."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.data = path, {**meta, "checks": {}}
        self.write()

    def add(self, name: str, result: dict) -> None:
        self.data["checks"][name] = result
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2))


def run(cmd: list[str], timeout: float, log: Path) -> None:
    """One step of a check; its output goes to `log`; a failure raises with the log's tail."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd[:6])} ... (see {log})\n"
                           + log.read_text()[-1500:])


def mmtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmtune.cli", *args]


def llava_bf16(out: Path, dry: bool, log: Path) -> dict:
    data = out / "shapes"
    sizes = ["--n-train", "64", "--n-test", "16"] if dry else []
    run(mmtune("data", "synth", "shapes", "--out", str(data), *sizes), 300, log)
    small = ["stages.pretrain.max_steps=2", "stages.finetune.max_steps=2", "stages.pretrain.batch_size=4",
             "stages.finetune.batch_size=4", "train.mixed_precision=no", "eval.limit=8"] if dry else []
    run(mmtune("train", "llava", "--config", "tiny", "--output-dir", str(out / "llava"), "--data", str(data),
               "--no-resume", *small), 400, log)
    result = json.loads((out / "llava" / "eval.json").read_text())
    summary = json.loads((out / "llava" / "train_summary.json").read_text())
    acc, blank = result["accuracy"], result["blank_media_accuracy"]
    return {"accuracy": acc, "blank_media_accuracy": blank, "chance": result["chance"],
            "train_summary": summary, "ok": dry or acc >= 0.85}


def qlora_cuda(out: Path, dry: bool, log: Path) -> dict:
    data = out / "copy"
    sizes = ["--n-train", "64", "--n-test", "16"] if dry else []
    run(mmtune("data", "synth", "text", "--out", str(data), "--skills", "copy", *sizes), 120, log)
    steps = ["stages.sft.max_steps=2", "stages.sft.batch_size=4", "eval.limit=8"] if dry else []
    run(mmtune("train", "sft", "--config", "tiny", "--output-dir", str(out / "sft"), "--data", str(data),
               "--no-resume", *steps), 300, log)
    run(mmtune("train", "qlora", "--config", "tiny", "--output-dir", str(out / "qlora"), "--data", str(data),
               "--no-resume", f"model.llm.path={out / 'sft' / 'model' / 'llm'}", *steps), 300, log)
    probe = out / "qlora_optimizer.json"
    run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--probe-optimizer", str(probe)], 120, log)
    result = json.loads((out / "qlora" / "eval.json").read_text())
    opt = json.loads(probe.read_text())
    cuda = opt["device"] == "cuda"
    return {"accuracy": result["accuracy"], "optimizer": opt,
            "ok": dry or (cuda and opt["optimizer"] == "PagedAdamW8bit" and opt["moved"] and result["accuracy"] >= 0.5)}


def probe_optimizer(path: Path) -> None:
    """The optimizer QLoRA gets on this machine's device, and whether one step moves a weight."""
    import torch

    from mmtune.llm import kbit_optimizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    w = torch.nn.Parameter(torch.ones(4096, device=device))
    opt = kbit_optimizer([w], 1e-3, (0.9, 0.999), 0.0, device)
    name = type(opt).__name__ if opt is not None else "none (torch AdamW off CUDA)"
    moved = False
    if opt is not None:
        w.grad = torch.ones_like(w)
        opt.step()
        moved = bool((w.detach() != 1).all())
    path.write_text(json.dumps({"device": device, "optimizer": name, "moved": moved}))


def step_1b(out: Path, dry: bool, log: Path) -> dict:
    target = out / "plan_memory.json"
    args = (["--device", "cpu", "--cases", "tiny", "--steps", "3"] if dry else
            ["--device", "cuda", "--cases", "100m,1b", "--steps", "8", "--peak-tflops", str(H200_BF16_TFLOPS)])
    run([sys.executable, str(ROOT / "benchmarks" / "plan_memory.py"), *args, "--out", str(target)], 400, log)
    rows = json.loads(target.read_text())["rows"]
    return {"rows": rows, "ok": all(0.8 <= r["plan_over_measured"] <= 1.25 for r in rows) or dry}


def fsdp_1gpu(out: Path, dry: bool, log: Path) -> dict:
    target = out / "fsdp.json"
    config = ROOT / "mmtune" / "recipes" / "launch" / ("fsdp_offload.yaml" if dry else "fsdp.yaml")
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1",
         "--main_process_port", str(free_port()), str(ROOT / "tests" / "fsdp_launch_worker.py"), str(target)], 300, log)
    result = json.loads(target.read_text())
    want = "cpu" if dry else "cuda"
    return {**result, "ok": result["all_dtensor"] and result["devices"] == [want]
            and result["master_dtype"] == ["torch.float32"] and result["logits_dtype"] == "torch.bfloat16"}


CHECKS = {"llava_bf16": llava_bf16, "qlora_cuda": qlora_cuda, "step_1b": step_1b, "fsdp_1gpu": fsdp_1gpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu_check", help="directory for runs, logs and gpu_check.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: test the plumbing")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(CHECKS)}")
    ap.add_argument("--probe-optimizer", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe_optimizer:
        probe_optimizer(Path(args.probe_optimizer))
        return 0
    names = args.only.split(",") if args.only else list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        ap.error(f"--only: unknown check(s) {unknown}; choose from {list(CHECKS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if not args.dry_run and gpu is None:
        ap.error("no CUDA device: run with --dry-run to test the plumbing on CPU")
    report = Report(out / "gpu_check.json", {"dry_run": args.dry_run, "gpu": gpu, "torch": torch.__version__,
                                              "machine": platform.platform()})
    for name in names:
        t0 = time.perf_counter()
        try:
            result = CHECKS[name](out, args.dry_run, out / f"{name}.log")
        except Exception as e:  # recorded, and the next check still runs
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"[-2000:]}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report.add(name, result)
        print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)", flush=True)
    return 0 if all(r["ok"] for r in report.data["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
