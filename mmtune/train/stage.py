"""Run one training stage: the loop every recipe shares, readable top to bottom."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import StageConfig, TrainConfig
from ..data.collate import DataStats
from .flops import MFUMeter
from .speed import configure
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .logging import MetricsLog
from .loop import (BatchPlan, Throughput, make_optimizer, make_scheduler, train_step,
                   trainable_parameters)


def run_stage(name: str, model: torch.nn.Module, dataset, collate_fn: Callable, stage: StageConfig,
              train: TrainConfig, accelerator, run_dir: Path, resume: bool = True,
              stop_after: int | None = None) -> dict:
    """Train `model`'s trainable parameters on `dataset` for `stage.max_steps` optimizer steps.

    Checkpoints go to `run_dir/name/checkpoint-<step>`; with `resume`, the latest one there is
    loaded and training continues from its step with the same data order. `stop_after` ends
    the loop early (as if interrupted) — used to test resume.
    """
    stage_dir = Path(run_dir) / name
    log = MetricsLog(run_dir, enabled=accelerator.is_main_process)
    params = trainable_parameters(model)
    if not params:
        raise ValueError(f"stage {name!r}: nothing is trainable")
    optimizer = make_optimizer(params, stage, accelerator.device, kbit=bool(model.config.llm.quantize),
                               fused=train.fused_optimizer)
    scheduler = make_scheduler(optimizer, stage)
    start = 0
    checkpoint = latest_checkpoint(stage_dir) if resume else None
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, model, optimizer, scheduler)
        log.truncate_after(name, start)
        accelerator.print(f"[{name}] resumed from {checkpoint} at step {start}")
    configure(model, train, accelerator.device)
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    plan = BatchPlan(len(dataset), stage.batch_size, train.seed, accelerator.process_index,
                     accelerator.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=plan.batches_from(start * stage.grad_accum),
                                         collate_fn=collate_fn, num_workers=train.num_workers)
    batches = iter(loader)
    stats = DataStats()
    speed = Throughput()
    t_start = time.perf_counter()
    meter = MFUMeter(model, train.mixed_precision, accelerator.device)
    seen_total = 0  # real (non-pad) tokens through the model, all processes
    end = stage.max_steps if stop_after is None else min(stop_after, stage.max_steps)
    bar = tqdm(range(start, end), desc=name, disable=not accelerator.is_main_process, mininterval=5)
    result = None
    wrapped.train()
    for step in bar:
        micro = [next(batches) for _ in range(stage.grad_accum)]
        for b in micro:
            stats.update(b)
        lr = scheduler.get_last_lr()[0]
        result = train_step(wrapped, micro, optimizer, scheduler, accelerator, stage.max_grad_norm, params,
                            head_at_labels=train.head_at_labels)
        meter.add(micro)
        speed.add(result.seen_tokens * accelerator.num_processes)
        seen_total += result.seen_tokens * accelerator.num_processes
        done = step + 1
        if done % train.log_every == 0 or done == end:
            record = {"stage": name, "step": done, "loss": round(result.loss, 6), "lr": lr,
                      "tokens_per_s": round(speed.take(), 1), "grad_norm": round(result.grad_norm, 4),
                      "supervised_tokens": result.tokens,
                      "padding_efficiency": round(result.seen_tokens / max(result.computed_tokens, 1), 4),
                      **meter.take(),
                      "elapsed_s": round(time.perf_counter() - t_start, 2)}
            log.write(record)
            bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{lr:.2e}")
        if train.save_every and done % train.save_every == 0 and done != stage.max_steps:
            _save(accelerator, stage_dir / f"checkpoint-{done}", model, optimizer, scheduler, done)
    bar.close()
    if end == stage.max_steps:
        _save(accelerator, stage_dir / f"checkpoint-{end}", model, optimizer, scheduler, end)
    seconds = time.perf_counter() - t_start
    summary = {"stage": name, "steps": end, "final_loss": None if result is None else result.loss,
               "train_seconds": round(seconds, 2), "tokens_per_s": round(seen_total / max(seconds, 1e-9), 1),
               **meter.summary(), "data": stats.as_dict()}
    if stats.dropped:
        accelerator.print(f"[{name}] dropped {len(stats.dropped)} sample(s), e.g. {stats.dropped[0]}")
    return summary


def _save(accelerator, path: Path, model, optimizer, scheduler, step: int) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(path, model, optimizer, scheduler, step)
    accelerator.wait_for_everyone()
