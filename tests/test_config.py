"""Strict, typed config loading: defaults <- YAML file <- `key.path=value` overrides."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from mmtune.config import (
    ConfigError,
    RecipeConfig,
    StageConfig,
    TrainConfig,
    from_dict,
    load,
    load_yaml,
    merge,
    parse_overrides,
    save_yaml,
    to_dict,
)


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# --- unknown keys -----------------------------------------------------------------------


def test_unknown_nested_key_names_file_and_key_path(tmp_path):
    path = write(tmp_path, "stages:\n  pretrain:\n    lr: 1.0e-3\n    lrr: 2.0e-3\n")
    msg = error_of(load, RecipeConfig, path)
    assert str(path) in msg
    assert "stages.pretrain" in msg and "'lrr'" in msg
    assert msg.index("stages.pretrain") < msg.index("'lrr'")
    assert "valid keys:" in msg and "lr," in msg  # what the user probably meant is listed


@pytest.mark.parametrize("text, path_part, key", [
    ("trainn:\n  seed: 1\n", None, "'trainn'"),
    ("train:\n  sed: 1\n", "train", "'sed'"),
    ("model:\n  llm:\n    lora:\n      rank: 4\n", "model.llm.lora", "'rank'"),
    ("model:\n  encoders:\n    image:\n      typ: hf_clip\n", "model.encoders.image", "'typ'"),
])
def test_unknown_key_anywhere_is_an_error(tmp_path, text, path_part, key):
    path = write(tmp_path, text)
    msg = error_of(load, RecipeConfig, path)
    assert str(path) in msg and key in msg
    if path_part:
        assert path_part in msg


def test_unknown_key_without_file_names_key_path():
    msg = error_of(from_dict, RecipeConfig, {"stages": {"s": {"max_step": 3}}})
    assert "stages.s" in msg and "'max_step'" in msg


# --- types ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key_path, shown", [
    ("train:\n  max_length: long\n", "train.max_length", "'long'"),
    ("train:\n  max_length: true\n", "train.max_length", "True"),  # bool is not an int
    ("train:\n  max_length: 1.5\n", "train.max_length", "1.5"),
    ("stages:\n  s:\n    lr: fast\n", "stages.s.lr", "'fast'"),
    ("stages:\n  s:\n    lr: true\n", "stages.s.lr", "True"),
    ("stages:\n  s:\n    betas: [0.9]\n", "stages.s.betas", "[0.9]"),
    ("stages:\n  s:\n    train: projector\n", "stages.s.train", "'projector'"),
    ("stages:\n  s: 3\n", "stages.s", "3"),
    ("model:\n  encoders:\n    image:\n      select_layer: x\n", "model.encoders.image.select_layer", "'x'"),
    ("model:\n  llm:\n    lora:\n      r: [4]\n", "model.llm.lora.r", "[4]"),
    ("model:\n  llm:\n    dtype: null\n", "model.llm.dtype", "None"),
])
def test_wrong_type_names_file_and_key_path(tmp_path, text, key_path, shown):
    path = write(tmp_path, text)
    msg = error_of(load, RecipeConfig, path)
    assert str(path) in msg and key_path in msg and shown in msg


def test_float_accepts_yaml_exponent_strings_and_ints(tmp_path):
    # YAML 1.1 (PyYAML) reads `1e-3` (no dot) as the string "1e-3": it must still be a float.
    path = write(tmp_path, "stages:\n  s:\n    lr: 1e-3\n    weight_decay: 0\n    betas: [0.9, 1]\n")
    assert isinstance(yaml.safe_load(path.read_text())["stages"]["s"]["lr"], str)
    stage = load(RecipeConfig, path).stages["s"]
    assert stage.lr == 1e-3 and type(stage.lr) is float
    assert stage.weight_decay == 0.0 and type(stage.weight_decay) is float
    assert stage.betas == (0.9, 1.0) and all(type(b) is float for b in stage.betas)


def test_defaults_and_optional_fields(tmp_path):
    cfg = load(RecipeConfig, write(tmp_path, "data_dir: null\nstages:\n  s: {}\n"))
    assert cfg == RecipeConfig(stages={"s": StageConfig()})
    assert load(RecipeConfig) == RecipeConfig()
    assert load(RecipeConfig, write(tmp_path, "", "empty.yaml")) == RecipeConfig()


def test_yaml_file_errors(tmp_path):
    bad = write(tmp_path, "train: [unclosed\n", "bad.yaml")
    assert str(bad) in error_of(load_yaml, bad)
    lst = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    assert str(lst) in error_of(load_yaml, lst)


# --- overrides --------------------------------------------------------------------------


def _yaml_value(v):
    # Overrides are YAML text; whether they are parsed when split or when the target field's
    # type is known, `a.b=1` must mean the YAML value 1.
    return yaml.safe_load(v) if isinstance(v, str) else v


def test_parse_overrides_nests_dotted_keys():
    out = parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]", "e.f.g=true", "h=c=d"])
    assert set(out) == {"a", "d", "e", "h"}
    assert set(out["a"]) == {"b", "c"} and set(out["e"]) == {"f"} and set(out["e"]["f"]) == {"g"}
    assert _yaml_value(out["a"]["b"]) == 1
    assert _yaml_value(out["a"]["c"]) == "x"
    assert _yaml_value(out["d"]) == [1, 2]
    assert _yaml_value(out["e"]["f"]["g"]) is True
    assert out["h"] == "c=d"  # only the first '=' separates key from value
    assert parse_overrides([]) == {}


def test_parse_overrides_later_wins_and_merges():
    out = parse_overrides(["a.b=1", "a.c=2", "a.b=3"])
    assert _yaml_value(out["a"]["b"]) == 3 and _yaml_value(out["a"]["c"]) == 2


def test_parse_overrides_needs_equals():
    msg = error_of(parse_overrides, ["train.lr"])
    assert "'train.lr'" in msg and "key.path=value" in msg


def test_overrides_are_typed_by_the_field(tmp_path):
    path = write(tmp_path, "train:\n  max_length: 100\nstages:\n  s:\n    lr: 1.0e-3\n")
    cfg = load(RecipeConfig, path, ["train.max_length=64", "stages.s.lr=2e-4",
                                    "stages.s.betas=[0.8, 0.9]", "stages.s.train=[projector, llm]",
                                    "stages.t.max_steps=5", "data_dir=/data/x",
                                    "model.llm.arch.hidden_size=32"])
    assert cfg.train.max_length == 64
    assert cfg.stages["s"].lr == 2e-4 and type(cfg.stages["s"].lr) is float
    assert cfg.stages["s"].betas == (0.8, 0.9)
    assert cfg.stages["s"].train == ["projector", "llm"]
    assert cfg.stages["t"] == StageConfig(max_steps=5)
    assert cfg.data_dir == "/data/x"
    assert cfg.model.llm.arch == {"hidden_size": 32}


def test_override_with_wrong_type_or_unknown_key_is_an_error(tmp_path):
    path = write(tmp_path, "train:\n  seed: 1\n")
    msg = error_of(load, RecipeConfig, path, ["train.max_length=long"])
    assert "train.max_length" in msg and "long" in msg
    msg = error_of(load, RecipeConfig, path, ["train.sed=3"])
    assert "'sed'" in msg and "train" in msg


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    out = merge(base, {"a": {"b": 5}, "d": [2], "e": 3})
    assert out == {"a": {"b": 5, "c": 2}, "d": [2], "e": 3}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


# --- the packaged recipe config ---------------------------------------------------------


def test_load_recipe_config_tiny_expands_preset():
    from mmtune.recipes.common import CONFIG_DIR, load_recipe_config

    cfg = load_recipe_config("llava", "tiny")
    assert isinstance(cfg, RecipeConfig)
    raw = load_yaml(CONFIG_DIR / "llava" / "tiny.yaml")
    assert raw["model"] == {"preset": "tiny-llava"}
    # The preset's fields were filled in: a 4-layer Llama, a CLIP tower, the synthetic tokenizer.
    assert cfg.model.llm.arch["model_type"] == "llama"
    assert cfg.model.llm.arch["num_hidden_layers"] == 4
    assert cfg.model.encoders["image"].type == "hf_clip"
    assert cfg.model.projectors["image"].type == "mlp2x_gelu"
    assert cfg.model.tokenizer.type == "synthetic"
    # The file's own values.
    assert set(cfg.stages) == {"pretrain", "finetune"}
    assert cfg.stages["pretrain"].task == "caption"
    assert cfg.stages["pretrain"].chat_template == "plain"
    assert cfg.stages["finetune"].train == ["projector", "llm"]
    assert cfg.stages["finetune"].betas == (0.9, 0.98)
    assert cfg.train.max_length == raw["train"]["max_length"]


def test_load_recipe_config_overrides():
    from mmtune.recipes.common import load_recipe_config

    base = load_recipe_config("llava", "tiny")
    cfg = load_recipe_config("llava", "tiny", ["stages.finetune.lr=2e-4", "train.max_length=64",
                                               "model.llm.arch.hidden_size=128"])
    assert cfg.stages["finetune"].lr == 2e-4
    assert cfg.train.max_length == 64
    # An override inside the preset's fields replaces that field only.
    assert cfg.model.llm.arch == {**base.model.llm.arch, "hidden_size": 128}
    assert cfg.stages["pretrain"] == base.stages["pretrain"]


@pytest.mark.parametrize("override, path_part, key", [
    ("stages.pretrain.lrr=1", "stages.pretrain", "'lrr'"),
    ("train.max_lenght=64", "train", "'max_lenght'"),
    ("model.llm.archh=1", "model.llm", "'archh'"),
])
def test_load_recipe_config_unknown_override_is_an_error(override, path_part, key):
    from mmtune.recipes.common import load_recipe_config

    msg = error_of(load_recipe_config, "llava", "tiny", [override])
    assert "tiny.yaml" in msg and path_part in msg and key in msg


def test_load_recipe_config_unknown_name():
    from mmtune.recipes.common import load_recipe_config

    with pytest.raises(FileNotFoundError, match="tiny"):
        load_recipe_config("llava", "no-such-config")


# --- saving -----------------------------------------------------------------------------


def test_save_yaml_round_trips_exactly(tmp_path):
    from mmtune.recipes.common import load_recipe_config

    cfg = load_recipe_config("llava", "tiny", ["stages.finetune.lr=2e-4", "data_dir=/d",
                                               "eval.separate_splits=[a, b]"])
    path = tmp_path / "saved.yaml"
    save_yaml(cfg, path)
    again = from_dict(RecipeConfig, load_yaml(path), str(path))
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert again.stages["finetune"].betas == (0.9, 0.98)  # tuples come back as tuples
    assert list(again.stages) == list(cfg.stages)  # stage order is run order
    # A saved config is a complete, explicit file: loading it through `load` gives the same.
    assert load(RecipeConfig, path) == cfg


def test_save_yaml_round_trips_non_default_values(tmp_path):
    cfg = RecipeConfig(data_dir="x", train=TrainConfig(seed=3, mixed_precision="no"),
                       stages={"b": StageConfig(lr=1e-5, betas=(0.5, 0.6), chat_template="chatml"),
                               "a": StageConfig(train=["llm", "encoder"])})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, llm=dataclasses.replace(cfg.model.llm, quantize="nf4",
                                           arch={"model_type": "llama", "rope": {"theta": 1e4}})))
    path = tmp_path / "c.yaml"
    save_yaml(cfg, path)
    assert from_dict(RecipeConfig, load_yaml(path)) == cfg
    assert list(load_yaml(path)["stages"]) == ["b", "a"]
