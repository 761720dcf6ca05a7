"""`mmtune edit`, and what `mmtune eval` / `mmtune zoo` do for image-editing runs.

Kept free of diffusers at import time: `mmtune --help` must not pay for it.
"""
from __future__ import annotations

from pathlib import Path

ZOO = {"instruct-pix2pix-sd15": "instruct-pix2pix-sd15", "tiny-instruct-pix2pix": "tiny"}  # name -> config


def _pipeline_dir(run: Path) -> Path:
    for candidate in (run / "model", run):
        if (candidate / "model_index.json").exists():
            return candidate
    raise SystemExit(f"{run} holds no diffusers pipeline (expected {run}/model/model_index.json)")


def _edit(args) -> None:
    import torch
    from PIL import Image

    from ..data.media.image import load_image
    from .components import load_pipeline
    from .config import EditEvalConfig, edit_config_from_run

    run = Path(args.run)
    pipe = load_pipeline(_pipeline_dir(run))
    ec, resolution = EditEvalConfig(), None
    if (run / "config.yaml").exists():
        cfg = edit_config_from_run(run)
        ec, resolution = cfg.eval, cfg.edit.resolution
    image = load_image(args.image, "--image")
    if resolution and image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)  # the size it was trained at
    out = pipe(prompt=args.instruction, image=image,
               num_inference_steps=args.steps or ec.num_inference_steps,
               guidance_scale=ec.guidance_scale if args.guidance_scale is None else args.guidance_scale,
               image_guidance_scale=(ec.image_guidance_scale if args.image_guidance_scale is None
                                     else args.image_guidance_scale),
               generator=torch.Generator().manual_seed(args.seed)).images[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out)
    print(f"wrote {args.out}")


def add_edit_parser(sub) -> None:
    p = sub.add_parser("edit", help="edit an image by instruction with a trained instruct_pix2pix run")
    p.add_argument("run", help="run directory (or a diffusers InstructPix2Pix pipeline folder)")
    p.add_argument("--image", required=True)
    p.add_argument("--instruction", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--steps", type=int, help="denoising steps (default: the run's eval setting)")
    p.add_argument("--guidance-scale", type=float, help="text guidance")
    p.add_argument("--image-guidance-scale", type=float, help="input-image guidance")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_edit)


def edit_zoo_rows() -> list[dict]:
    """Image-editing presets (the recipe's packaged configs) with meta-device parameter counts;
    none without diffusers (an optional dependency: `pip install -e ".[diffusion]"`)."""
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        return []
    from ..config import load_yaml, from_dict
    from .components import count_parameters
    from .config import EditModelConfig

    configs = Path(__file__).parent.parent / "recipes" / "configs" / "instruct_pix2pix"
    return [{"name": name, **count_parameters(from_dict(EditModelConfig, load_yaml(configs / f"{config}.yaml")["model"]))}
            for name, config in ZOO.items()]


def print_edit_zoo(rows: list[dict]) -> None:
    if not rows:
        print("\n(image-editing presets need diffusers: pip install -e \".[diffusion]\")")
        return
    print(f"\n{'image editing':<24}{'total':>16}{'unet':>16}{'vae':>14}{'text encoder':>14}")
    for r in rows:
        print(f"{r['name']:<24}{r['total']:>16,}{r['unet']:>16,}{r['vae']:>14,}{r['text_encoder']:>14,}")

