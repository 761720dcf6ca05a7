"""Run a recipe's stages in order: the driver every MultimodalLM recipe shares.

Each stage names what it trains (`stages.<name>.train`), on which data, how fast. A stage
starts from the model the previous stage saved, so `--stage finetune` alone continues a run;
without that model it is an error (`fresh=True` builds one from the config instead).
"""
from __future__ import annotations

import json
import time
from functools import partial

from pathlib import Path
from typing import Callable

from ..config import RecipeConfig
from ..model import MultimodalLM
from ..registry import Recipe
from ..train.evaluate import print_qa_eval
from ..train import checkpoint as ckpt
from ..train import deepspeed as zero, engine, finish
from ..train.flops import MFUMeter
from ..train.loop import LanguageModelObjective
from ..train.params import parameter_rows, parameter_table, set_trainable
from ..train.run import seed_everything, start_run, write_json
from ..train.speed import configure
from ..train.stage import run_stage
from .common import (eval_data, evaluate_run, evaluate_saved_run, load_recipe_config, packaged_configs,
                     stage_data, stage_model_dir, training_data)


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
    order = list(cfg.stages)
    # Which stages finished earlier (their model is published with the same settings); a
    # changed one is an error here, before the run folder is touched.
    prints = {n: _fingerprint(cfg, n) for n in names}
    skips = finish.skipped_stages([(n, stage_model_dir(cfg, run_dir, n), prints[n]) for n in names], resume, fresh)
    accelerator = start_run(recipe, cfg, cfg.train, run_dir)
    # FSDP (an `accelerate launch --config_file fsdp.yaml` run): mmtune's engine shards the model
    # itself, on CPU+gloo as on GPU+NCCL (accelerate would silently skip it without a GPU).
    shard_cfg = engine.launch_shard_config()
    shard = partial(engine.shard, cfg=shard_cfg) if shard_cfg is not None else None
    summary: dict = {"stages": _summary(run_dir)}  # stages an earlier run finished keep their figures
    t0 = time.perf_counter()
    objective = LanguageModelObjective(head_at_labels=cfg.train.head_at_labels)
    model: MultimodalLM | None = None  # built or loaded when a stage needs it
    start_from: Path | None = None  # the model of the last stage that finished earlier
    for name, skip in zip(names, skips):
        out = stage_model_dir(cfg, run_dir, name)
        if skip:
            accelerator.print(f"[{name}] finished earlier: {out}")
            model, start_from = None, out
            continue
        if accelerator.is_main_process:  # what an older version of this stage led to is stale now
            later = [stage_model_dir(cfg, run_dir, n) for n in order[order.index(name):]]
            finish.retire(run_dir / name, later, checkpoints_too=not resume)
        accelerator.wait_for_everyone()
        if model is None:
            model = _initial_model(cfg, run_dir, name, fresh, start_from)
            if cfg.train.gradient_checkpointing:
                accelerator.print(f"gradient checkpointing: {model.enable_gradient_checkpointing()}")
        # Each stage draws from its own seed, so a stage run after a rerun skipped the ones
        # before it sees the random numbers (LoRA init, dropout) the uninterrupted run saw.
        seed_everything(cfg.train.seed + order.index(name))
        stage = cfg.stages[name]
        set_trainable(model, stage.train, f"stages.{name}.train")
        accelerator.print(f"[{name}] trainable parameters\n{parameter_table(model)}")
        # Before the data: a frozen encoder's cache also keeps the media the data side decodes.
        configure(model, cfg.train, accelerator.device,  # attention path, feature cache, compile
                  sharded_weights=shard is not None or zero.zero_stage(accelerator) == 3)
        dataset, collate_fn, bad = training_data(model, cfg, stage_data(cfg, stage), stage.chat_template, stage.task)
        result = run_stage(name, model, objective, dataset, collate_fn, stage, cfg.train, accelerator, run_dir,
                           resume=resume, stop_after=stop_after, kbit=bool(model.config.llm.quantize), skipped=bad,
                           meter=MFUMeter(model, cfg.train.mixed_precision, accelerator.device), shard=shard)
        result["parameters"] = parameter_rows(model)
        result["bad_records"] = len(bad)
        summary["stages"][name] = result
        if result["steps"] < result["max_steps"]:  # stopped early on purpose: no stage model
            return summary
        summary["train_seconds"] = round(time.perf_counter() - t0, 2)
        if accelerator.is_main_process:  # before the model: a kill between them retrains the stage
            write_json(run_dir / "train_summary.json", summary)
        _save_model(model, out, accelerator, name, prints[name], sharded=shard is not None)
        start_from = out
        if shard is not None or zero.engaged(accelerator):  # next stage (or evaluation) loads the gathered model
            model = None
    if accelerator.is_main_process:
        test_file = eval_data(cfg)
        fresh_eval = not all(skips) or not (run_dir / "eval.json").exists()  # a finished rerun keeps its eval
        if evaluate and fresh_eval and test_file is not None and test_file.exists():
            if model is None:  # the stages finished earlier, or were sharded: their saved model
                model = MultimodalLM.from_pretrained(start_from)
            summary["eval"] = evaluate_run(model, cfg, test_file, accelerator.device)
            write_json(run_dir / "eval.json", summary["eval"])
    accelerator.wait_for_everyone()
    return summary


def _fingerprint(cfg: RecipeConfig, name: str) -> str:
    """What stage `name`'s weights depend on: the model, the stages up to it, their data."""
    order = list(cfg.stages)
    upto = order[: order.index(name) + 1]
    return finish.fingerprint(cfg.model, [cfg.stages[n] for n in upto],
                              [str(stage_data(cfg, cfg.stages[n]).resolve()) for n in upto], cfg.train.seed)


def _summary(run_dir: Path) -> dict:
    """The stages an earlier run of this folder recorded in train_summary.json."""
    path = run_dir / "train_summary.json"
    return json.loads(path.read_text()).get("stages", {}) if path.exists() else {}


def _save_model(model: MultimodalLM, out: Path, accelerator, stage: str, print_: str, sharded: bool) -> None:
    """The model in its normal formats, written once from the main process into a temporary
    folder and published by one rename (the stage's end). A sharded model is gathered
    (collective) and written by rank 0."""
    tmp = ckpt.begin_save(out) if accelerator.is_main_process else ckpt.tmp_dir(out)
    if zero.engaged(accelerator):  # the weights live in DeepSpeed's partitions: gathered once
        zero.save_consolidated(accelerator, model, tmp)
    elif sharded:
        engine.save_consolidated(model, tmp)
    elif accelerator.is_main_process:
        model.save_pretrained(tmp)
    if accelerator.is_main_process:
        finish.publish(tmp, out, stage, print_)
    accelerator.wait_for_everyone()


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


def _initial_model(cfg: RecipeConfig, run_dir: Path, first_stage: str, fresh: bool,
                   start_from: Path | None = None) -> MultimodalLM:
    """The model `first_stage` starts from: `start_from` (the model of the stage before, which
    finished in an earlier run) when given; else the model the stage before saved; the config's
    (a released checkpoint with `model.init_from`) for the first stage, when that model does not
    exist but `init_from` names the start, or when asked (`fresh`)."""
    if start_from is not None:
        return MultimodalLM.from_pretrained(start_from, trainable_adapter=True)
    order = list(cfg.stages)
    before = order[: order.index(first_stage)]
    if not before or fresh:
        return MultimodalLM.build(cfg.model)
    saved = stage_model_dir(cfg, run_dir, before[-1])
    # Any complete model folder there is a start (one placed by hand too); only a skip needs
    # the stage record `finish.publish` writes.
    if not (saved / "mmtune_config.json").exists():
        if cfg.model.init_from:
            return MultimodalLM.build(cfg.model)
        raise FileNotFoundError(f"stage {first_stage!r} starts from stage {before[-1]!r}'s model, but "
                                f"{saved} does not exist: run stage {before[-1]!r} first, or pass --fresh "
                                "to start from the config's model")
    print(f"starting from {saved}")
    return MultimodalLM.from_pretrained(saved, trainable_adapter=True)
