"""Does the model edit? Held-out success of the trained pipeline vs the same one untrained.

An edit succeeds when the edited region of the output (the named shape's pixels in the
input) takes the target colour: its mean colour is nearer the target than any other palette
colour (the four shape colours and the background, for "remove"). Returning the input
unchanged scores 0; the true target scores 1. Triplets without `meta.shape` (real data) are
only drawn in the grid.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..synth.shapes_draw import BACKGROUND, COLOUR_RGB
from ..synth.edits import REMOVED, shape_mask
from .components import build_components, load_pipeline
from .config import EditEvalConfig, EditRecipeConfig
from ..train.run import seed_everything, write_json
from .data import Triplet, read_triplets

PALETTE: dict[str, tuple[int, int, int]] = {**COLOUR_RGB, REMOVED: BACKGROUND}


def score_edit(output: Image.Image, triplet: Triplet) -> dict | None:
    """{"success", "region_colour", "background_error"} for a synthetic edit; None otherwise."""
    shape, target = triplet.meta.get("shape"), triplet.meta.get("target")
    if shape is None or target not in PALETTE:
        return None
    truth = np.asarray(triplet.edited(), dtype=np.float32)
    size = truth.shape[0]
    out = np.asarray(output.convert("RGB").resize((size, size), Image.NEAREST), dtype=np.float32)
    mask = np.asarray(shape_mask(shape, size), dtype=bool)
    mean = out[mask].mean(axis=0)
    nearest = min(PALETTE, key=lambda name: float(np.sum((mean - np.array(PALETTE[name])) ** 2)))
    # outside the edited region the output should equal the target (= the input there)
    background = float(np.abs(out[~mask] - truth[~mask]).mean())
    return {"success": nearest == target, "region_colour": nearest, "background_error": round(background, 2)}


def edit_images(pipe, triplets: list[Triplet], ec: EditEvalConfig, resolution: int) -> list[Image.Image]:
    """Run the diffusers pipeline over `triplets` in batches, seeded for repeatability."""
    generator = torch.Generator().manual_seed(ec.seed)
    outputs: list[Image.Image] = []
    for i in range(0, len(triplets), ec.batch_size):
        chunk = triplets[i:i + ec.batch_size]
        images = [t.original().resize((resolution, resolution), Image.BICUBIC) for t in chunk]
        outputs += pipe(prompt=[t.prompt for t in chunk], image=images, num_inference_steps=ec.num_inference_steps,
                        guidance_scale=ec.guidance_scale, image_guidance_scale=ec.image_guidance_scale,
                        generator=generator).images
    return outputs


def summarise(outputs: list[Image.Image], triplets: list[Triplet]) -> dict:
    scores = [score_edit(o, t) for o, t in zip(outputs, triplets)]
    scored = [(s, t) for s, t in zip(scores, triplets) if s is not None]
    if not scored:
        return {"n_scored": 0, "edit_success": None}
    def by(key: str) -> dict:
        groups: dict[str, list[bool]] = {}
        for s, t in scored:
            groups.setdefault(str(t.meta.get(key, "-")), []).append(s["success"])
        return {k: {"n": len(v), "edit_success": round(float(np.mean(v)), 4)} for k, v in sorted(groups.items())}

    return {"n_scored": len(scored),
            "edit_success": round(float(np.mean([s["success"] for s, _ in scored])), 4),
            "by_edit": by("edit"), "by_n_shapes": by("n_shapes"),
            "background_error": round(float(np.mean([s["background_error"] for s, _ in scored])), 2)}


def save_grid(path: Path, triplets: list[Triplet], columns: dict[str, list[Image.Image]], rows: int,
              cell: int = 96) -> None:
    """One row per triplet: input | target | each entry of `columns`, upscaled for viewing."""
    rows = min(rows, len(triplets))
    names = ["input", "target", *columns]
    grid = Image.new("RGB", (cell * len(names), cell * rows), (255, 255, 255))
    for r, t in enumerate(triplets[:rows]):
        images = [t.original(), t.edited(), *(col[r] for col in columns.values())]
        for c, im in enumerate(images):
            grid.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (c * cell, r * cell))
    grid.save(path)


def evaluate_edit_run(run_dir: str | Path, cfg: EditRecipeConfig, data_file: str | Path,
                      device: str | torch.device = "cpu") -> dict:
    """Edit every held-out triplet with the saved pipeline (run_dir/model) and with the same
    architecture at its initialisation (same seed: what training started from); write
    eval.json and eval_grid.png into the run directory."""
    run_dir, ec = Path(run_dir), cfg.eval
    triplets, _ = read_triplets(data_file)
    if ec.limit:
        triplets = triplets[: ec.limit]
    resolution = cfg.edit.resolution
    trained = edit_images(load_pipeline(run_dir / "model", device), triplets, ec, resolution)
    seed_everything(cfg.train.seed)
    untrained_pipe = build_components(cfg.model).pipeline().to(device)
    untrained_pipe.set_progress_bar_config(disable=True)
    untrained = edit_images(untrained_pipe, triplets, ec, resolution)
    result = {"data": str(data_file), "n": len(triplets),
              "sampler": {"num_inference_steps": ec.num_inference_steps, "guidance_scale": ec.guidance_scale,
                          "image_guidance_scale": ec.image_guidance_scale, "seed": ec.seed},
              "trained": summarise(trained, triplets), "untrained": summarise(untrained, triplets),
              "grid": "eval_grid.png"}
    result["edit_success"] = result["trained"]["edit_success"]
    result["untrained_edit_success"] = result["untrained"]["edit_success"]
    result["examples"] = [{"id": t.id, "prompt": t.prompt, **(score_edit(o, t) or {})}
                          for o, t in list(zip(trained, triplets))[:ec.grid_rows]]
    save_grid(run_dir / "eval_grid.png", triplets, {"trained": trained, "untrained": untrained}, ec.grid_rows)
    write_json(run_dir / "eval.json", result)
    return result


def print_edit_eval(result: dict) -> None:
    print(f"{'model':<12}{'n':>6}{'edit success':>14}{'background err':>16}")
    for name in ("trained", "untrained"):
        r = result[name]
        ok = "-" if r["edit_success"] is None else f"{r['edit_success']:.3f}"
        print(f"{name:<12}{r['n_scored']:>6}{ok:>14}{r.get('background_error', float('nan')):>16}")
    print(json.dumps({k: v for k, v in result["trained"].get("by_edit", {}).items()}))
