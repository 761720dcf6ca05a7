"""What a plain `mmtune` command prints: its own lines, not the libraries' chatter.

Called by the CLI before any heavy import (the settings below are read at import time);
`mmtune --verbose` skips it. The Python API changes nothing global.
"""
from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    # Loading/saving progress bars of transformers and huggingface_hub, and their info lines.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # mmtune imports bitsandbytes only for a 4-bit config, but peft and diffusers import it
    # whenever it is installed, and its CPU backend then warns that the optional
    # `kernels` package (a faster 4-bit GEMM) is absent; the fallback it uses is the one tested.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # gradio's queue calls pandas in ways pandas 3 deprecates: a warning per web request.
    warnings.filterwarnings("ignore", module=r"gradio\.")


def quiet_diffusers() -> None:
    """diffusers' own progress bars (pipeline loading) ignore the environment: call after import."""
    if os.environ.get("DIFFUSERS_VERBOSITY") == "error":
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()


def recipes_epilog() -> str:
    """`mmtune train --help`'s list of recipes and their packaged configs, read from the
    package's config folders (no recipe module is imported for it)."""
    from pathlib import Path

    configs = Path(__file__).parent / "recipes" / "configs"
    lines = ["recipes and their packaged configs (--config NAME, or a YAML path):"]
    for recipe in sorted(d for d in configs.iterdir() if d.is_dir()):
        lines.append(f"  {recipe.name:<18}{', '.join(sorted(p.stem for p in recipe.glob('*.yaml')))}")
    return "\n".join(lines)
