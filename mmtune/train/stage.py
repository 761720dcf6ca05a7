"""Run one training stage: the one loop every recipe shares, readable top to bottom.

A recipe hands it the module to train, an `Objective` (what one micro-batch's loss is) and
optional `Hook`s (e.g. an EMA of the weights); the optimizer, schedule, data order,
accumulation, clipping, the non-finite guard, logging, checkpoints and resume live here only.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm.auto import tqdm

from ..config import StageConfig, TrainConfig
from ..data.collate import DataStats
from . import checkpoint as ckpt
from . import deepspeed as zero
from .logging import MetricsLog
from .loop import (BatchPlan, Objective, Throughput, make_optimizer, make_scheduler, stage_steps, train_step,
                   trainable_parameters)


class Hook(Protocol):
    """Something a recipe runs beside the loop, whose state is checkpointed with it."""

    def at_start(self, module: torch.nn.Module) -> None: ...  # the module as trained (sharded under FSDP)

    def after_step(self, step: int) -> None: ...

    def at_end(self) -> None: ...  # the stage finished all its steps

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class Meter(Protocol):
    """Model FLOPs utilisation of the steps (train/flops.MFUMeter for a MultimodalLM)."""

    def add(self, micro_batches: list) -> None: ...

    def take(self) -> dict: ...  # since the previous take, for a metrics line

    def summary(self) -> dict: ...  # the whole stage


class NonFiniteError(RuntimeError):
    pass


class BadDataError(RuntimeError):
    pass


def run_stage(name: str, model: torch.nn.Module, objective: Objective, dataset, collate_fn: Callable | None,
              stage: StageConfig, train: TrainConfig, accelerator, run_dir: Path, *, resume: bool = True,
              stop_after: int | None = None, hooks: tuple[Hook, ...] = (), kbit: bool = False,
              skipped: list = (), meter: Meter | None = None,
              shard: Callable[[torch.nn.Module], object] | None = None) -> dict:
    """Train `model`'s trainable parameters on `dataset` for the stage's steps.

    Checkpoints go to `run_dir/name/checkpoint-<step>` every `train.save_every` steps, but not
    after the last step: the caller then saves the model (`finish.publish`), which is what
    marks the stage finished. With `resume`, the newest readable checkpoint is loaded and
    training continues from its step with the same data and random numbers.
    `stop_after` ends the loop early (as if interrupted): used to test resume. `skipped`: the
    records the reader left out (`mmtune.batch.Dropped`), counted with those the batches drop.
    `meter`: counts the model FLOPs of each step (MFU in metrics.jsonl and the summary).
    `shard`: FSDP2 (mmtune's engine) applied in place before the optimizer sees the weights;
    checkpoints are then sharded, and accelerate does not wrap the model.
    """
    stage_dir = Path(run_dir) / name
    rank, world = accelerator.process_index, accelerator.num_processes
    log = MetricsLog(run_dir, enabled=accelerator.is_main_process, trackers=accelerator)
    if shard is not None:
        shard(model)
    sharded = shard is not None
    for hook in hooks:  # after sharding: a hook keeps the parameters that will be trained
        hook.at_start(model)
    params = trainable_parameters(model)
    if not params:
        raise ValueError(f"stage {name!r}: nothing is trainable")
    plan = BatchPlan(len(dataset), stage.batch_size, train.seed, rank, world)
    max_steps = stage_steps(stage, plan.per_epoch)
    optimizer = make_optimizer(params, stage, accelerator.device, kbit=kbit, fused=train.fused_optimizer)
    scheduler = make_scheduler(optimizer, stage, max_steps)
    zero.configure(accelerator, stage, accelerator.print)  # DeepSpeed's batch, accumulation, clipping
    # Prepared before a checkpoint is read: a DeepSpeed engine loads its own partitions.
    wrapped, optimizer = (model, optimizer) if sharded else accelerator.prepare(model, optimizer)
    ds_engine = zero.engine_of(wrapped)
    start, cursor = 0, 0
    found = ckpt.latest_checkpoint(stage_dir, world, accelerator.print) if resume else None
    if found is not None:
        start, cursor, hook_state = ckpt.load_checkpoint(found, model, optimizer, scheduler, rank, ds_engine)
        if sharded and hooks:  # saved whole; cut like the hooks' own (sharded) state
            from .engine import shard_like

            hook_state = shard_like(hook_state, _hook_state(hooks))
        for hook in hooks:
            hook.load_state_dict(hook_state)
        accelerator.print(f"[{name}] resumed from {found} at step {start}")
    log.truncate_after(name, start)  # lines a killed run logged past the point we resume from
    # The loader gets its own generator: creating its iterator must not draw from the global
    # RNG, or a resumed run would be one draw out of step with the uninterrupted one.
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=plan.batches_from(cursor), collate_fn=collate_fn,
                                         num_workers=train.num_workers, generator=torch.Generator())
    batches = iter(loader)
    stats = DataStats()
    stats.add_dropped(skipped)
    speed = Throughput()
    t_start = time.perf_counter()
    seen_total = 0  # real tokens through the model, all processes
    real_here = computed_here = 0  # this process's, for the stage's padding efficiency
    skipped_nonfinite = 0
    end = max_steps if stop_after is None else min(stop_after, max_steps)
    bar = tqdm(range(start, end), desc=name, disable=not accelerator.is_main_process, mininterval=5)
    result = None
    wrapped.train()
    for step in bar:
        micro, empty = [], 0
        while len(micro) < stage.grad_accum:  # a micro-batch left empty by skipped records is refilled
            batch = next(batches)
            cursor += 1
            stats.update(batch)
            _check_bad_fraction(stats, train, name)
            empty = 0 if len(batch) else empty + 1
            if empty > plan.per_epoch:
                raise BadDataError(f"stage {name!r}: no usable record in a whole epoch, e.g. {stats.dropped[:3]}")
            if len(batch):
                micro.append(batch)
        lr = scheduler.get_last_lr()[0]
        result = train_step(wrapped, micro, objective, optimizer, scheduler, accelerator, stage.max_grad_norm, params,
                            sharded=sharded)
        if meter is not None:
            meter.add(micro)
        done = step + 1
        if not result.finite:
            skipped_nonfinite += 1
            where = (f"stage {name!r} step {done}: non-finite loss {result.loss} or gradient norm "
                     f"{result.grad_norm}; records on process {rank}: {[i for b in micro for i in b.ids]}")
            if train.on_nonfinite == "error" or skipped_nonfinite > train.max_nonfinite_steps:
                raise NonFiniteError(where + ("" if train.on_nonfinite == "error" else
                                              f" ({skipped_nonfinite} updates skipped, more than "
                                              f"train.max_nonfinite_steps={train.max_nonfinite_steps})"))
            accelerator.print(f"skipping the update: {where}")
        for hook in hooks:
            hook.after_step(done)
        speed.add(tokens=result.real_tokens * world, samples=result.samples * world)
        seen_total += result.real_tokens * world
        real_here, computed_here = real_here + result.real_tokens, computed_here + result.computed_tokens
        if done % train.log_every == 0 or done == end:
            rates = speed.take()
            log.write({"stage": name, "step": done, "loss": round(result.loss, 6), "lr": lr,
                       "grad_norm": round(result.grad_norm, 4), "tokens_per_s": round(rates["tokens"], 1),
                       "samples_per_s": round(rates["samples"], 2), "loss_count": result.count,
                       "padding_efficiency": round(result.real_tokens / max(result.computed_tokens, 1), 4),
                       **(meter.take() if meter is not None else {}),
                       "elapsed_s": round(time.perf_counter() - t_start, 2),
                       **({"record_ids": [i for b in micro for i in b.ids]} if train.log_record_ids else {})})
            bar.set_postfix(loss=f"{result.loss:.4f}", tok_s=f"{rates['tokens']:.0f}", lr=f"{lr:.2e}")
        if train.save_every and done % train.save_every == 0 and done != max_steps:
            _save(accelerator, stage_dir, done, cursor, model, optimizer, scheduler, hooks, train.keep_last, sharded,
                  ds_engine)
    bar.close()
    if end == max_steps:  # no checkpoint: the caller publishes the model, the stage's record of its end
        for hook in hooks:
            hook.at_end()
    seconds = time.perf_counter() - t_start
    if stats.dropped:
        accelerator.print(f"[{name}] dropped {len(stats.dropped)} sample(s), e.g. {stats.dropped[0]}")
    engine = {"fsdp": _shard_sizes(model)} if sharded else {"deepspeed": zero.summary(ds_engine)} if ds_engine else {}
    return {"stage": name, "steps": end, "max_steps": max_steps, "resumed_from": start, **engine,
            "final_loss": None if result is None else result.loss, "train_seconds": round(seconds, 2),
            "tokens_per_s": round(seen_total / max(seconds, 1e-9), 1), "nonfinite_skipped": skipped_nonfinite,
            "padding_efficiency": round(real_here / max(computed_here, 1), 4),
            **(meter.summary() if meter is not None else {}), "data": stats.as_dict()}


def _shard_sizes(model: torch.nn.Module) -> dict:
    """What this process holds of the trainable weights: the proof that sharding happened."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad]
    return {"dtensor": all(isinstance(p, DTensor) for p in params), "numel": sum(p.numel() for p in params),
            "local_numel": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)}


def _check_bad_fraction(stats: DataStats, train: TrainConfig, name: str) -> None:
    """Skipping bad records is for a few; past `train.max_bad_fraction` the data is broken."""
    seen = stats.examples + len(stats.dropped)
    if seen >= 20 and len(stats.dropped) / seen > train.max_bad_fraction:
        raise BadDataError(f"stage {name!r}: {len(stats.dropped)} of {seen} records were bad "
                           f"(more than train.max_bad_fraction={train.max_bad_fraction}), "
                           f"e.g. {stats.dropped[:3]}")


def _hook_state(hooks: tuple[Hook, ...]) -> dict[str, torch.Tensor]:
    """Every hook's state in one dict: what a checkpoint stores and a resume hands back."""
    return {k: v for hook in hooks for k, v in hook.state_dict().items()}


def _save(accelerator, stage_dir: Path, step: int, cursor: int, model, optimizer, scheduler,
          hooks: tuple[Hook, ...], keep_last: int, sharded: bool, ds_engine=None) -> None:
    path = stage_dir / f"checkpoint-{step}"
    tmp = ckpt.begin_save(path) if accelerator.is_main_process else ckpt.tmp_dir(path)
    accelerator.wait_for_everyone()
    ckpt.write_rank_state(tmp, accelerator.process_index, cursor)
    state = _hook_state(hooks)
    if sharded:
        ckpt.write_sharded_state(tmp, model, optimizer)  # collective
        from .engine import gather_tensors

        state = gather_tensors(state)  # collective: hook state sharded like the weights (EMA)
    elif ds_engine is not None:
        ckpt.write_deepspeed_state(tmp, ds_engine)  # collective
    if accelerator.is_main_process:
        ckpt.write_main_state(tmp, model, optimizer, scheduler, state, sharded or ds_engine is not None)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.finish_save(tmp, path, step, accelerator.num_processes)
        ckpt.prune(stage_dir, keep_last, accelerator.num_processes)
    accelerator.wait_for_everyone()
