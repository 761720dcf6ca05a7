"""What the MultimodalLM recipes share: config loading, data, evaluation, and their `Recipe`."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..config import RecipeConfig, StageConfig, from_dict, load_yaml, merge, parse_overrides
from ..data.collate import ExampleBuilder, MediaTransform, RecordDataset, collate, pack
from ..data.formats.records import read_records
from ..data.text.chat import resolve_template
from ..data.text.instructions import split_turns
from ..model import MultimodalLM
from ..train.evaluate import ShuffledFrames, evaluate_qa
from ..train.run import write_json
from ..zoo import resolve_model

CONFIG_DIR = Path(__file__).parent / "configs"


def packaged_configs(recipe: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / recipe).glob("*.yaml"))


def config_path(recipe: str, name_or_path: str) -> Path:
    """`tiny` -> the packaged recipes/configs/<recipe>/tiny.yaml; anything else is a path."""
    packaged = CONFIG_DIR / recipe / f"{name_or_path}.yaml"
    if packaged.exists():
        return packaged
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"config {name_or_path!r} is neither a YAML file nor one of {recipe}'s "
                                f"packaged configs {packaged_configs(recipe)}")
    return path


def load_config(cls, recipe: str, name_or_path: str, overrides: list[str] = ()):
    """Defaults of `cls` <- the recipe's YAML <- `key.path=value` overrides, strictly typed."""
    path = config_path(recipe, name_or_path)
    data = merge(load_yaml(path), parse_overrides(list(overrides)))
    if cls is RecipeConfig and "model" in data:
        data["model"] = resolve_model(data["model"])
    return from_dict(cls, data, f"{path}: ")


def load_recipe_config(recipe: str, name_or_path: str, overrides: list[str] = ()) -> RecipeConfig:
    return load_config(RecipeConfig, recipe, name_or_path, overrides)


def stage_data(cfg, stage: StageConfig) -> Path:
    """The stage's data file: `data_dir/<stage.data>`, or `data_dir` itself when it is a file."""
    if cfg.data_dir is None:
        raise FileNotFoundError("no data: give --data DIR (or a JSONL file), or set data_dir")
    root = Path(cfg.data_dir)
    if root.is_file():
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} does not exist")
    return root / stage.data


def eval_data(cfg) -> Path | None:
    """The held-out file `eval.data` in the data folder; None when the data is a single file
    (a file beside it may belong to something else: `mmtune eval RUN --data FILE` then)."""
    root = Path(cfg.data_dir or ".")
    return None if root.is_file() else root / cfg.eval.data


def example_builder(model: MultimodalLM, cfg: RecipeConfig, template_name: str | None,
                    caption_task: bool = False, blank: bool = False,
                    media_transform: dict[str, MediaTransform] | None = None) -> ExampleBuilder:
    """Records -> examples for `model`: each modality's encoder decodes its own files,
    offers its blank stand-in (flat image, flat frames, silence) and preprocesses a batch."""
    return ExampleBuilder(tokenizer=model.tokenizer, template=resolve_template(model.tokenizer, template_name),
                          media=model.media_specs(), max_length=cfg.train.max_length,
                          skip_bad=cfg.train.on_bad_sample == "skip", caption_task=caption_task,
                          blank_media=blank, media_transform=media_transform or {})


def training_data(model: MultimodalLM, cfg: RecipeConfig, data_file: Path, template: str | None,
                  task: str = "conversation"):
    """(dataset, collate function, lines the reader skipped as `Dropped`). `task`: "conversation" trains whole conversations; "caption" is LLaVA's alignment
    pretraining (instruction text dropped); "single_turn" splits conversations into one
    example per exchange (InstructBLIP: each instruction reaches the Q-Former)."""
    records, bad = read_records(data_file, skip_bad=cfg.train.on_bad_sample == "skip")
    if bad:
        print(f"skipped {len(bad)} bad record(s) in {data_file}, e.g. {bad[0]}")
    if task == "single_turn":
        records = [turn for r in records for turn in split_turns(r)]
    dataset = RecordDataset(records, example_builder(model, cfg, template, task == "caption"))
    pad = model.tokenizer.pad_token_id
    if cfg.train.packing:
        return dataset, partial(pack, pad_id=pad, max_length=cfg.train.pack_length), bad
    return dataset, partial(collate, pad_id=pad), bad


def evaluate_run(model: MultimodalLM, cfg: RecipeConfig, data_file: Path, device="cpu") -> dict:
    records, _ = read_records(data_file)
    if cfg.eval.limit:
        records = records[: cfg.eval.limit]
    enc = example_builder(model, cfg, None)
    blank = example_builder(model, cfg, None, blank=True) if len(model.encoders) else None
    # A video model that reads temporal order must lose it when its frames are out of order.
    probes = ({"shuffled_frames": example_builder(model, cfg, None, media_transform={
        "video": ShuffledFrames(cfg.train.seed)})} if "video" in model.encoders else {})
    return evaluate_qa(model, records, enc, blank, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                       device, tuple(cfg.eval.separate_splits), probes)


def stage_model_dir(cfg, run_dir: Path, name: str) -> Path:
    """Where stage `name` saves its model: the config's last stage saves the run's model
    (`run_dir/model`, written once), an earlier one `run_dir/<name>/model`, where the next
    stage starts from."""
    return Path(run_dir) / "model" if name == list(cfg.stages)[-1] else Path(run_dir) / name / "model"


def newest_model(cfg, run_dir: Path) -> Path | None:
    """The model of the latest stage (in the config's order) that finished, or None."""
    for name in reversed(list(cfg.stages)):
        path = stage_model_dir(cfg, run_dir, name)
        if (path / "mmtune_config.json").exists():
            return path
    return None


def load_run(run_dir: str | Path) -> tuple[RecipeConfig, MultimodalLM]:
    """A run's resolved config and its newest trained model (`model/`, or the latest finished
    stage's when the run stopped earlier, e.g. `--stage pretrain`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = from_dict(RecipeConfig, load_yaml(run_dir / "config.yaml"), f"{run_dir / 'config.yaml'}: ")
    model = newest_model(cfg, run_dir)
    if model is None:
        raise FileNotFoundError(f"{run_dir} holds no trained model (expected {run_dir}/model/mmtune_config.json)")
    return cfg, MultimodalLM.from_pretrained(model)


def evaluate_saved_run(run_dir: Path, data: str | None = None) -> dict:
    """`mmtune eval RUN`: held-out QA with and without media; writes RUN/eval.json."""
    cfg, model = load_run(run_dir)
    data_file = Path(data) if data else eval_data(cfg)
    if data_file is None:
        raise FileNotFoundError(f"{run_dir} trained on a single data file: give the held-out file with --data")
    result = evaluate_run(model, cfg, data_file)
    write_json(Path(run_dir) / "eval.json", result)
    return result
