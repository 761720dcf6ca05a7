"""Reading checkpoint tensors without pickle: safetensors, or torch files with weights_only."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of one file (`.safetensors`, or `.bin`/`.pt` through
    `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if p.suffix == ".safetensors":
        return load_file(p)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (unpickling errors have no common base class)
        raise ValueError(f"{p}: not a weights-only torch file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p}: expected a mapping of names to tensors")
    return state


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The weight files of a transformers-style folder: a safetensors/bin index's shards, or the
    single model file. Safetensors first, as transformers prefers them."""
    root = Path(folder)
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (root / index).exists():
            shards = json.loads((root / index).read_text())["weight_map"].values()
            return [root / s for s in sorted(set(shards))]
        if (root / single).exists():
            return [root / single]
    raise FileNotFoundError(f"{root}: no model.safetensors, pytorch_model.bin or their index")


def read_checkpoint(folder: str | Path, keep=lambda name: True) -> dict[str, torch.Tensor]:
    """The tensors of a folder whose names pass `keep` (all of them by default)."""
    out: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(folder):
        out.update({k: v for k, v in read_tensors(f).items() if keep(k)})
    return out
