"""`mmtune plan` against measured peak memory, on CPU (fp32) or on one GPU (bf16 autocast).

    python benchmarks/plan_memory.py                       # tiny + ~100M on CPU, ~2 minutes
    python benchmarks/plan_memory.py --device cuda --cases 100m,1b --out benchmarks/results/plan_memory_gpu.json

Each case is the llava recipe's finetune stage (projector + LLM trained, CLIP tower frozen) at
a given micro-batch and sequence length, planned as `ddp` on 1 GPU, and measured in its own
subprocess over 2 training steps (forward, backward, AdamW step: the second step holds the
optimizer state): on CPU the peak RSS above the process's RSS before the model is built, on
CUDA `torch.cuda.max_memory_allocated`. Rows have full sequences (one 224-px image + text), as
the plan assumes. Writes JSON with the plan's parts, the measurement and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

# name -> (llm hidden, intermediate, layers, heads, vocab, micro-batch, sequence length)
CASES = {
    "tiny": (128, 256, 2, 4, 1000, 8, 128),
    "100m": (768, 2048, 12, 12, 32000, 4, 256),
    "1b": (2048, 5632, 22, 16, 32000, 8, 1024),  # TinyLlama-1.1B's shape
}


def overrides(case: str, mixed_precision: str) -> list[str]:
    h, inter, layers, heads, vocab, b, s = CASES[case]
    return [f"model.llm.arch.hidden_size={h}", f"model.llm.arch.intermediate_size={inter}",
            f"model.llm.arch.num_hidden_layers={layers}", f"model.llm.arch.num_attention_heads={heads}",
            f"model.llm.arch.num_key_value_heads={heads}", f"model.llm.arch.vocab_size={vocab}",
            f"model.llm.arch.max_position_embeddings={max(s, 512)}",
            f"stages.finetune.batch_size={b}", f"train.max_length={s}", f"train.mixed_precision={mixed_precision}"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(case: str, device: str, mixed_precision: str, steps: int = 2, peak_tflops: float = 0.0) -> dict:
    """Runs in a fresh process: build, `steps` steps, peak memory above the starting point;
    the mean time of the steps after the first two, and MFU against `peak_tflops`."""
    import time

    import torch

    from mmtune.batch import IGNORE, Batch
    from mmtune.model import MultimodalLM
    from mmtune.recipes.common import load_recipe_config
    from mmtune.train.loop import loss_sum
    from mmtune.train.params import set_trainable

    torch.manual_seed(0)
    cfg = load_recipe_config("llava", "tiny", overrides(case, mixed_precision))
    stage = cfg.stages["finetune"]
    with torch.device("meta"):  # imports every model class first: their code is not training memory
        MultimodalLM.build(cfg.model)
    # Start autograd's threads and the allocator's arenas on a throwaway model: runtime, not plan.
    warm = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).to(device)
    warm_opt = torch.optim.AdamW(warm.parameters())
    warm(torch.randn(8, 64, device=device)).sum().backward()
    warm_opt.step()
    del warm, warm_opt
    start = rss_bytes()
    model = MultimodalLM.build(cfg.model).to(device).train()
    set_trainable(model, stage.train)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b, s = stage.batch_size, cfg.train.max_length
    k, ph = model.tokens_per_medium("image"), model.placeholder_ids["image"]
    vocab = model.llm.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    text = torch.randint(ph + 1, vocab, (b, s - k - 1), generator=g)  # no placeholder ids among the words
    ids = torch.cat([torch.full((b, 1), 2), torch.full((b, k), ph), text], dim=1)
    labels = ids.clone()
    labels[:, :1 + k] = IGNORE
    size = model.encoders["image"].spec.size
    batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                  media={"image": torch.randn(b, 3, size, size, generator=g)},
                  media_per_row={"image": [1] * b}).to(device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
    times = []
    for _ in range(max(steps, 2)):
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=mixed_precision == "bf16"):
            loss = loss_sum(model(batch), batch.labels) / batch.num_loss_tokens()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
    step_s = sum(times[2:]) / len(times[2:]) if len(times) > 2 else None
    out = {"measured_bytes": peak, "loss": float(loss), "step_s": step_s}
    if step_s and peak_tflops > 0:
        # DESIGN.md section 7: 6N per token for trained weights (LLM, projector), 2N for the
        # frozen tower run forward only; image tokens count as LLM tokens.
        n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
        tokens, patches = b * s, b * model.encoders["image"].num_tokens()
        flops = 6 * (n(model.llm) * tokens + n(model.projectors) * patches) + 2 * n(model.encoders) * patches
        out.update(tokens_per_s=tokens / step_s, mfu=flops / step_s / (peak_tflops * 1e12))
    return out


def planned(case: str, mixed_precision: str) -> dict:
    from mmtune.plan import memory, multimodal_workloads
    from mmtune.recipes.common import load_recipe_config

    cfg = load_recipe_config("llava", "tiny", overrides(case, mixed_precision))
    (w,) = [w for w in multimodal_workloads(cfg) if w.stage == "finetune"]
    return {"params": w.params, "trainable": w.trainable, **memory(w, "ddp", 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="tiny,100m")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default="benchmarks/results/plan_memory.json")
    ap.add_argument("--steps", type=int, default=2, help="steps per case (time: mean after the first 2)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device bf16 dense peak for MFU (H200: 989)")
    ap.add_argument("--measure-one", help=argparse.SUPPRESS)  # child process: one case
    args = ap.parse_args()
    mp = "bf16" if args.device == "cuda" else "no"
    if args.measure_one:
        print(json.dumps(measure(args.measure_one, args.device, mp, args.steps, args.peak_tflops)))
        return
    rows = []
    for case in args.cases.split(","):
        plan = planned(case, mp)
        # A fixed mmap threshold makes glibc return every freed tensor of 64 KiB or more to the
        # OS at once, so the peak RSS counts live tensors (as CUDA's max_memory_allocated does)
        # and not blocks the allocator keeps cached: the tiny case read 0.61 of plan without it.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        child = subprocess.run([sys.executable, __file__, "--measure-one", case, "--device", args.device,
                                "--steps", str(args.steps), "--peak-tflops", str(args.peak_tflops)],
                               capture_output=True, text=True, env=env)
        if child.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{child.stderr[-3000:]}")
        got = json.loads(child.stdout.strip().splitlines()[-1])
        ratio = plan["total"] / got["measured_bytes"]
        rows.append({"case": case, "shape": dict(zip(("hidden", "intermediate", "layers", "heads", "vocab",
                                                       "micro_batch", "seq_len"), CASES[case])),
                     "plan": plan, **got, "plan_over_measured": ratio})
        print(f"{case:>6}: {plan['params'] / 1e6:8.1f}M params  plan {plan['total'] / 2**20:9.1f} MiB  "
              f"measured {got['measured_bytes'] / 2**20:9.1f} MiB  plan/measured {ratio:.3f}", flush=True)
    import torch

    result = {"device": args.device, "mixed_precision": mp, "machine": platform.platform(),
              "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
