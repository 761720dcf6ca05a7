"""Run a recipe's stages in order: the driver every MultimodalLM recipe shares.

Each stage names what it trains (`stages.<name>.train`), on which data, how fast. A stage
starts from the model the previous stage saved, so `--stage finetune` alone continues a run;
without that model it is an error (`fresh=True` builds one from the config instead).
"""
from __future__ import annotations

import time
from functools import partial

import torch.distributed as dist
from pathlib import Path
from typing import Callable

from ..config import RecipeConfig
from ..model import MultimodalLM
from ..registry import Recipe
from ..train.evaluate import print_qa_eval
from ..train import deepspeed as zero, engine
from ..train.flops import MFUMeter
from ..train.loop import LanguageModelObjective
from ..train.params import parameter_rows, parameter_table, set_trainable
from ..train.run import start_run, write_json
from ..train.speed import configure
from ..train.stage import run_stage
from .common import (eval_data, evaluate_run, evaluate_saved_run, load_recipe_config, packaged_configs,
                     stage_data, training_data)


def run_stages(recipe: str, cfg: RecipeConfig, run_dir: str | Path, stages: list[str] | None = None,
               resume: bool = True, evaluate: bool = True, stop_after: int | None = None,
               fresh: bool = False) -> dict:
    run_dir = Path(run_dir)
    names = list(cfg.stages) if stages is None else stages
    unknown = [s for s in names if s not in cfg.stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this config has {list(cfg.stages)}")
    for name in names:
        stage_data(cfg, cfg.stages[name])  # no data: fail before building anything
    accelerator = start_run(recipe, cfg, cfg.train, run_dir)

    model = _initial_model(cfg, run_dir, names[0], fresh)
    if cfg.train.gradient_checkpointing:
        accelerator.print(f"gradient checkpointing: {model.enable_gradient_checkpointing()}")
    # FSDP (an `accelerate launch --config_file fsdp.yaml` run): mmtune's engine shards the model
    # itself, on CPU+gloo as on GPU+NCCL (accelerate would silently skip it without a GPU).
    shard_cfg = engine.shard_config_from_launch() if dist.is_available() and dist.is_initialized() else None
    shard = partial(engine.shard, cfg=shard_cfg) if shard_cfg is not None else None
    summary: dict = {"stages": {}}
    t0 = time.perf_counter()
    objective = LanguageModelObjective(head_at_labels=cfg.train.head_at_labels)
    for name in names:
        stage = cfg.stages[name]
        set_trainable(model, stage.train, f"stages.{name}.train")
        accelerator.print(f"[{name}] trainable parameters\n{parameter_table(model)}")
        dataset, collate_fn, bad = training_data(model, cfg, stage_data(cfg, stage), stage.chat_template, stage.task)
        configure(model, cfg.train, accelerator.device)  # attention path, feature cache, compile
        result = run_stage(name, model, objective, dataset, collate_fn, stage, cfg.train, accelerator, run_dir,
                           resume=resume, stop_after=stop_after, kbit=bool(model.config.llm.quantize), skipped=bad,
                           meter=MFUMeter(model, cfg.train.mixed_precision, accelerator.device), shard=shard)
        result["parameters"] = parameter_rows(model)
        result["bad_records"] = len(bad)
        summary["stages"][name] = result
        if result["steps"] < result["max_steps"]:  # stopped early on purpose: no stage model
            return summary
        model = _save_model(model, run_dir / name / "model", accelerator, sharded=shard is not None)
    summary["train_seconds"] = round(time.perf_counter() - t0, 2)
    model = _save_model(model, run_dir / "model", accelerator, sharded=shard is not None)
    if accelerator.is_main_process:
        write_json(run_dir / "train_summary.json", summary)
        test_file = eval_data(cfg)
        if evaluate and test_file is not None and test_file.exists():
            summary["eval"] = evaluate_run(model, cfg, test_file, accelerator.device)
            write_json(run_dir / "eval.json", summary["eval"])
    accelerator.wait_for_everyone()
    return summary


def _save_model(model: MultimodalLM, out: Path, accelerator, sharded: bool) -> MultimodalLM:
    """The model in its normal formats, written once from the main process. A sharded model is
    gathered (collective) and written by rank 0; the next stage starts from that file, unsharded
    (the engine shards it again with that stage's trainable set)."""
    if zero.engaged(accelerator):  # the weights live in the engine's partitions: gathered once
        zero.save_consolidated(accelerator, model, out)
        return MultimodalLM.from_pretrained(out, trainable_adapter=True)
    if not sharded:
        if accelerator.is_main_process:
            model.save_pretrained(out)
        accelerator.wait_for_everyone()
        return model
    engine.save_consolidated(model, out)
    return MultimodalLM.from_pretrained(out, trainable_adapter=True)


def multimodal_recipe(name: str, check: Callable[[RecipeConfig], None] | None = None) -> Recipe:
    """The `Recipe` of a MultimodalLM recipe: its config checks, then the stages it names, on
    RecipeConfig, with QA evaluation."""
    def run(cfg: RecipeConfig, run_dir: str | Path, stages: list[str] | None = None, resume: bool = True,
            evaluate: bool = True, stop_after: int | None = None, fresh: bool = False) -> dict:
        if check is not None:
            check(cfg)
        return run_stages(name, cfg, run_dir, stages, resume, evaluate, stop_after, fresh)

    return Recipe(run=run, load_config=partial(load_recipe_config, name), evaluate=evaluate_saved_run,
                  print_eval=print_qa_eval, configs=partial(packaged_configs, name))


def _initial_model(cfg: RecipeConfig, run_dir: Path, first_stage: str, fresh: bool) -> MultimodalLM:
    """Continue from the model the stage before `first_stage` saved; build from the config (a
    released checkpoint with `model.init_from`) for the first stage, when that model does not
    exist but `init_from` names the start, or when asked (`fresh`)."""
    order = list(cfg.stages)
    before = order[: order.index(first_stage)]
    if not before or fresh:
        return MultimodalLM.build(cfg.model)
    saved = run_dir / before[-1] / "model"
    if not (saved / "mmtune_config.json").exists():
        if cfg.model.init_from:
            return MultimodalLM.build(cfg.model)
        raise FileNotFoundError(f"stage {first_stage!r} starts from stage {before[-1]!r}'s model, but "
                                f"{saved} does not exist: run stage {before[-1]!r} first, or pass --fresh "
                                "to start from the config's model")
    print(f"starting from {saved}")
    return MultimodalLM.from_pretrained(saved, trainable_adapter=True)
