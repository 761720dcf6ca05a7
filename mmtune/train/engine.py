"""FSDP2 for a MultimodalLM, applied by mmtune itself so CPU+gloo and GPU+NCCL run the same code.

accelerate 1.15 enables FSDP only on GPU-like devices (with 2 CPU processes it silently trains
unsharded), so this layer calls torch's `fully_shard` and distributed checkpoint directly;
accelerate stays the launcher, and the engine for DDP and DeepSpeed.

Sharding units (each all-gathers its parameters just before its forward and frees them after):

    every LLM decoder layer   the classes the LLM declares unsplittable (`_no_split_modules`)
    every encoder             one unit each (frozen or trainable: FSDP2 keeps requires_grad per parameter)
    every projector           one unit each
    the root                  embeddings, final norm, lm_head: whatever is left

Mixed precision keeps fp32 master weights (the sharded parameters) and gathers them in bf16
for compute; gradients are reduced in fp32, so AdamW's updates at lr 2e-5 are not rounded
away as they are with bf16 weights.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_state_dict, set_state_dict)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy,
                                    fully_shard, register_fsdp_forward_method)
from torch.distributed.tensor import DTensor

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ShardConfig:
    """How `shard` wraps a model. `mixed_precision`: compute dtype ("no" keeps the weights'
    own); the stored (master) weights become fp32 whenever it is not "no"."""

    mixed_precision: str = "no"
    cpu_offload: bool = False  # parameters, gradients and optimizer state live in CPU memory
    reshard_after_forward: bool = True  # ZeRO-3 style; False keeps gathered weights until backward (ZeRO-2-like)

    def __post_init__(self) -> None:
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"engine.mixed_precision={self.mixed_precision!r}: choose from {sorted(PRECISIONS)}")


def shard_config_from_launch(env: Mapping[str, str] | None = None) -> ShardConfig | None:
    """The FSDP settings `accelerate launch --config_file fsdp.yaml` exported to this process
    (ACCELERATE_USE_FSDP, FSDP_OFFLOAD_PARAMS, ...), or None when it did not ask for FSDP.
    Read here because accelerate itself acts on them only on GPU-like devices."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    if env.get("FSDP_VERSION", "2") != "2":
        raise ValueError(f"fsdp_version={env['FSDP_VERSION']} in the accelerate config: mmtune's engine "
                         "is FSDP2 (fully_shard); set fsdp_config.fsdp_version: 2")
    return ShardConfig(mixed_precision=env.get("ACCELERATE_MIXED_PRECISION", "no"),
                       cpu_offload=env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true",
                       reshard_after_forward=env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true")


def launch_shard_config() -> ShardConfig | None:
    """This process's FSDP settings when it runs under an FSDP launch with its process group
    joined, else None: what every recipe driver asks before it trains."""
    return shard_config_from_launch() if dist.is_available() and dist.is_initialized() else None


def device_mesh() -> DeviceMesh:
    """A 1-D mesh over every process: CUDA when the process has a GPU, else CPU (gloo)."""
    if not dist.is_initialized():
        raise RuntimeError("FSDP needs torch.distributed initialised (launch with torchrun or "
                           "accelerate launch, or call torch.distributed.init_process_group)")
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    return init_device_mesh(kind, (dist.get_world_size(),))


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's repeated blocks: the classes its transformers model declares unsplittable
    (`_no_split_modules`, which accelerate's auto-wrap and device maps also use)."""
    from transformers import PreTrainedModel

    bases = [m for m in llm.modules() if isinstance(m, PreTrainedModel)]  # peft wraps one
    if not bases or not getattr(bases[0], "_no_split_modules", None):
        raise ValueError(f"{type(llm).__name__} declares no decoder-layer class (_no_split_modules); "
                         "FSDP needs one to shard layer by layer")
    classes = set(bases[0]._no_split_modules)
    # Through the MRO: once sharded, a layer's class is FSDP's subclass of it (FSDPLlamaDecoderLayer).
    return [m for m in llm.modules() if any(c.__name__ in classes for c in type(m).__mro__)]


def shard(model: nn.Module, cfg: ShardConfig | None = None, mesh: DeviceMesh | None = None) -> nn.Module:
    """Apply FSDP2 in place to a MultimodalLM (decoder layers, encoders, projectors, root);
    returns the model. Set `requires_grad` (the stage's trainable set, LoRA) before: frozen
    parameters stay frozen and get no gradient or optimizer state."""
    if model.config.llm.quantize:
        raise ValueError(f"model.llm.quantize={model.config.llm.quantize}: FSDP cannot shard "
                         "bitsandbytes 4-bit weights here; run QLoRA under DDP")
    parts = [p for p in (*model.encoders.values(), *model.projectors.values()) if any(True for _ in p.parameters())]
    shard_units(model, [*decoder_layers(model.llm), *parts], cfg, mesh)
    # generate() bypasses forward(): gather the root's weights (embeddings, lm_head) for it too.
    register_fsdp_forward_method(model, "generate")
    return model


def shard_units(root: nn.Module, units: list[nn.Module], cfg: ShardConfig | None = None,
                mesh: DeviceMesh | None = None) -> nn.Module:
    """FSDP2 in place: each unit (a block whose weights are gathered together just before its
    forward and freed after), then the root, which holds whatever the units do not. Any
    module: a MultimodalLM (`shard`), a diffusers UNet (its down, mid and up blocks)."""
    cfg = cfg or ShardConfig()
    mesh = mesh or device_mesh()
    compute = PRECISIONS[cfg.mixed_precision]
    if compute is not None:
        root.float()  # fp32 master weights; compute in `compute` dtype
    kwargs = {"mesh": mesh, "reshard_after_forward": cfg.reshard_after_forward,
              "mp_policy": MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32
                                                if compute is not None else None),
              "offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
              if cfg.cpu_offload else OffloadPolicy()}
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(root, **kwargs)
    return root


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule) or any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def no_sync(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Skip the gradient reduce-scatter for accumulation micro-batches (all but the last)."""
    if not (enabled and isinstance(model, FSDPModule)):
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


class StepOps:
    """The loop's step for a model this engine sharded: FSDP2's own no-sync and a gradient
    norm over every shard (DTensor gradients)."""

    def __init__(self, model: nn.Module, accelerator) -> None:
        self.model, self.accelerator = model, accelerator

    def sync(self, last: bool):
        return no_sync(self.model, enabled=not last)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def update(self, optimizer, params, max_grad_norm: float, loss_finite: bool) -> tuple[float, bool]:
        from .loop import step_if_finite

        return step_if_finite(optimizer, clip_grad_norm(params, max_grad_norm if max_grad_norm > 0 else math.inf),
                              loss_finite)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Global gradient norm over every shard, and clipping to it (sharded or whole)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _options(trainable_only: bool) -> StateDictOptions:
    # Frozen weights come back from the model's own config and paths on resume: saving them
    # in every checkpoint would write a 7B base again and again.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def save_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 trainable_only: bool = True) -> None:
    """Each rank writes its own shards of the weights and optimizer state (torch distributed
    checkpoint, no pickles, no gather); collective: every rank calls it."""
    msd, osd = get_state_dict(model, optimizer, options=_options(trainable_only))
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))


def load_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 trainable_only: bool = True) -> None:
    """Read a `save_sharded` checkpoint into an identically sharded model and its optimizer
    (same world size); collective."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no sharded checkpoint there")
    options = _options(trainable_only)
    msd, osd = get_state_dict(model, optimizer, options=options)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=options)


def gather_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors on CPU for a dict that may hold DTensor shards (e.g. a hook's EMA
    weights), on every rank; collective when any is sharded. One tensor at a time is whole on
    the device, so a checkpoint never holds a second whole UNet there."""
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu() for k, v in state.items()}


def shard_like(state: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors (from `gather_tensors`) cut into this rank's shards the way `like`'s are."""
    from torch.distributed.tensor import distribute_tensor

    return {k: distribute_tensor(v.to(like[k].dtype), like[k].device_mesh, like[k].placements)
            if isinstance(like.get(k), DTensor) else v for k, v in state.items()}


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors on CPU, gathered once, on rank 0 (other ranks get {}); collective. Keys
    are the unsharded model's, so `load_state_dict` on a plain MultimodalLM takes them."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_consolidated(model: nn.Module, out_dir: str | Path) -> None:
    """Write the trained model once, in the normal formats (`MultimodalLM.save_pretrained`),
    from rank 0: an unsharded twin is built from the model's config on CPU, given the gathered
    weights, and saved. Collective: every rank calls it. The twin is built for real, not on the
    meta device, because transformers' `from_pretrained` (parts with local paths) refuses meta;
    rank 0 needs host memory for the gathered state plus one copy of the model."""
    state = full_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return
    save_twin(model, state, out_dir)
    if dist.is_initialized():
        dist.barrier()


def save_twin(model: nn.Module, state: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """One process: an unsharded MultimodalLM built from `model`'s config on CPU, given the
    gathered whole `state` (the unsharded model's keys), saved in the normal formats.
    Non-persistent buffers in `state` are ignored; a missing weight is an error."""
    from ..model import MultimodalLM

    with torch.device("cpu"):
        twin = MultimodalLM.build(model.config)
    if hasattr(model.llm, "peft_config"):
        twin.enable_lora()
    keys = twin.state_dict().keys()
    twin.load_state_dict({k: v for k, v in state.items() if k in keys})  # strict: copy_ casts fp32 masters back
    twin.save_pretrained(out_dir)
