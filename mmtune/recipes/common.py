"""What the MultimodalLM recipes share: config loading, the run directory, data, evaluation."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..config import RecipeConfig, from_dict, load_yaml, merge, parse_overrides, save_yaml
from ..data.text.chat import resolve_template
from ..data.collate import ExampleEncoder, MediaTransform, RecordDataset, collate, pack
from ..data.text.instructions import split_turns
from ..data.formats.records import read_records
from ..model import MultimodalLM
from ..train.evaluate import ShuffledFrames, evaluate_qa
from ..zoo import resolve_model

CONFIG_DIR = Path(__file__).parent / "configs"


def config_path(recipe: str, name_or_path: str) -> Path:
    """`tiny` -> the packaged recipes/configs/<recipe>/tiny.yaml; anything else is a path."""
    packaged = CONFIG_DIR / recipe / f"{name_or_path}.yaml"
    if packaged.exists():
        return packaged
    path = Path(name_or_path)
    if not path.exists():
        known = sorted(p.stem for p in (CONFIG_DIR / recipe).glob("*.yaml"))
        raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor one of {known}")
    return path


def load_recipe_config(recipe: str, name_or_path: str, overrides: list[str] = ()) -> RecipeConfig:
    path = config_path(recipe, name_or_path)
    data = merge(load_yaml(path), parse_overrides(list(overrides)))
    if "model" in data:
        data["model"] = resolve_model(data["model"])
    return from_dict(RecipeConfig, data, f"{path}: ")


def make_accelerator(mixed_precision: str):
    """Without a GPU, say so: accelerate then joins `torchrun` / `accelerate launch --multi_gpu`
    processes over gloo (multi-CPU) instead of running each one alone."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        # accelerate keeps one precision per process; a process that runs several recipes
        # (the test suite, a notebook) must drop that singleton to change it. The process
        # group (PartialState) is kept.
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def example_encoder(model: MultimodalLM, cfg: RecipeConfig, template_name: str | None,
                    caption_task: bool = False, blank: bool = False,
                    media_transform: dict[str, MediaTransform] | None = None) -> ExampleEncoder:
    """Every modality's encoder decodes its own files (`load`), offers its blank stand-in
    (`blank`: flat image, flat frames, silence) and preprocesses a batch (`preprocess`)."""
    encoders = dict(model.encoders.items())
    return ExampleEncoder(
        tokenizer=model.tokenizer, template=resolve_template(model.tokenizer, template_name),
        tokens_per_medium={m: model.tokens_per_medium(m) for m in model.encoders},
        placeholder_ids=model.placeholder_ids,
        preprocess={m: e.preprocess for m, e in model.encoders.items()},
        max_length=cfg.train.max_length, skip_bad=cfg.train.on_bad_sample == "skip",
        caption_task=caption_task,
        blank_media=(lambda m: encoders[m].blank()) if blank else None,
        load={m: e.load for m, e in encoders.items()}, media_transform=media_transform or {},
        instruction_tokenizers=model.instruction_tokenizers,
        max_instruction_length={m: model.config.projectors[m].max_instruction_length
                                for m in model.instruction_tokenizers})


TASKS = ("conversation", "caption", "single_turn")


def training_data(model: MultimodalLM, cfg: RecipeConfig, data_file: Path, template: str | None,
                  task: str = "conversation", where: str = "stage.task"):
    """`task`: "conversation" trains whole conversations; "caption" is LLaVA's alignment
    pretraining (instruction text dropped); "single_turn" splits conversations into one
    example per exchange (InstructBLIP: each instruction reaches the Q-Former)."""
    if cfg.train.on_bad_sample not in ("error", "skip"):
        raise ValueError(f"train.on_bad_sample: {cfg.train.on_bad_sample!r} is not 'error' or 'skip'")
    if task not in TASKS:
        raise ValueError(f"{where}: {task!r} is not one of {list(TASKS)}")
    records, bad = read_records(data_file, skip_bad=cfg.train.on_bad_sample == "skip")
    if bad:
        print(f"skipped {len(bad)} bad record(s) in {data_file}, e.g. {bad[0]}")
    if task == "single_turn":
        records = [turn for r in records for turn in split_turns(r)]
    dataset = RecordDataset(records, example_encoder(model, cfg, template, task == "caption"))
    pad = model.tokenizer.pad_token_id
    if cfg.train.packing:
        return dataset, lambda examples: pack(examples, pad, cfg.train.pack_length), len(bad)
    return dataset, lambda examples: collate(examples, pad), len(bad)


def evaluate_run(model: MultimodalLM, cfg: RecipeConfig, data_file: Path, device="cpu") -> dict:
    records, _ = read_records(data_file)
    if cfg.eval.limit:
        records = records[: cfg.eval.limit]
    enc = example_encoder(model, cfg, None)
    blank = example_encoder(model, cfg, None, blank=True) if len(model.encoders) else None
    # A video model that reads temporal order must lose it when its frames are out of order.
    probes = ({"shuffled_frames": example_encoder(model, cfg, None, media_transform={
        "video": ShuffledFrames(cfg.train.seed)})} if "video" in model.encoders else {})
    return evaluate_qa(model, records, enc, blank, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                       device, tuple(cfg.eval.separate_splits), probes)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_config(cfg: RecipeConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "config.yaml")


def start_run(cfg, train, run_dir: Path):
    """What every recipe does first: the accelerator, torch threads, seeds, and the resolved
    config (any config dataclass) in run_dir/config.yaml. `train` has mixed_precision,
    threads and seed."""
    accelerator = make_accelerator(train.mixed_precision)
    if train.threads:
        torch.set_num_threads(train.threads)
    seed_everything(train.seed)
    if accelerator.is_main_process:
        save_config(cfg, run_dir)
    return accelerator
