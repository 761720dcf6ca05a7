"""InstructPix2Pix (Brooks et al., 2023): teach a diffusion model to edit images by instruction.

The UNet sees the noisy edited image's latent next to the input image's latent (its first
convolution widened to 2x the latent channels) and the instruction through cross-attention;
the VAE and CLIP text encoder stay frozen. Conditioning dropout (text, image, both) trains
the unconditional predictions that classifier-free guidance with separate text and image
scales needs. Optionally an EMA of the UNet weights is what gets saved.

The run directory holds config.yaml, metrics.jsonl, train/checkpoint-<step>/ (a rerun
resumes from the latest), model/ (a diffusers StableDiffusionInstructPix2PixPipeline),
train_summary.json, eval.json and eval_grid.png. The same file runs on one process or under
`accelerate launch` / `torchrun`.
"""
from __future__ import annotations

from pathlib import Path

from ..diffusion.config import EditRecipeConfig, load_edit_config
from ..registry import RECIPE_CONFIGS, RECIPES
from .common import start_run, write_json


def main(cfg: EditRecipeConfig, run_dir: str | Path, stages: list[str] | None = None,
         resume: bool = True, evaluate: bool = True, stop_after: int | None = None) -> dict:
    # diffusers is an optional dependency (the `diffusion` extra) and slow to import: only
    # this recipe loads it, when it runs.
    from ..diffusion.components import build_components
    from ..diffusion.data import TripletDataset, read_triplets
    from ..diffusion.evaluate import evaluate_edit_run
    from ..diffusion.loop import STAGE, train

    if stages not in (None, [STAGE]):
        raise ValueError(f"instruct_pix2pix has one stage, {STAGE!r}; got {stages}")
    if cfg.data_dir is None:
        raise ValueError("data_dir is not set (give --data DIR or data_dir=DIR)")
    if cfg.train.on_bad_sample not in ("error", "skip"):
        raise ValueError(f"train.on_bad_sample: {cfg.train.on_bad_sample!r} is not 'error' or 'skip'")

    run_dir = Path(run_dir)
    accelerator = start_run(cfg, cfg.train, run_dir)
    parts = build_components(cfg.model)
    accelerator.print(_parameter_table(parts))
    triplets, bad = read_triplets(Path(cfg.data_dir) / cfg.train.data, cfg.train.on_bad_sample == "skip")
    if bad:
        accelerator.print(f"skipped {len(bad)} bad line(s), e.g. {bad[0]}")
    dataset = TripletDataset(triplets, parts.tokenizer, cfg.train.resolution, cfg.train.random_flip,
                             skip_bad=cfg.train.on_bad_sample == "skip")

    summary = train(parts, dataset, cfg.train, accelerator, run_dir, resume, stop_after)
    summary["bad_records"] = len(bad)
    if summary["steps"] < cfg.train.max_steps:  # stopped early on purpose: no model
        return summary
    if accelerator.is_main_process:
        parts.pipeline().save_pretrained(run_dir / "model")
        write_json(run_dir / "train_summary.json", summary)
        test_file = Path(cfg.data_dir) / cfg.eval.data
        if evaluate and test_file.exists():
            summary["eval"] = evaluate_edit_run(run_dir, cfg, test_file, accelerator.device)
    accelerator.wait_for_everyone()
    return summary


def _parameter_table(parts) -> str:
    lines = [f"{'part':<16}{'params':>14}{'trainable':>14}"]
    for name in ("unet", "vae", "text_encoder"):
        ps = list(getattr(parts, name).parameters())
        trainable = name == "unet"  # the VAE and text encoder are frozen
        lines.append(f"{name:<16}{sum(p.numel() for p in ps):>14,}{sum(p.numel() for p in ps) * trainable:>14,}")
    return "\n".join(lines)


RECIPES.register("instruct_pix2pix", main)
RECIPE_CONFIGS.register("instruct_pix2pix", load_edit_config)
