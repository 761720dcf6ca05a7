"""The shared training loop arithmetic, written once for every recipe.

One optimizer step = `grad_accum` micro-batches on each of `world` processes. The loss is
normalised by the number of supervised tokens in the *whole* step (all micro-batches, all
processes), so batch 8 x accumulation 1 gives the same gradient as batch 1 x accumulation 8,
and padding or short answers never change a token's weight.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from ..config import StageConfig
from ..batch import IGNORE, Batch
from .head import head_loss_sum


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over supervised positions (float32 for stability)."""
    shift_logits = logits[:, :-1].float()  # [B, T-1, V]
    shift_labels = labels[:, 1:]  # [B, T-1]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                           shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum")


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


def make_scheduler(optimizer, stage: StageConfig):
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=stage.warmup_steps, num_training_steps=stage.max_steps,
        min_lr_rate=stage.min_lr_ratio)


@dataclass
class BatchPlan:
    """Which records form micro-batch k: a fixed function of (seed, epoch, rank).

    Resuming at step s restarts at micro-batch s * grad_accum and sees exactly the batches the
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


@dataclass
class StepResult:
    loss: float  # mean loss per supervised token over the step (all processes)
    tokens: int  # supervised tokens in the step (all processes)
    seen_tokens: int  # non-pad tokens in the step on this process
    computed_tokens: int  # rows x width: what the model computed, padding included
    grad_norm: float


def train_step(model, micro_batches: list[Batch], optimizer, scheduler, accelerator,
               max_grad_norm: float, params: list[torch.nn.Parameter], head_at_labels: bool = False) -> StepResult:
    """Forward/backward every micro-batch with the step-wide token normaliser, then update."""
    device = accelerator.device
    local = torch.tensor([float(b.num_loss_tokens()) for b in micro_batches], device=device).sum()
    total = accelerator.reduce(local.clone(), reduction="sum")  # supervised tokens, all ranks
    denom = total.clamp(min=1.0)
    # DDP averages gradients over ranks; multiplying by world size turns that mean back into
    # the sum over ranks, so the gradient is sum(loss) / total tokens of the whole step.
    scale = accelerator.num_processes
    summed = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        with sync, accelerator.autocast():
            batch = batch.to(device)
            ls = head_loss_sum(model, batch) if head_at_labels else loss_sum(model(batch), batch.labels)
        accelerator.backward(ls * scale / denom)
        summed += ls.detach()
    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else torch.zeros(())
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    summed = accelerator.reduce(summed, reduction="sum")
    seen = sum(int(b.attention_mask.sum()) for b in micro_batches)
    computed = sum(b.input_ids.numel() for b in micro_batches)
    return StepResult(loss=float(summed / denom), tokens=int(total), seen_tokens=seen,
                      computed_tokens=computed, grad_norm=float(grad_norm))


class Throughput:
    """Tokens per second over the steps since the last report."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def take(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t0, 1e-9)
        self.t0, self.tokens = now, 0
        return rate


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


Callback = Callable[[int, StepResult], None]
