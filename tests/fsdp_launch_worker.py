"""Run by tests/test_launch_configs.py under `accelerate launch --config_file fsdp_offload.yaml`:
the shipped FSDP config drives mmtune's engine on CPU processes (offload, bf16 compute)."""
from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from mmtune.model import MultimodalLM
from mmtune.train.engine import shard, shard_config_from_launch
from mmtune.train.loop import loss_sum
from mmtune.train.params import set_trainable

from test_grad_checkpoint import batch_for
from conftest import tiny_model_config


def main(out: str) -> None:
    torch.set_num_threads(1)
    cfg = shard_config_from_launch()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_model_config())
    set_trainable(model, ["projector", "llm"])
    shard(model.train(), cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = batch_for(model)
    logits = model(batch)
    loss = loss_sum(logits, batch.labels) / batch.num_loss_tokens()
    loss.backward()
    optimizer.step()
    params = list(model.parameters())
    result = {"config": vars(cfg), "loss": float(loss), "logits_dtype": str(logits.dtype),
              "all_dtensor": all(isinstance(p, DTensor) for p in params),
              "master_dtype": sorted({str(p.dtype) for p in params}),
              "devices": sorted({p.to_local().device.type for p in params})}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
