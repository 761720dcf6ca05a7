"""Launch configs shipped with mmtune: accelerate YAMLs (ddp, fsdp, fsdp_offload, zero2, zero3,
zero3_offload, multinode) and LLaVA-style DeepSpeed JSONs (zero2, zero3, zero3_offload).

`path("fsdp")` is the file to pass as `accelerate launch --config_file`; `mmtune plan` prints
the whole command."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
STRATEGY_FILES = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "fsdp_offload": "fsdp_offload.yaml",
                  "zero2": "zero2.yaml", "zero3": "zero3.yaml", "zero3_offload": "zero3_offload.yaml",
                  "multinode": "multinode.yaml"}


def path(name: str) -> Path:
    """The shipped file for a strategy name ("fsdp") or a file name ("zero3.json")."""
    file = STRATEGY_FILES.get(name, name)
    found = HERE / file
    if not found.is_file():
        raise ValueError(f"no launch config {name!r}; choose from {sorted(STRATEGY_FILES)} "
                         "or zero2.json / zero3.json / zero3_offload.json")
    return found
