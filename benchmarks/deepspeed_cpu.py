"""DeepSpeed ZeRO-2 / ZeRO-3 on CPU with the shipped JSONs: a tiny LLaVA (frozen tower, trained
projector + LLM) in 2 processes over gloo vs 1 plain process on the same global batch, and a
step where one rank's micro-batch has no image (it must not hang under ZeRO-3).

    pip install -c constraints.txt -e ".[deepspeed]"
    python benchmarks/deepspeed_cpu.py --out benchmarks/results/deepspeed_cpu.json

The JSONs' "auto" entries (filled by accelerate from a dataloader) are set here: micro-batch 2,
no accumulation, fp32 (CPU). DeepSpeed JIT-compiles its CPU communication op on first use.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
ROWS, STEPS, WORLD = 2, 3, 2


def build():
    from mmtune.model import MultimodalLM
    from mmtune.recipes.common import load_recipe_config
    from mmtune.train.params import set_trainable

    cfg = load_recipe_config("llava", "tiny", ["train.mixed_precision=no"])
    torch.manual_seed(0)
    model = MultimodalLM.build(cfg.model)
    set_trainable(model, ["projector", "llm"])
    return model.train()


def rows(model, step: int, rank: int, with_image: bool = True):
    from mmtune.batch import IGNORE, Batch

    g = torch.Generator().manual_seed(1000 * step + rank)
    k, ph = model.tokens_per_medium("image"), model.placeholder_ids["image"]
    vocab = model.llm.get_input_embeddings().num_embeddings
    text = torch.randint(ph + 1, vocab, (ROWS, 12), generator=g)
    media = torch.full((ROWS, k if with_image else 0), ph)
    ids = torch.cat([torch.full((ROWS, 1), 2), media, text], dim=1)
    labels = ids.clone()
    labels[:, :1 + media.shape[1]] = IGNORE
    size = model.encoders["image"].spec.size
    return Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                 media={"image": torch.randn(ROWS, 3, size, size, generator=g)} if with_image else {},
                 media_per_row={"image": [int(with_image)] * ROWS})


def loss_of(model, batch, world: int):
    import torch.distributed as dist

    from mmtune.train.loop import loss_sum

    total = torch.tensor(float(batch.num_loss_tokens()))
    if world > 1:
        dist.all_reduce(total)
    summed = loss_sum(model(batch), batch.labels)
    return summed * world / total, summed.detach(), total


def ds_config(name: str) -> dict:
    cfg = json.loads((HERE.parent / "mmtune" / "recipes" / "launch" / f"{name}.json").read_text())
    cfg.update(train_micro_batch_size_per_gpu=ROWS, gradient_accumulation_steps=1, train_batch_size=ROWS * WORLD,
               gradient_clipping=0.0, bf16={"enabled": False}, fp16={"enabled": False})
    cfg["zero_optimization"]["offload_optimizer"] = cfg["zero_optimization"].get("offload_optimizer", {"device": "none"})
    return cfg


def worker(rank: int, port: int, name: str, out: str) -> None:
    import deepspeed
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=120))
    model = build()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(name))
    losses = []
    for step in range(STEPS + 1):
        mixed = step == STEPS  # the last step: rank 1 has text only
        batch = rows(model, step, rank, with_image=not (mixed and rank == 1))
        scaled, summed, total = loss_of(engine, batch, WORLD)
        engine.backward(scaled)
        engine.step()
        dist.all_reduce(summed)
        losses.append(float(summed / total))
    if rank == 0:
        Path(out).write_text(json.dumps({"losses": losses[:STEPS], "mixed_step_loss": losses[STEPS]}))
    dist.destroy_process_group()


def reference() -> list[float]:
    model = build()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(STEPS):
        parts = [rows(model, step, r) for r in range(WORLD)]
        from mmtune.batch import Batch

        batch = Batch(input_ids=torch.cat([b.input_ids for b in parts]),
                      attention_mask=torch.cat([b.attention_mask for b in parts]),
                      labels=torch.cat([b.labels for b in parts]),
                      media={"image": torch.cat([b.media["image"] for b in parts])},
                      media_per_row={"image": [1] * (ROWS * WORLD)})
        scaled, summed, total = loss_of(model, batch, 1)
        scaled.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(summed / total))
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/deepspeed_cpu.json")
    args = ap.parse_args()
    import deepspeed

    ref = reference()
    result = {"deepspeed": deepspeed.__version__, "torch": torch.__version__, "reference_losses": ref, "runs": {}}
    for name in ("zero2", "zero3"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tmp = Path(args.out).with_suffix(f".{name}.tmp")
        t0 = time.perf_counter()
        ctx = mp.start_processes(worker, args=(port, name, str(tmp)), nprocs=WORLD, join=False, start_method="spawn")
        deadline = time.monotonic() + 600
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise SystemExit(f"{name}: no result in 600 s (hang?)")
        got = json.loads(tmp.read_text())
        tmp.unlink()
        got["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(got["losses"], ref))
        got["seconds"] = round(time.perf_counter() - t0, 1)
        result["runs"][name] = got
        print(name, got, flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
