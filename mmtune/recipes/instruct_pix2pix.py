"""InstructPix2Pix (Brooks et al., 2023): teach a diffusion model to edit images by instruction.

The UNet sees the noisy edited image's latent next to the input image's latent (its first
convolution widened to 2x the latent channels) and the instruction through cross-attention;
the VAE and CLIP text encoder stay frozen. Conditioning dropout (text, image, both) trains
the unconditional predictions that classifier-free guidance with separate text and image
scales needs. Optionally an EMA of the UNet weights is what gets saved.

It trains on the loop every recipe shares (`mmtune.train.stage.run_stage`): this file only
supplies the UNet, the diffusion objective and the EMA hook. The run directory holds
config.yaml, metrics.jsonl, train/checkpoint-<step>/ (a rerun resumes from the latest),
model/ (a diffusers StableDiffusionInstructPix2PixPipeline, written once when training ends; a
rerun then has nothing to do), train_summary.json, eval.json and eval_grid.png. The same file runs on one process or under `accelerate launch` / `torchrun`.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from ..diffusion.config import STAGE, EditRecipeConfig, edit_config_from_run
from ..registry import RECIPES, Recipe
from ..train import checkpoint as ckpt
from ..train import deepspeed as zero, engine, finish
from ..train.run import start_run, write_json
from ..train.stage import run_stage
from .common import eval_data, load_config, packaged_configs, stage_data


def main(cfg: EditRecipeConfig, run_dir: str | Path, stages: list[str] | None = None, resume: bool = True,
         evaluate: bool = True, stop_after: int | None = None, fresh: bool = False) -> dict:
    # diffusers is an optional dependency (the `diffusion` extra) and slow to import: only
    # this recipe loads it, when it runs.
    from ..diffusion.components import build_components, unet_blocks, unsharded_unet
    from ..diffusion.data import TripletDataset, read_triplets
    from ..diffusion.evaluate import evaluate_edit_run
    from ..diffusion.train import EditObjective, EmaHook, collate_edits

    if stages not in (None, [STAGE]):
        raise ValueError(f"instruct_pix2pix has one stage, {STAGE!r}; got {stages}")
    stage = cfg.stages[STAGE]
    data_file = stage_data(cfg, stage)
    run_dir = Path(run_dir)
    out = run_dir / "model"
    print_ = finish.fingerprint(cfg.model, stage, cfg.edit, str(data_file.resolve()), cfg.train.seed)
    [skip] = finish.skipped_stages([(STAGE, out, print_)], resume, fresh)  # changed settings: an error, here
    accelerator = start_run("instruct_pix2pix", cfg, cfg.train, run_dir)
    test_file = eval_data(cfg)
    if skip:  # its pipeline is published: finished earlier; evaluated again only if that never ended
        accelerator.print(f"[{STAGE}] finished earlier: {out}")
        summary = json.loads((run_dir / "train_summary.json").read_text())
        if (evaluate and accelerator.is_main_process and not (run_dir / "eval.json").exists()
                and test_file is not None and test_file.exists()):
            summary["eval"] = evaluate_edit_run(run_dir, cfg, test_file, accelerator.device)
        accelerator.wait_for_everyone()
        return summary
    if accelerator.is_main_process:
        finish.retire(run_dir / STAGE, [out], checkpoints_too=not resume)
    accelerator.wait_for_everyone()
    parts = build_components(cfg.model)
    accelerator.print(_parameter_table(parts))
    triplets, bad = read_triplets(data_file, cfg.train.on_bad_sample == "skip")
    if bad:
        accelerator.print(f"skipped {len(bad)} bad line(s), e.g. {bad[0]}")
    dataset = TripletDataset(triplets, parts.tokenizer, cfg.edit.resolution, cfg.edit.random_flip,
                             skip_bad=cfg.train.on_bad_sample == "skip")

    device = accelerator.device
    parts.vae.to(device)
    parts.text_encoder.to(device)
    parts.unet.requires_grad_(True)
    if cfg.edit.ema_decay > 0 and zero.zero_stage(accelerator) == 3:  # its weights are partitions there
        raise ValueError("edit.ema_decay > 0 under DeepSpeed ZeRO-3: the EMA would average weight partitions; "
                         "launch with fsdp.yaml (the EMA is kept per shard) or zero2.yaml")
    hooks = (EmaHook(cfg.edit.ema_decay),) if cfg.edit.ema_decay > 0 else ()
    # FSDP (an `accelerate launch --config_file fsdp.yaml` run): the UNet is sharded block by
    # block by mmtune's engine; the frozen VAE and text encoder stay whole on every process.
    shard_cfg = engine.launch_shard_config()
    shard = partial(engine.shard_units, units=unet_blocks(parts.unet), cfg=shard_cfg) if shard_cfg else None
    summary = run_stage(STAGE, parts.unet, EditObjective(parts, cfg.edit.conditioning_dropout, device), dataset,
                        collate_edits, stage, cfg.train, accelerator, run_dir, resume=resume,
                        stop_after=stop_after, hooks=hooks, skipped=bad, shard=shard)
    summary.update(bad_records=len(bad), ema=bool(hooks))
    if summary["steps"] < summary["max_steps"]:  # stopped early on purpose: no model
        return summary
    if shard is not None:  # gathered once (collective); rank 0 saves an unsharded twin
        parts.unet = unsharded_unet(parts.unet, engine.full_state_dict(parts.unet))
    elif zero.engaged(accelerator):  # the same from DeepSpeed's partitions (ZeRO-3) or its whole weights
        parts.unet = unsharded_unet(parts.unet, zero.gathered_state(parts.unet, accelerator.is_main_process))
    if accelerator.is_main_process:  # the pipeline, published in one rename: the stage's end
        write_json(run_dir / "train_summary.json", summary)  # first: a kill between them retrains
        parts.unet.to("cpu")
        tmp = ckpt.begin_save(out)
        parts.pipeline().save_pretrained(tmp)
        finish.publish(tmp, out, STAGE, print_)
        if evaluate and test_file is not None and test_file.exists():
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


def _evaluate(run_dir: Path, data: str | None = None) -> dict:
    from ..diffusion.evaluate import evaluate_edit_run

    cfg = edit_config_from_run(run_dir)
    data_file = Path(data) if data else eval_data(cfg)
    if data_file is None:
        raise FileNotFoundError(f"{run_dir} trained on a single data file: give the held-out file with --data")
    return evaluate_edit_run(run_dir, cfg, data_file)


def _print_eval(result: dict) -> None:
    from ..diffusion.evaluate import print_edit_eval

    print_edit_eval(result)


def _zoo_rows() -> list[dict]:
    from ..diffusion.cli import edit_zoo_rows

    return edit_zoo_rows()


load_edit_config = partial(load_config, EditRecipeConfig, "instruct_pix2pix")
RECIPES.register("instruct_pix2pix", Recipe(
    run=main, load_config=load_edit_config, evaluate=_evaluate,
    print_eval=_print_eval, configs=partial(packaged_configs, "instruct_pix2pix"), zoo_rows=_zoo_rows, page="edit"))
