"""QLoRA vs LoRA on a SmolLM2-135M-shaped Llama: weight memory, peak RSS, step time.

    python benchmarks/qlora_memory.py                 # ~ a few minutes on a small CPU
    python benchmarks/qlora_memory.py --steps 2       # quicker check

The model is random-init (same shapes as HuggingFaceTB/SmolLM2-135M: hidden 576, intermediate
1536, 30 layers, 9 heads, 3 kv heads, vocab 49152, tied embeddings), saved in bf16 to a temp
dir first, because 4-bit weights are quantised while transformers loads a checkpoint.

Measured:
  * weight memory: bytes of parameters + buffers + bitsandbytes quantisation state, for the bf16
    model and the NF4 + double-quant model (as loaded, and after peft's
    prepare_model_for_kbit_training, which upcasts the non-quantised weights to fp32);
    for the whole model and for the decoder's Linear layers alone (what NF4 quantises).
  * one training step (forward, backward, optimizer step) on a fixed batch (4 x 256 tokens,
    labels = inputs) for QLoRA (NF4 base) and LoRA (bf16 base), same LoRA config: the mean step
    time after one warm-up step, and the peak RSS over the steps. Each variant runs in its own
    subprocess, so one's memory does not hide the other's.
Results go to --out as JSON, with the machine and library versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2_135M = {
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0, "bos_token_id": 0, "eos_token_id": 0,
}
TARGET_WEIGHT_RATIO = 0.30  # NF4 / bf16 weight bytes


# ----------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the process's lifetime peak
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = kib / 1024 if sys.platform == "darwin" else kib  # bytes on macOS
    return kib / 1024


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mib(n: int) -> float:
    return round(n / 2**20, 2)


# ----------------------------------------------------------------------------- pieces
def save_model(path: Path, layers: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    arch = dict(SMOLLM2_135M, num_hidden_layers=layers)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    llm.save_pretrained(path)
    # A stand-in tokenizer so the directory is a complete checkpoint (the benchmark feeds ids).
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
                                  unk_token="t1", eos_token="t0", bos_token="t0", pad_token="t0")
    tok.save_pretrained(path)
    return {"params": sum(p.numel() for p in llm.parameters())}


def _in_decoder_linear(name, module) -> bool:
    from torch import nn

    return ".layers." in f".{name}." and isinstance(module, nn.Linear)


def weight_memory(path: Path) -> dict:
    from mmtune.config import LLMConfig
    from mmtune.llm import load_llm, prepare_kbit, weight_bytes

    bf16 = load_llm(LLMConfig(path=str(path), dtype="bfloat16"))
    out = {"bf16": {"total_mib": mib(weight_bytes(bf16)),
                    "decoder_linear_mib": mib(weight_bytes(bf16, only=_in_decoder_linear))}}
    del bf16
    nf4 = load_llm(LLMConfig(path=str(path), dtype="bfloat16", quantize="nf4"), prepare=False)
    out["nf4_as_loaded"] = {"total_mib": mib(weight_bytes(nf4)),
                            "decoder_linear_mib": mib(weight_bytes(nf4, only=_in_decoder_linear))}
    prepare_kbit(nf4)
    out["nf4_prepared"] = {"total_mib": mib(weight_bytes(nf4)),
                           "decoder_linear_mib": mib(weight_bytes(nf4, only=_in_decoder_linear))}
    b = out["bf16"]
    for key in ("nf4_as_loaded", "nf4_prepared"):
        out[key]["ratio_to_bf16_total"] = round(out[key]["total_mib"] / b["total_mib"], 4)
        out[key]["ratio_to_bf16_decoder_linear"] = round(out[key]["decoder_linear_mib"] / b["decoder_linear_mib"], 4)
    return out


def train_steps(variant: str, path: Path, steps: int, batch: int, seq: int, rank: int,
                threads: int, gradient_checkpointing: bool) -> dict:
    """Runs in a fresh process: load, add LoRA, 1 warm-up + `steps` timed steps."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from mmtune.config import LLMConfig, LoraConfig
    from mmtune.llm import add_lora, compute_dtype_4bit, kbit_optimizer, load_llm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    load_before = os.getloadavg()  # other work on the machine skews CPU step times
    rss_start = rss_mib()
    cfg = LLMConfig(path=str(path), dtype="bfloat16", quantize="nf4" if variant == "qlora" else None)
    llm = load_llm(cfg, gradient_checkpointing=gradient_checkpointing)
    if variant != "qlora":
        llm.to(device)
        if gradient_checkpointing:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    llm = add_lora(llm, LoraConfig(r=rank, alpha=2 * rank, dropout=0.05))
    llm.train()
    load_peak = peak_rss_mib()
    rss_loaded = rss_mib()
    params = [p for p in llm.parameters() if p.requires_grad]
    opt = kbit_optimizer(params, 2e-4, (0.9, 0.999), 0.0, device)
    opt_name = type(opt).__name__ if opt is not None else "AdamW"
    opt = opt or torch.optim.AdamW(params, lr=2e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, llm.config.vocab_size, (batch, seq), generator=g).to(device)
    peak_reset = reset_peak_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    times, losses = [], []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = llm(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(round(loss.item(), 4))
        if i > 0:  # step 0 warms up (allocator, kernels, optimizer state)
            times.append(round(dt, 3))
        else:
            warmup = round(dt, 3)
    result = {
        "variant": variant, "device": device, "optimizer": opt_name, "threads": torch.get_num_threads(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "compute_dtype": str(compute_dtype_4bit(cfg)) if variant == "qlora" else "torch.bfloat16",
        "trainable_params": sum(p.numel() for p in params),
        "rss_before_load_mib": rss_start, "rss_after_load_mib": rss_loaded, "peak_rss_load_mib": load_peak,
        "peak_rss_steps_mib": peak_rss_mib(),
        "peak_rss_steps_over_start_mib": round(peak_rss_mib() - rss_start, 1),  # minus imports
        "peak_rss_reset_before_steps": peak_reset,
        "warmup_step_s": warmup, "step_s": times, "mean_step_s": round(sum(times) / len(times), 3),
        "losses": losses,
    }
    if device == "cuda":
        result["peak_cuda_mib"] = mib(torch.cuda.max_memory_allocated())
    return result


def machine() -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/qlora_memory.json")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--layers", type=int, default=30, help="fewer for a quick smoke run")
    p.add_argument("--rank", type=int, default=16, help="LoRA r (alpha = 2r), all linear layers")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--worker", choices=["qlora", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = train_steps(args.worker, Path(args.model_dir), args.steps, args.batch, args.seq,
                             args.rank, args.threads, args.gradient_checkpointing)
        print("RESULT " + json.dumps(result))
        return result

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qlora-bench-") as tmp:
        path = Path(tmp) / "smollm2-135m-shaped"
        print(f"saving a random-init SmolLM2-135M-shaped model ({args.layers} layers) to {path}", flush=True)
        info = save_model(path, args.layers)
        print("measuring weight memory (bf16, nf4)", flush=True)
        weights = weight_memory(path)
        steps = {}
        for variant in ("qlora", "lora"):
            print(f"training steps: {variant} ({args.steps} timed + 1 warm-up)", flush=True)
            cmd = [sys.executable, __file__, "--worker", variant, "--model-dir", str(path),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                   "--rank", str(args.rank), "--threads", str(args.threads)]
            if args.gradient_checkpointing:
                cmd.append("--gradient-checkpointing")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{variant} worker failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
            steps[variant] = json.loads(lines[-1][len("RESULT "):])

    q, lo = steps["qlora"], steps["lora"]
    result = {
        "model": {**SMOLLM2_135M, "num_hidden_layers": args.layers, "params": info["params"],
                  "init": "random (seed 0), saved in bf16"},
        "batch": {"batch_size": args.batch, "seq_len": args.seq, "lora_r": args.rank,
                  "lora_alpha": 2 * args.rank, "target_modules": "all-linear",
                  "gradient_checkpointing": args.gradient_checkpointing},
        "weight_memory_mib": weights,
        "weight_ratio_target": TARGET_WEIGHT_RATIO,
        "weight_ratio_nf4_to_bf16": weights["nf4_as_loaded"]["ratio_to_bf16_total"],
        "meets_weight_ratio_target": weights["nf4_as_loaded"]["ratio_to_bf16_total"] <= TARGET_WEIGHT_RATIO,
        "train_step": {"qlora_nf4": q, "lora_bf16": lo},
        "summary": {
            "peak_rss_steps_mib": {"qlora": q["peak_rss_steps_mib"], "lora_bf16": lo["peak_rss_steps_mib"]},
            "peak_rss_ratio_qlora_to_lora": round(q["peak_rss_steps_mib"] / lo["peak_rss_steps_mib"], 3),
            "peak_rss_over_start_mib": {"qlora": q["peak_rss_steps_over_start_mib"],
                                        "lora_bf16": lo["peak_rss_steps_over_start_mib"]},
            "mean_step_s": {"qlora": q["mean_step_s"], "lora_bf16": lo["mean_step_s"]},
            "step_time_ratio_qlora_to_lora": round(q["mean_step_s"] / lo["mean_step_s"], 3),
        },
        "machine": machine(),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({"weight_memory_mib": weights, **result["summary"]}, indent=2))
    print(f"wrote {out} ({result['wall_s']}s)")
    return result


if __name__ == "__main__":
    main()
