"""Run a recipe's stages in order: the driver LLaVA, SFT and QLoRA share.

Each stage names what it trains (`stages.<name>.train`), on which data, how fast. A stage
starts from the model the previous stage saved, so `--stage finetune` alone continues a run.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..config import RecipeConfig
from ..model import MultimodalLM
from ..train.params import parameter_rows, parameter_table, set_trainable
from ..train.stage import run_stage
from .common import data_file, evaluate_run, start_run, training_data, write_json


def run_stages(cfg: RecipeConfig, run_dir: str | Path, stages: list[str] | None = None,
               resume: bool = True, evaluate: bool = True, stop_after: int | None = None) -> dict:
    run_dir = Path(run_dir)
    accelerator = start_run(cfg, cfg.train, run_dir)
    names = list(cfg.stages) if stages is None else stages
    unknown = [s for s in names if s not in cfg.stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; this config has {list(cfg.stages)}")
    if cfg.data_dir is None:
        raise ValueError("data_dir is not set (give --data DIR or data_dir=DIR)")

    model = _initial_model(cfg, run_dir, names[0])
    summary: dict = {"stages": {}}
    t0 = time.perf_counter()
    for name in names:
        stage = cfg.stages[name]
        set_trainable(model, stage.train, f"stages.{name}.train")
        accelerator.print(f"[{name}] trainable parameters\n{parameter_table(model)}")
        dataset, collate_fn, n_bad = training_data(model, cfg, data_file(cfg.data_dir, stage.data),
                                                   stage.chat_template, stage.task, f"stages.{name}.task")
        result = run_stage(name, model, dataset, collate_fn, stage, cfg.train, accelerator, run_dir,
                           resume=resume, stop_after=stop_after)
        result["parameters"] = parameter_rows(model)
        result["bad_records"] = n_bad
        summary["stages"][name] = result
        if result["steps"] < stage.max_steps:  # stopped early on purpose: no stage model
            return summary
        if accelerator.is_main_process:
            model.save_pretrained(run_dir / name / "model")
        accelerator.wait_for_everyone()
    summary["train_seconds"] = round(time.perf_counter() - t0, 2)
    if accelerator.is_main_process:
        model.save_pretrained(run_dir / "model")
        write_json(run_dir / "train_summary.json", summary)
        if evaluate:
            test_file = Path(cfg.data_dir) / cfg.eval.data
            if test_file.exists():
                summary["eval"] = evaluate_run(model, cfg, test_file, accelerator.device)
                write_json(run_dir / "eval.json", summary["eval"])
    accelerator.wait_for_everyone()
    return summary


def _initial_model(cfg: RecipeConfig, run_dir: Path, first_stage: str) -> MultimodalLM:
    """Continue from the stage before `first_stage` when its model exists, else build fresh."""
    order = list(cfg.stages)
    before = order[: order.index(first_stage)]
    for name in reversed(before):
        saved = run_dir / name / "model"
        if (saved / "mmtune_config.json").exists():
            print(f"starting from {saved}")
            return MultimodalLM.from_pretrained(saved, trainable_adapter=True)
    return MultimodalLM.build(cfg.model)


