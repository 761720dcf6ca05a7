"""Gradient checkpointing: the same gradients, with layers recomputed in backward."""
from __future__ import annotations

import pytest
import torch

from mmtune.batch import IGNORE, Batch
from mmtune.model import MultimodalLM
from mmtune.train.engine import decoder_layers
from mmtune.train.loop import loss_sum
from mmtune.train.params import set_trainable

from conftest import tiny_model_config


def batch_for(model: MultimodalLM) -> Batch:
    g = torch.Generator().manual_seed(3)
    k, ph = model.tokens_per_medium("image"), model.placeholder_ids["image"]
    text = [5, 9, 11, 7, 13, 3]
    ids = torch.tensor([[2, *([ph] * k), *text]] * 2)
    labels = torch.tensor([[IGNORE] * (1 + k) + text] * 2)
    size = model.encoders["image"].spec.size
    return Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                 media={"image": torch.randn(2, 3, size, size, generator=g)}, media_per_row={"image": [1, 1]})


def gradients(lora: bool, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    torch.manual_seed(0)
    llm = {"lora": {"r": 4, "dropout": 0.0}} if lora else {}
    model = MultimodalLM.build(tiny_model_config(llm=llm))
    set_trainable(model, ["encoder", "projector", "llm"])
    enabled = model.enable_gradient_checkpointing() if checkpointing else []
    model.train()
    calls = []
    # A sub-module of the first decoder layer: checkpointing recomputes the layer's forward
    # (hooks on the layer itself stay outside the checkpoint).
    inner = next(decoder_layers(model.llm)[0].children())
    inner.register_forward_hook(lambda *_: calls.append(1))
    batch = batch_for(model)
    loss_sum(model(batch), batch.labels).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, len(calls), enabled


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_same_gradients_with_checkpointing(lora):
    plain, plain_calls, _ = gradients(lora, checkpointing=False)
    ckpt, ckpt_calls, enabled = gradients(lora, checkpointing=True)
    assert enabled == ["llm", "encoder.image"]
    # The layer's insides ran again in backward: checkpointing really was on.
    assert (plain_calls, ckpt_calls) == (1, 2)
    assert plain.keys() == ckpt.keys() and any("encoders" in k for k in plain)
    worst = max(float((plain[k] - ckpt[k]).abs().max()) for k in plain)
    assert worst < 1e-6, worst
