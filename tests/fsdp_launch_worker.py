"""Run under `accelerate launch --config_file fsdp*.yaml`: the shipped FSDP config drives
mmtune's engine (tests/test_launch_configs.py on CPU processes; benchmarks/gpu_check.sh on a
GPU, over NCCL)."""
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
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    torch.manual_seed(0)
    model = MultimodalLM.build(tiny_model_config())
    set_trainable(model, ["projector", "llm"])
    shard(model.train(), cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = batch_for(model).to("cuda" if cuda else "cpu")
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
