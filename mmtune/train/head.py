"""Cross-entropy with the output head applied only where a label is.

Image, prompt and padding positions never need the vocabulary projection: only position t
whose next token t+1 carries a label contributes to the loss. The LLM's body runs on every
position; the head (and the float32 cast for a stable softmax) runs on the K supervised ones,
so neither the [B, T, V] logits nor their float32 copy exist. transformers' `logits_to_keep`
(a boolean [B, T] mask) does the selection inside the model, after its final norm and before
its head, keeping any model-specific logit scaling or soft-capping.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch import IGNORE, Batch


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: True at t when labels[t + 1] is supervised (the last column never is)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def head_loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed next-token cross-entropy over supervised positions; equals
    `loop.loss_sum(model(batch), batch.labels)` without the full logits. `model` is the
    MultimodalLM or its engine wrapper (DDP/FSDP), called through its forward."""
    keep = supervised_positions(batch.labels)
    logits = model(batch, logits_to_keep=keep)  # [K, V]
    targets = batch.labels[:, 1:][keep[:, :-1]]  # [K]
    return F.cross_entropy(logits.float(), targets, reduction="sum")
