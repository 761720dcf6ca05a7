"""DeepSpeed ZeRO-2/3 under the one loop: what differs from DDP/FSDP, in small functions.

`accelerate launch --config_file zero2.yaml` (or zero3.yaml) exports ACCELERATE_USE_DEEPSPEED
and the ZeRO settings; `accelerator.prepare(model, optimizer)` then returns a DeepSpeedEngine.
This module:

    accelerator_kwargs   lets accelerate engage DeepSpeed without a GPU too (CPU processes over gloo)
    build_whole          models are built whole (never inside zero.Init), as without DeepSpeed
    configure            fills the config's "auto" micro-batch, accumulation and clipping from the stage
    StepOps              backward / accumulation boundary / clip+update through the engine
    save_state           the engine's own sharded checkpoint (each rank its partitions), into the
    load_state           kill-safe checkpoint's temporary folder; loaded without running pickles
    save_consolidated    the whole model gathered once (ZeRO-3: module by module) and written by rank 0
    summary              the live engine's ZeRO stage and how much of the weights this rank holds

Nothing here imports deepspeed unless a DeepSpeed run asked for it.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

TAG = "state"  # the one tag inside a checkpoint's deepspeed/ folder


def requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the launcher asked for DeepSpeed (accelerate's ACCELERATE_USE_DEEPSPEED)."""
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_kwargs(cuda: bool, env: Mapping[str, str] | None = None) -> dict:
    """Extra `Accelerator(...)` arguments. accelerate engages DeepSpeed only when the
    Accelerator is not made with cpu=True; without a GPU it then finds no backend, so name
    gloo (DeepSpeed's CPU accelerator runs its collectives over it)."""
    env = os.environ if env is None else env
    if cuda or not requested(env) or int(env.get("LOCAL_RANK", -1)) == -1:
        return {}
    from accelerate.utils import InitProcessGroupKwargs

    return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}


def engaged(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator) -> int:
    """The ZeRO stage of a DeepSpeed launch (0 when DeepSpeed is not engaged)."""
    if not engaged(accelerator):
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def build_whole(accelerator, say=print) -> None:
    """After the Accelerator is made: models are built whole, as without DeepSpeed, and ZeRO-3
    partitions them at `prepare`. accelerate points transformers at the DeepSpeed config even
    with zero3_init_flag false, and transformers then builds every LLM inside
    `deepspeed.zero.Init` (a collective that partitions each weight as it is made); mmtune's
    build edits weights after construction (new placeholder rows, casts), which on empty
    partitions silently does nothing, and a twin built on one rank for the final save would
    wait forever for the others. So that pointer is cleared; zero3_init_flag true is not
    supported (said, and ignored)."""
    if not engaged(accelerator):
        return
    from transformers.integrations import unset_hf_deepspeed_config

    if accelerator.state.deepspeed_plugin.is_zero3_init_enabled():
        say("deepspeed zero3_init_flag is ignored: mmtune builds models whole and ZeRO-3 partitions them "
            "at prepare (set zero3_init_flag: false in the accelerate config)")
    unset_hf_deepspeed_config()


def configure(accelerator, stage, say=print) -> None:
    """Before `prepare`: the stage owns the micro-batch, accumulation and clipping (the loop
    builds its own DataLoader, so accelerate cannot fill DeepSpeed's "auto" values from one).
    An explicit, different value in the user's DeepSpeed JSON is replaced, with a word."""
    if not engaged(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    want = {"train_micro_batch_size_per_gpu": stage.batch_size, "gradient_accumulation_steps": stage.grad_accum,
            "gradient_clipping": float(stage.max_grad_norm),
            "train_batch_size": stage.batch_size * stage.grad_accum * accelerator.num_processes}
    for key, value in want.items():
        old = ds.get(key, "auto")
        if old not in ("auto", None, value):
            say(f"deepspeed config {key}={old} replaced by the stage's {value}")
        ds[key] = value
    accelerator.gradient_accumulation_steps = stage.grad_accum


def engine_of(model) -> "object | None":
    """The DeepSpeedEngine `model` is, or None (deepspeed not even imported: it cannot be one)."""
    if "deepspeed" not in sys.modules:
        return None
    from deepspeed import DeepSpeedEngine

    return model if isinstance(model, DeepSpeedEngine) else None


class StepOps:
    """The loop's step through a DeepSpeedEngine. The loop's loss is already normalised over
    the whole step (all micro-batches and ranks), so the engine must not divide it again by
    the accumulation steps (scale_wrt_gas=False). Accumulation is DeepSpeed's own: `step()`
    after every micro-batch, which updates only at the boundary its counter reaches after
    `gradient_accumulation_steps` (= the stage's grad_accum) micro-batches; `sync` checks the
    loop and the engine agree on it. At the boundary `step()` clips (gradient_clipping = the
    stage's max_grad_norm), updates, and skips the update on a non-finite gradient norm."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def sync(self, last: bool):
        if last != self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError(f"DeepSpeed's accumulation boundary is out of step with the loop's (last "
                               f"micro-batch: {last}); gradient_accumulation_steps="
                               f"{self.engine.gradient_accumulation_steps()}")
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # counts the micro-batch; no update

    def update(self, optimizer, params, max_grad_norm: float, loss_finite: bool) -> tuple[float, bool]:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        # A non-finite loss gives non-finite gradients, which ZeRO refuses to apply.
        return norm, loss_finite and math.isfinite(norm) and self.engine.was_step_applied()


# --------------------------------------------------------------------------- checkpoints
def save_state(folder: Path, engine) -> None:
    """Every rank: its partitions of the trainable weights and optimizer state, written by
    DeepSpeed itself (frozen weights come back from the model's source). Collective."""
    engine.save_checkpoint(str(folder), tag=TAG, exclude_frozen_parameters=True, save_latest=False)


def required_files(folder: Path, world: int) -> list[str]:
    """Files a complete `save_state` folder has (relative to it): every rank's optimizer
    partition and the model states (one file, or one per rank under ZeRO-3)."""
    names = [f"{TAG}/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    if (folder / TAG / "mp_rank_00_model_states.pt").exists():
        return names + [f"{TAG}/mp_rank_00_model_states.pt"]
    return names + [f"{TAG}/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]


# What DeepSpeed's checkpoint files hold beyond tensors, numbers and containers: its own enums
# and config records. They are allowed by name; anything else in a file is refused, not run.
def _safe_globals() -> list:
    import deepspeed.runtime.fp16.loss_scaler as loss_scaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    found = [ZeroStageEnum, fragment_address, loss_scaler.LossScaler, loss_scaler.DynamicLossScaler]
    return [g for g in found if g is not None]


def _safe_engine(engine):
    """DeepSpeed's torch checkpoint engine with loads that unpickle only tensors, numbers,
    containers and the DeepSpeed records above (torch.load weights_only=True); its own load
    passes weights_only=False."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeLoad(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            from .checkpoint import CheckpointError
            import pickle

            try:
                with torch.serialization.safe_globals(_safe_globals()):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(f"{path}: refused, it holds more than tensors, numbers and DeepSpeed's "
                                      f"records (loaded with weights_only=True; {str(e).splitlines()[0]})") from None

    safe = SafeLoad.__new__(SafeLoad)
    safe.__dict__.update(engine.checkpoint_engine.__dict__)
    return safe


def load_state(folder: Path, engine) -> None:
    """Read a `save_state` folder into the identically configured engine (same world size and
    ZeRO stage); collective. The schedule and RNG come from mmtune's own files."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = _safe_engine(engine)
    try:
        path, _ = engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=False,
                                         load_lr_scheduler_states=False)
    finally:
        engine.checkpoint_engine = original
    if path is None:
        raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint there")


# --------------------------------------------------------------------------- the stage model
def gathered_state(module: nn.Module, main: bool) -> dict[str, torch.Tensor]:
    """Whole parameters on CPU on the main rank ({} elsewhere), module by module so a ZeRO-3
    rank never holds more than one module's weights gathered; collective."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for prefix, m in module.named_modules():
        own = list(m.named_parameters(recurse=False, remove_duplicate=False))
        if not own:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            if main:
                for n, p in own:
                    state[f"{prefix}.{n}" if prefix else n] = p.detach().cpu().clone()
    if main:
        state.update({n: b.detach().cpu() for n, b in module.named_buffers()})
    return state


def save_consolidated(accelerator, model: nn.Module, out: str | Path) -> None:
    """Write the trained model once, in the normal formats (`MultimodalLM.save_pretrained`),
    from the main process; collective: every rank calls it."""
    from .engine import save_twin

    state = gathered_state(model, accelerator.is_main_process)
    if accelerator.is_main_process:
        save_twin(model, state, out)
    accelerator.wait_for_everyone()


def summary(engine) -> dict:
    """What the live engine is: its ZeRO stage, the trainable weights' whole size and what this
    rank holds of them (ZeRO-3 partitions the weights; ZeRO-2 only the fp32 masters and
    optimizer state, counted as optimizer_local_numel)."""
    params = [p for p in engine.module.parameters() if p.requires_grad]
    numel = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    opt = engine.optimizer
    flat = getattr(opt, "single_partition_of_fp32_groups", None) or getattr(opt, "fp32_partitioned_groups_flat", [])
    return {"engine": type(engine).__name__, "zero_stage": int(engine.zero_optimization_stage()),
            "world": engine.dp_world_size, "numel": numel, "local_numel": local,
            "optimizer_local_numel": sum(t.numel() for t in flat)}
