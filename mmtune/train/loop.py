"""The shared training arithmetic, written once for every recipe.

One optimizer step = `grad_accum` micro-batches on each of `world` processes. A recipe says
only what one micro-batch costs (an `Objective`: its summed loss and the count it is averaged
over); the loss is normalised by that count over the *whole* step (all micro-batches, all
processes), so batch 8 x accumulation 1 gives the same gradient as batch 1 x accumulation 8,
and padding or short answers never change a token's weight.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
import torch.nn.functional as F
from transformers import get_scheduler

from ..batch import IGNORE, Batch
from ..config import StageConfig
from .head import head_loss_sum


class StepBatch(Protocol):
    """What the loop needs of a micro-batch, whatever the recipe's batch type."""

    ids: list[str]  # record ids, for messages that must name the data
    dropped: list  # mmtune.batch.Dropped: records left out of this batch, with why
    truncated: int  # examples whose text was cut to fit

    def to(self, device, non_blocking: bool = False) -> "StepBatch": ...

    def __len__(self) -> int: ...  # samples (0: every record of it was dropped)


class Objective(Protocol):
    """A recipe's loss. `count` must not need the forward pass: the step-wide normaliser is
    summed over ranks before any backward."""

    def count(self, batch) -> int: ...  # what the loss is averaged over (tokens, samples)

    def loss_sum(self, model, batch) -> torch.Tensor: ...  # summed loss, float32 scalar

    def tokens(self, batch) -> tuple[int, int]: ...  # (real, computed incl. padding)


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over supervised positions (float32 for stability)."""
    shift_logits = logits[:, :-1].float()  # [B, T-1, V]
    shift_labels = labels[:, 1:]  # [B, T-1]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                           shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum")


class LanguageModelObjective:
    """Next-token cross-entropy on the supervised (assistant) tokens of a `Batch`.
    `head_at_labels`: the output head runs only where a label is (train.head_at_labels)."""

    def __init__(self, head_at_labels: bool = False) -> None:
        self.head_at_labels = head_at_labels

    def count(self, batch: Batch) -> int:
        return batch.num_loss_tokens()

    def loss_sum(self, model, batch: Batch) -> torch.Tensor:
        return head_loss_sum(model, batch) if self.head_at_labels else loss_sum(model(batch), batch.labels)

    def tokens(self, batch: Batch) -> tuple[int, int]:
        return int(batch.attention_mask.sum()), batch.input_ids.numel()


def make_optimizer(params, stage: StageConfig, device=None, kbit: bool = False,
                   fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; for a 4-bit (QLoRA) model on CUDA, bitsandbytes' paged 8-bit AdamW as in the paper.
    `fused`: torch's one-kernel AdamW (train.fused_optimizer), same update as the default."""
    if kbit and device is not None:
        from ..llm import kbit_optimizer

        paged = kbit_optimizer(params, stage.lr, stage.betas, stage.weight_decay, device)
        if paged is not None:
            return paged
    return torch.optim.AdamW(params, lr=stage.lr, betas=stage.betas, weight_decay=stage.weight_decay,
                             fused=fused or None)


def make_scheduler(optimizer, stage: StageConfig, max_steps: int | None = None):
    """transformers' schedules by name, each after `warmup_steps` of linear warmup: cosine
    (to lr * min_lr_ratio), linear (to 0), constant."""
    steps = stage.max_steps if max_steps is None else max_steps
    if stage.lr_schedule == "cosine":
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=stage.warmup_steps,
                             num_training_steps=steps, scheduler_specific_kwargs={"min_lr_rate": stage.min_lr_ratio})
    name = {"linear": "linear", "constant": "constant_with_warmup"}[stage.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=stage.warmup_steps, num_training_steps=steps)


@dataclass
class BatchPlan:
    """Which records form micro-batch k: a fixed function of (seed, epoch, rank).

    Resuming at micro-batch k (saved in the checkpoint) sees exactly the batches the
    uninterrupted run would have seen; no sampler state needs saving.
    """

    n: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        self.per_epoch = (self.n // self.world) // self.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{self.n} samples are fewer than one batch of {self.batch_size} "
                             f"on each of {self.world} process(es)")
        self._perm: tuple[int, list[int]] | None = None

    def indices(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g)[self.rank::self.world].tolist())
        return self._perm[1][j * self.batch_size:(j + 1) * self.batch_size]

    def batches_from(self, k: int) -> Iterator[list[int]]:
        while True:
            yield self.indices(k)
            k += 1


def stage_steps(stage: StageConfig, per_epoch: int) -> int:
    """Optimizer steps of a stage: `max_steps`, or `epochs` over the micro-batches an epoch has."""
    if stage.epochs is None:
        return stage.max_steps
    return max(1, math.ceil(stage.epochs * per_epoch / stage.grad_accum))


@dataclass
class StepResult:
    loss: float  # mean loss per counted unit over the step (all processes)
    count: int  # units the loss is averaged over (all processes): supervised tokens, samples
    real_tokens: int  # non-pad tokens in the step on this process
    computed_tokens: int  # what the model computed, padding included, on this process
    samples: int  # samples in the step on this process
    grad_norm: float
    finite: bool  # False: loss or gradient norm is NaN/inf, and no update was made


class AccelerateOps:
    """The step's engine-specific parts for a plain or accelerate-wrapped (DDP) model; FSDP
    (train/engine.py) and DeepSpeed (train/deepspeed.py) have their own `StepOps`."""

    def __init__(self, model, accelerator) -> None:
        self.model, self.accelerator = model, accelerator

    def sync(self, last: bool):
        """Gradient all-reduce only on the last micro-batch of the step."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def update(self, optimizer, params, max_grad_norm: float, loss_finite: bool) -> tuple[float, bool]:
        """Clip, and update unless the loss or the gradient norm is not finite. The norm is
        computed even without clipping: a non-finite one must stop the update."""
        norm = float(self.accelerator.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf))
        return step_if_finite(optimizer, norm, loss_finite)


def step_if_finite(optimizer, grad_norm: float, loss_finite: bool) -> tuple[float, bool]:
    """Update unless the step's loss or gradient norm is not finite; (norm, updated)."""
    finite = loss_finite and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    return grad_norm, finite


def step_ops(model, accelerator, sharded: bool = False):
    """The step's engine: mmtune's FSDP2 (`sharded`), a DeepSpeedEngine (what accelerate's
    prepare returned under a DeepSpeed launch), or accelerate's DDP / single process."""
    if sharded:
        from .engine import StepOps

        return StepOps(model, accelerator)
    from .deepspeed import StepOps as DeepSpeedOps, engine_of

    engine = engine_of(model)
    return DeepSpeedOps(engine) if engine is not None else AccelerateOps(model, accelerator)


def train_step(model, micro_batches: list, objective: Objective, optimizer, scheduler, accelerator,
               max_grad_norm: float, params: list[torch.nn.Parameter], sharded: bool = False) -> StepResult:
    """Forward/backward every micro-batch with the step-wide normaliser, then update, unless
    the loss or the gradient norm is not finite (then the gradients are dropped). `sharded`:
    the model is FSDP2-sharded by mmtune's engine (accelerate did not prepare it)."""
    device = accelerator.device
    ops = step_ops(model, accelerator, sharded)
    local = torch.tensor([float(objective.count(b)) for b in micro_batches], device=device).sum()
    total = accelerator.reduce(local.clone(), reduction="sum")  # counted units, all ranks
    denom = total.clamp(min=1.0)
    # DDP averages gradients over ranks; multiplying by world size turns that mean back into
    # the sum over ranks, so the gradient is sum(loss) / total count of the whole step.
    scale = accelerator.num_processes
    summed = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        with ops.sync(last=i == len(micro_batches) - 1), accelerator.autocast():
            ls = objective.loss_sum(model, batch.to(device))
        ops.backward(ls * scale / denom)
        summed += ls.detach()
    summed = accelerator.reduce(summed, reduction="sum")
    grad_norm, finite = ops.update(optimizer, params, max_grad_norm, bool(torch.isfinite(summed)))
    scheduler.step()  # the schedule follows the step count, updated or not
    optimizer.zero_grad(set_to_none=True)
    real, computed = (sum(t) for t in zip(*(objective.tokens(b) for b in micro_batches)))
    return StepResult(loss=float(summed / denom), count=int(total), real_tokens=real, computed_tokens=computed,
                      samples=sum(len(b) for b in micro_batches), grad_norm=float(grad_norm), finite=finite)


class Throughput:
    """Units per second over the steps since the last report."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.counts: dict[str, float] = {}

    def add(self, **counts: float) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0.0) + v

    def take(self) -> dict[str, float]:
        now = time.perf_counter()
        rates = {k: v / max(now - self.t0, 1e-9) for k, v in self.counts.items()}
        self.t0, self.counts = now, {}
        return rates


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
