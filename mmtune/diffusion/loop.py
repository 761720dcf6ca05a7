"""The InstructPix2Pix training loop: one stage, the UNet trained, everything else frozen.

Shares the loop helpers of every recipe (BatchPlan data order, AdamW + cosine schedule,
checkpoints with RNG state, metrics.jsonl); only the step itself is diffusion-specific.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.collate import DataStats
from ..train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ..train.logging import MetricsLog
from ..train.loop import BatchPlan, Throughput, make_optimizer, make_scheduler
from .components import EditComponents
from .config import EditTrainConfig
from .data import collate_triplets, tokenize
from .objective import edit_loss

STAGE = "train"  # one stage; its checkpoints live in run_dir/train/


def train(parts: EditComponents, dataset, tc: EditTrainConfig, accelerator, run_dir: Path,
          resume: bool = True, stop_after: int | None = None) -> dict:
    """The UNet's training loop. With EMA on, the EMA weights replace the UNet's at the end."""
    stage_dir = run_dir / STAGE
    log = MetricsLog(run_dir, enabled=accelerator.is_main_process)
    unet = parts.unet
    unet.requires_grad_(True).train()
    params = list(unet.parameters())
    # EditTrainConfig has the StageConfig fields these two read (lr, betas, schedule).
    optimizer = make_optimizer(params, tc)
    scheduler = make_scheduler(optimizer, tc)
    ema = _ema(unet, tc.ema_decay)
    start = 0
    checkpoint = latest_checkpoint(stage_dir) if resume else None
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, unet, optimizer, scheduler)
        if ema is not None:
            ema.load_state_dict(torch.load(checkpoint / "ema.pt", weights_only=False))
        log.truncate_after(STAGE, start)
        accelerator.print(f"[{STAGE}] resumed from {checkpoint} at step {start}")
    device = accelerator.device
    parts.vae.to(device)
    parts.text_encoder.to(device)
    wrapped, optimizer = accelerator.prepare(unet, optimizer)
    with torch.no_grad():
        null_text = parts.text_encoder(tokenize(parts.tokenizer, [""]).to(device))[0]

    plan = BatchPlan(len(dataset), tc.batch_size, tc.seed, accelerator.process_index, accelerator.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=plan.batches_from(start * tc.grad_accum),
                                         collate_fn=collate_triplets, num_workers=tc.num_workers)
    batches = iter(loader)
    stats = DataStats()
    speed = Throughput()
    t_start = time.perf_counter()
    end = tc.max_steps if stop_after is None else min(stop_after, tc.max_steps)
    bar = tqdm(range(start, end), desc=STAGE, disable=not accelerator.is_main_process, mininterval=5)
    loss = None
    for step in bar:
        lr = scheduler.get_last_lr()[0]
        total = torch.zeros((), device=device)
        for i in range(tc.grad_accum):
            batch = next(batches)
            stats.examples += len(batch)
            stats.add_dropped(batch.dropped)
            original, edited, ids = (x.to(device) for x in (batch.original, batch.edited, batch.input_ids))
            last = i == tc.grad_accum - 1
            with (contextlib.nullcontext() if last else accelerator.no_sync(wrapped)), accelerator.autocast():
                micro = edit_loss(parts, wrapped, original, edited, ids, null_text, tc.conditioning_dropout)
            # Every micro-batch has the same size, so the step's loss is their mean (DDP
            # averages it over processes).
            accelerator.backward(micro / tc.grad_accum)
            total += micro.detach() / tc.grad_accum
        grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm) if tc.max_grad_norm > 0 else torch.zeros(())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        loss = float(accelerator.reduce(total, reduction="mean"))
        speed.add(tc.batch_size * tc.grad_accum * accelerator.num_processes)
        done = step + 1
        if done % tc.log_every == 0 or done == end:
            log.write({"stage": STAGE, "step": done, "loss": round(loss, 6), "lr": lr,
                       "samples_per_s": round(speed.take(), 2), "grad_norm": round(float(grad_norm), 4),
                       "elapsed_s": round(time.perf_counter() - t_start, 2)})
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if done == tc.max_steps or (tc.save_every and done % tc.save_every == 0):
            _save(accelerator, stage_dir / f"checkpoint-{done}", unet, optimizer, scheduler, ema, done)
    bar.close()
    if ema is not None and end == tc.max_steps:
        ema.copy_to(params)
    return {"stage": STAGE, "steps": end, "final_loss": loss, "ema": ema is not None,
            "train_seconds": round(time.perf_counter() - t_start, 2), "data": stats.as_dict()}


def _ema(unet, decay: float):
    if decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(unet.parameters(), decay=decay)


def _save(accelerator, path: Path, unet, optimizer, scheduler, ema, step: int) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(path, unet, optimizer, scheduler, step)
        if ema is not None:
            torch.save(ema.state_dict(), path / "ema.pt")
    accelerator.wait_for_everyone()
