"""QLoRA vs LoRA on SmolLM2-135M- and 360M-shaped Llamas: weight memory, peak RSS, step time.

    python benchmarks/qlora_memory.py                 # ~ 15 minutes on a small CPU
    python benchmarks/qlora_memory.py --steps 1 --layers 2   # quick smoke run

The models are random-init with the shapes of HuggingFaceTB/SmolLM2-135M (hidden 576,
intermediate 1536, 30 layers, 9 heads, 3 kv heads) and SmolLM2-360M (hidden 960, intermediate
2560, 32 layers, 15 heads, 5 kv heads), both vocab 49152 with tied embeddings, saved in bf16 to
a temp dir first, because 4-bit weights are quantised while transformers loads a checkpoint.

Variants: `qlora` (NF4 + double-quant decoder linears; embedding / lm_head in 16-bit, QLoRA's
default), `qlora_embeddings` (`quantize_embeddings: true`: the tied embedding / lm_head in NF4
too, one storage) and `lora` (bf16 base).

Measured:
  * weight memory: bytes of parameters + buffers + bitsandbytes quantisation state, for the bf16
    model and both NF4 variants (as loaded, and after peft's prepare_model_for_kbit_training,
    which upcasts the non-quantised weights to fp32); for the whole model, the decoder's Linear
    layers alone and the embedding + lm_head alone.
  * training steps (forward, backward, optimizer step) on a fixed batch (4 x 256 tokens,
    labels = inputs), same LoRA config: the losses, the mean step time after one warm-up step,
    and the peak RSS over the steps. Each variant runs in its own subprocess, so one's memory
    does not hide the other's. All three variants on the 135M shape, the two QLoRA ones on 360M.
Results go to --out as JSON, with the machine and library versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
SHAPES = {
    "smollm2_135m": SMOLLM2_135M,
    "smollm2_360m": {**SMOLLM2_135M, "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5},
}
# Training-step variants per shape: LoRA on bf16 only where it has been compared before (135M).
STEP_VARIANTS = {"smollm2_135m": ("qlora", "qlora_embeddings", "lora"),
                 "smollm2_360m": ("qlora", "qlora_embeddings")}
NF4_VARIANTS = {"nf4": False, "nf4_embeddings": True}  # name -> quantize_embeddings
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
def save_model(path: Path, shape: dict, layers: int | None) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    arch = dict(shape, num_hidden_layers=layers or shape["num_hidden_layers"])
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


def _in_vocab(name, module) -> bool:
    return name.rsplit(".", 1)[-1] in ("embed_tokens", "lm_head")


def _weights(llm) -> dict:
    from mmtune.llm import weight_bytes

    return {"total_mib": mib(weight_bytes(llm)), "decoder_linear_mib": mib(weight_bytes(llm, only=_in_decoder_linear)),
            "embedding_lm_head_mib": mib(weight_bytes(llm, only=_in_vocab))}  # tied: one storage, counted once


def weight_memory(path: Path) -> dict:
    from mmtune.config import LLMConfig
    from mmtune.llm import load_llm, prepare_kbit

    bf16 = load_llm(LLMConfig(path=str(path), dtype="bfloat16"))
    out = {"bf16": _weights(bf16)}
    del bf16
    for name, embeddings in NF4_VARIANTS.items():
        nf4 = load_llm(LLMConfig(path=str(path), dtype="bfloat16", quantize="nf4", quantize_embeddings=embeddings),
                       prepare=False)
        out[f"{name}_as_loaded"] = _weights(nf4)
        prepare_kbit(nf4)
        out[f"{name}_prepared"] = _weights(nf4)
        del nf4
    b = out["bf16"]
    for key, w in out.items():
        if key != "bf16":
            w["ratio_to_bf16_total"] = round(w["total_mib"] / b["total_mib"], 4)
            w["ratio_to_bf16_decoder_linear"] = round(w["decoder_linear_mib"] / b["decoder_linear_mib"], 4)
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
    qlora = variant.startswith("qlora")
    cfg = LLMConfig(path=str(path), dtype="bfloat16", quantize="nf4" if qlora else None,
                    quantize_embeddings=variant == "qlora_embeddings")
    llm = load_llm(cfg, gradient_checkpointing=gradient_checkpointing)
    if not qlora:
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
        "compute_dtype": str(compute_dtype_4bit(cfg)) if qlora else "torch.bfloat16",
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
VARIANTS = {  # what each weight-memory / training-step key means, written into the JSON
    "nf4": "QLoRA default: decoder linears NF4 + double quant, embedding / lm_head bf16",
    "nf4_embeddings": "quantize_embeddings: true -- the tied embedding / lm_head in NF4 too, one storage",
    "qlora": "training steps on the nf4 base", "qlora_embeddings": "training steps on the nf4_embeddings base",
    "lora": "training steps on the bf16 base",
}


def run_worker(variant: str, path: Path, args) -> dict:
    print(f"  training steps: {variant} ({args.steps} timed + 1 warm-up)", flush=True)
    cmd = [sys.executable, __file__, "--worker", variant, "--model-dir", str(path),
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
           "--rank", str(args.rank), "--threads", str(args.threads)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{variant} worker failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def measure_shape(name: str, tmp: str, args) -> dict:
    shape, path = SHAPES[name], Path(tmp) / name
    print(f"{name}: saving a random-init model ({args.layers or shape['num_hidden_layers']} layers)", flush=True)
    info = save_model(path, shape, args.layers)
    print(f"{name}: measuring weight memory (bf16, nf4, nf4 + embeddings)", flush=True)
    weights = weight_memory(path)
    steps = {v: run_worker(v, path, args) for v in STEP_VARIANTS[name]}
    shutil.rmtree(path)  # the next shape's checkpoint needs the disk more
    default, embedded = steps["qlora"]["losses"], steps["qlora_embeddings"]["losses"]
    return {
        "model": {**shape, "num_hidden_layers": args.layers or shape["num_hidden_layers"],
                  "params": info["params"], "init": "random (seed 0), saved in bf16"},
        "weight_memory_mib": weights,
        "weight_ratio_nf4_to_bf16": {v: weights[f"{v}_as_loaded"]["ratio_to_bf16_total"] for v in NF4_VARIANTS},
        "train_step": steps,
        "qlora_losses": {"qlora": default, "qlora_embeddings": embedded,
                         "max_rel_diff": round(max(abs(e - d) / d for d, e in zip(default, embedded)), 4)},
    }


def qlora_vs_lora(q: dict, lo: dict) -> dict:
    return {
        "peak_rss_steps_mib": {"qlora": q["peak_rss_steps_mib"], "lora_bf16": lo["peak_rss_steps_mib"]},
        "peak_rss_ratio_qlora_to_lora": round(q["peak_rss_steps_mib"] / lo["peak_rss_steps_mib"], 3),
        "peak_rss_over_start_mib": {"qlora": q["peak_rss_steps_over_start_mib"],
                                    "lora_bf16": lo["peak_rss_steps_over_start_mib"]},
        "mean_step_s": {"qlora": q["mean_step_s"], "lora_bf16": lo["mean_step_s"]},
        "step_time_ratio_qlora_to_lora": round(q["mean_step_s"] / lo["mean_step_s"], 3),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/qlora_memory.json")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--layers", type=int, help="fewer for a quick smoke run (default: each shape's own)")
    p.add_argument("--rank", type=int, default=16, help="LoRA r (alpha = 2r), all linear layers")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--worker", choices=["qlora", "qlora_embeddings", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = train_steps(args.worker, Path(args.model_dir), args.steps, args.batch, args.seq,
                             args.rank, args.threads, args.gradient_checkpointing)
        print("RESULT " + json.dumps(result))
        return result

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qlora-bench-") as tmp:
        shapes = {name: measure_shape(name, tmp, args) for name in args.shapes}
    ratios = {name: r["weight_ratio_nf4_to_bf16"] for name, r in shapes.items()}
    meets = {v: {name: r[v] <= TARGET_WEIGHT_RATIO for name, r in ratios.items()} for v in NF4_VARIANTS}
    result = {
        "variants": VARIANTS,
        "batch": {"batch_size": args.batch, "seq_len": args.seq, "lora_r": args.rank,
                  "lora_alpha": 2 * args.rank, "target_modules": "all-linear",
                  "gradient_checkpointing": args.gradient_checkpointing},
        "weight_ratio_target": TARGET_WEIGHT_RATIO,
        "weight_ratio_nf4_to_bf16": ratios,  # whole model, as loaded, nf4 variant / bf16
        "meets_weight_ratio_target": meets,
        "meets_weight_ratio_target_with": [v for v, ok in meets.items() if all(ok.values())],
        "qlora_loss_max_rel_diff_embeddings_vs_default": {
            name: r["qlora_losses"]["max_rel_diff"] for name, r in shapes.items()},
        "summary_qlora_vs_lora": {name: qlora_vs_lora(r["train_step"]["qlora"], r["train_step"]["lora"])
                                  for name, r in shapes.items() if "lora" in r["train_step"]},
        "shapes": shapes,
        "machine": {**machine(), "load_average_before": load_before},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    keys = ("weight_ratio_nf4_to_bf16", "meets_weight_ratio_target", "meets_weight_ratio_target_with",
            "qlora_loss_max_rel_diff_embeddings_vs_default", "summary_qlora_vs_lora")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    print(f"wrote {out} ({result['wall_s']}s)")
    return result


if __name__ == "__main__":
    main()
