"""mmtune's llava recipe vs transformers LlavaForConditionalGeneration + TRL SFTTrainer, on
identical work, in one invocation.

Both sides: a random-init CLIP tower (hidden 256, 4 layers, 112 px, patch 14 -> 64 image
tokens, layer -2, CLS dropped, frozen), a 2-layer GELU MLP, Llama (hidden 512, 8 layers), a
word-level tokenizer over a closed vocabulary, 512 synthetic image-QA samples whose answers
run ~16-190 tokens, batch 8, AdamW lr 1e-3 with cosine decay, the same initial weights, the
same samples in the same order, loss on the answer + </s> only. Each run is its own process
(own peak RSS, same thread count); the sides alternate so machine noise hits both. The
first `--warmup` steps are left out of timing. Writes one JSON: real tokens/s (image tokens
count), total tokens/s, samples/s, padding efficiency, peak RSS, loss at equal samples, MFU,
ratios mmtune/peer, and each mmtune speed-up switched off in turn.

    python benchmarks/peer_llava.py                                  # the full comparison
    python benchmarks/peer_llava.py --steps 3 --warmup 1 --small     # a seconds-long check
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_sides import SideResult, Work, peer_model, run_mmtune, run_peer, tokenizer  # noqa: E402

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
FILLER = "a b c d e f g h".split()
# mmtune's speed-ups, each switched off in turn (fp32), against the default run.
ABLATIONS = {
    "padded (packing off)": ["train.packing=false"],
    "packed, dense block mask (sdpa, no varlen)": ["train.attention=sdpa"],
    "full logits (head_at_labels off)": ["train.head_at_labels=false"],
    "packed rows of 512 (pack_length=512)": ["train.pack_length=512"],
    "feature cache off": ["train.feature_cache=false"],
    "data loader worker (num_workers=1)": ["train.num_workers=1"],
    "unfused AdamW (fused_optimizer off)": ["train.fused_optimizer=false"],
    "torch.compile on": ["train.compile=true"],
}


def make_data(out: Path, n: int, work: Work, lo: int, hi: int, seed: int) -> None:
    """`n` one-turn image QA records; the answer names the shape, its colour and side, then
    continues a fixed word cycle, ~lo..hi words (long-tailed, like chat answers)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    s = work.image_size
    lines = []
    for i in range(n):
        colour, shape, side = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(["left", "right"])
        img = Image.new("RGB", (s, s), (250, 250, 250))
        x0 = rng.randint(2, s // 2 - s // 4 - 2) + (s // 2 if side == "right" else 0)
        y0 = rng.randint(2, s - s // 4 - 2)
        box = [x0, y0, x0 + s // 4, y0 + s // 4]
        draw = ImageDraw.Draw(img)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLOURS[colour])
        img.save(out / "images" / f"{i:04d}.png")
        length = min(hi, lo + int(rng.expovariate(1 / ((hi - lo) / 4))))
        head = f"the {shape} is {colour} , it is on the {side} .".split()
        words = (head + [FILLER[(j + len(colour)) % len(FILLER)] for j in range(length)])[:length]
        lines.append(json.dumps({"id": str(i), "images": [f"images/{i:04d}.png"], "messages": [
            {"role": "user", "content": "<image> describe the shape in the image ."},
            {"role": "assistant", "content": " ".join(words)}]}))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")


def summarise(r: SideResult, work: Work) -> dict:
    w = work.warmup
    seconds = r.step_end_s[-1] - r.step_end_s[w - 1]
    cpu = r.step_end_cpu_s[-1] - r.step_end_cpu_s[w - 1]
    real, computed = sum(r.real_tokens[w:]), sum(r.computed_tokens[w:])
    out = {"variant": r.variant, "precision": r.precision, "timed_steps": len(r.step_end_s) - w,
           "timed_seconds": round(seconds, 2), "real_tokens_per_s": round(real / seconds, 1),
           "timed_cpu_seconds": round(cpu, 2), "real_tokens_per_cpu_s": round(real / cpu, 1),
           "total_tokens_per_s": round(computed / seconds, 1),
           "samples_per_s": round(work.batch_size * (len(r.step_end_s) - w) / seconds, 2),
           "padding_efficiency": round(sum(r.real_tokens) / sum(r.computed_tokens), 4),
           "peak_rss_mib": round(r.peak_rss_mib, 1), "params": r.params, "trainable_params": r.trainable_params,
           "real_tokens": sum(r.real_tokens), "supervised_tokens": sum(r.supervised_tokens),
           "loss_first": r.losses[0], "loss_last": r.losses[-1],
           "loss_last5_mean": round(sum(r.losses[-5:]) / len(r.losses[-5:]), 4), "losses": r.losses,
           "step_seconds": [round(b - a, 2) for a, b in zip([0.0] + r.step_end_s, r.step_end_s)]}
    if "mfu" in r.extra:
        out["mfu"] = r.extra["mfu"]
        # MFU of the timed steps only: the run's model FLOPs scale with its real tokens.
        out["mfu_timed"] = round(r.extra["model_flops"] * real / sum(r.real_tokens) / seconds
                                 / r.extra["peak_flops_per_s"], 5)
    out.update({k: v for k, v in r.extra.items() if k in ("overrides",)})
    return out


def child(args) -> None:
    work = Work(**json.loads(args.work))
    data = Path(args.data)
    out = Path(args.run_dir)
    if args.child == "peer":
        order = json.loads((data / "order.json").read_text())
        result = run_peer(work, data, order, args.precision, out)
    else:
        result = run_mmtune(work, data, args.precision, args.overrides, out, args.variant)
    Path(args.result).write_text(json.dumps(dataclasses.asdict(result)))


def launch(side: str, work: Work, data: Path, tmp: Path, precision: str, variant: str = "default",
           overrides: list[str] = ()) -> tuple[SideResult, list[float]]:
    run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{side}-"))
    result = run_dir / "result.json"
    cmd = [sys.executable, __file__, "--child", side, "--work", json.dumps(dataclasses.asdict(work)),
           "--data", str(data), "--run-dir", str(run_dir), "--precision", precision, "--variant", variant,
           "--result", str(result), "--overrides", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(work.threads), TOKENIZERS_PARALLELISM="false")
    print(f"[peer_llava] {side} {precision} {variant} ...", flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL if not os.environ.get("PEER_LLAVA_VERBOSE") else None)
    print(f"[peer_llava]   done in {time.time() - t0:.0f}s, load {os.getloadavg()}", flush=True)
    return SideResult(**json.loads(result.read_text())), list(os.getloadavg())


def check_same_work(peer: SideResult, mm: SideResult) -> None:
    if peer.params != mm.params or peer.trainable_params != mm.trainable_params:
        raise AssertionError(f"parameters differ: peer {peer.params}/{peer.trainable_params} trainable, "
                             f"mmtune {mm.params}/{mm.trainable_params}")
    if peer.real_tokens != mm.real_tokens or peer.supervised_tokens != mm.supervised_tokens:
        raise AssertionError(f"token counts differ per step: peer real {peer.real_tokens} supervised "
                             f"{peer.supervised_tokens}; mmtune real {mm.real_tokens} supervised {mm.supervised_tokens}")


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--ablations", default="all", help="comma-separated names from ABLATIONS, 'all' or 'none'")
    ap.add_argument("--small", action="store_true", help="a tiny model and short answers (for the test)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/peer_llava.json"))
    # child-process arguments
    ap.add_argument("--child", choices=["peer", "mmtune"])
    for name in ("--work", "--data", "--run-dir", "--precision", "--variant", "--result"):
        ap.add_argument(name)
    ap.add_argument("--overrides", nargs="*", default=[])
    args = ap.parse_args()
    if args.child:
        return child(args)

    work = Work(steps=args.steps, warmup=args.warmup, threads=args.threads)
    lo, hi = 16, 190
    if args.small:
        work = dataclasses.replace(work, vision_hidden=32, vision_layers=1, vision_heads=2, image_size=28,
                                   llm_hidden=32, llm_layers=2, llm_heads=2, llm_intermediate=64)
        lo, hi = 4, 24
    ablations = (list(ABLATIONS) if args.ablations == "all" else [] if args.ablations == "none"
                 else args.ablations.split(","))
    with tempfile.TemporaryDirectory(prefix="peer_llava-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        make_data(data, args.samples, work, lo, hi, seed=0)
        torch.manual_seed(work.seed)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in peer_model(work, tokenizer()).state_dict().items()},
                  data / "init.safetensors")
        from mmtune.train.loop import BatchPlan

        plan = BatchPlan(args.samples, work.batch_size, work.seed)
        (data / "order.json").write_text(json.dumps([plan.indices(k) for k in range(work.steps)]))
        result: dict = {"work": dataclasses.asdict(work), "answer_words": [lo, hi], "samples": args.samples,
                        "threads": work.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                        "machine": platform.machine(), "loadavg_start": list(os.getloadavg()), "runs": {}}
        runs = result["runs"]
        for precision in args.precisions.split(","):
            peer, load_p = launch("peer", work, data, tmp, precision)
            mm, load_m = launch("mmtune", work, data, tmp, precision)
            check_same_work(peer, mm)
            p, m = summarise(peer, work), summarise(mm, work)
            p["loadavg_after"], m["loadavg_after"] = load_p, load_m
            runs[f"peer_{precision}"], runs[f"mmtune_{precision}"] = p, m
            result[f"ratios_{precision}"] = {
                "real_tokens_per_s": round(m["real_tokens_per_s"] / p["real_tokens_per_s"], 3),
                "real_tokens_per_cpu_s": round(m["real_tokens_per_cpu_s"] / p["real_tokens_per_cpu_s"], 3),
                "samples_per_s": round(m["samples_per_s"] / p["samples_per_s"], 3),
                "peak_rss": round(m["peak_rss_mib"] / p["peak_rss_mib"], 3),
                "loss_last5_mean_minus_peer": round(m["loss_last5_mean"] - p["loss_last5_mean"], 4)}
            save(result, args.out)  # each finished pair is kept, even if a later run fails
        base = runs.get("mmtune_fp32")
        for name in ablations:
            mm, load = launch("mmtune", work, data, tmp, "fp32", name, ABLATIONS[name])
            s = summarise(mm, work)
            s["loadavg_after"] = load
            if base is not None:
                s["default_over_this_real_tokens_per_s"] = round(base["real_tokens_per_s"] / s["real_tokens_per_s"], 3)
                s["default_over_this_real_tokens_per_cpu_s"] = round(
                    base["real_tokens_per_cpu_s"] / s["real_tokens_per_cpu_s"], 3)
            runs[f"ablation: {name}"] = s
            save(result, args.out)
        result["loadavg_end"] = list(os.getloadavg())
    save(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratios")}, indent=1))


if __name__ == "__main__":
    main()
