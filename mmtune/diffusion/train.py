"""What InstructPix2Pix plugs into the shared loop (`mmtune.train.stage.run_stage`): its batch,
its objective (the diffusion loss per sample), and an EMA of the UNet weights as a hook."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..batch import Dropped
from .components import EditComponents
from .data import tokenize
from .objective import edit_loss


@dataclass
class EditBatch:
    original: torch.Tensor  # [B, 3, R, R] in [-1, 1]
    edited: torch.Tensor  # [B, 3, R, R]
    prompt_ids: torch.Tensor  # [B, L] instruction tokens
    ids: list[str]  # record ids
    dropped: list[Dropped] = dataclasses.field(default_factory=list)  # samples left out (skip), with why
    truncated: int = 0  # (nothing is truncated here; the loop's data stats read it)

    def to(self, device, non_blocking: bool = False) -> "EditBatch":
        return dataclasses.replace(self, **{f: getattr(self, f).to(device, non_blocking=non_blocking)
                                            for f in ("original", "edited", "prompt_ids")})

    def __len__(self) -> int:
        return len(self.ids)


def collate_edits(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, str] | Dropped]) -> EditBatch:
    kept = [x for x in items if not isinstance(x, Dropped)]
    dropped = [x for x in items if isinstance(x, Dropped)]
    if not kept:  # every pair of this micro-batch was skipped: the loop draws another
        empty = torch.empty(0)
        return EditBatch(empty, empty, empty.long(), [], dropped)
    original, edited, prompt_ids, ids = zip(*kept)
    return EditBatch(torch.stack(original), torch.stack(edited), torch.stack(prompt_ids), list(ids), dropped)


class EditObjective:
    """The diffusion loss, summed over samples (each sample's mean squared error), so the loop
    averages it over every sample of the step, as it averages tokens for a language model.
    A "token" here is one latent position the UNet denoises."""

    def __init__(self, parts: EditComponents, dropout: float, device) -> None:
        self.parts, self.dropout = parts, dropout
        with torch.no_grad():  # the empty instruction's encoding: what dropped text becomes
            self.null_text = parts.text_encoder(tokenize(parts.tokenizer, [""]).to(device))[0]
        self.downsample = parts.vae_scale_factor()

    def count(self, batch: EditBatch) -> int:
        return len(batch)

    def loss_sum(self, model, batch: EditBatch) -> torch.Tensor:
        per_sample = edit_loss(self.parts, model, batch.original, batch.edited, batch.prompt_ids,
                               self.null_text, self.dropout)  # [B]
        return per_sample.sum()

    def tokens(self, batch: EditBatch) -> tuple[int, int]:
        h, w = batch.edited.shape[-2:]
        n = len(batch) * (h // self.downsample) * (w // self.downsample)
        return n, n


class EmaHook:
    """An exponential moving average of the UNet's weights (diffusers' EMAModel), updated after
    every step, checkpointed with the run, and copied into the UNet when the stage ends. It is
    made when the stage starts, from the parameters as trained: under FSDP each rank averages
    its own shards."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def at_start(self, module: torch.nn.Module) -> None:
        from diffusers.training_utils import EMAModel

        self.params = list(module.parameters())
        self.ema = EMAModel(self.params, decay=self.decay)

    def after_step(self, step: int) -> None:
        self.ema.step(self.params)

    def at_end(self) -> None:
        self.ema.copy_to(self.params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"ema.{i}": p for i, p in enumerate(self.ema.shadow_params)}
        state["ema.optimization_step"] = torch.tensor(self.ema.optimization_step)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.ema.shadow_params):
                p.copy_(state[f"ema.{i}"])
        self.ema.optimization_step = int(state["ema.optimization_step"])
