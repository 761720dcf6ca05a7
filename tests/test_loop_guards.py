"""The loop's guards: a planted pickle is refused, not run; a non-finite loss stops the run (or
skips the update, within a budget) and saves no model; configs are range-checked at load time;
run control: epochs, the max_steps shorthand, named schedules, --stage without its start."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import mmtune.recipes  # noqa: F401  (fills RECIPES)
from mmtune.cli import main as cli
from mmtune.config import ConfigError, StageConfig
from mmtune.recipes.common import load_recipe_config
from mmtune.recipes.sft import main as sft
from mmtune.synth import text
from mmtune.train.checkpoint import CheckpointError
from mmtune.train.loop import make_scheduler
from mmtune.train.stage import NonFiniteError

TINY = ["model.llm.arch.hidden_size=32", "model.llm.arch.intermediate_size=64",
        "model.llm.arch.num_hidden_layers=2", "model.llm.arch.num_attention_heads=2",
        "model.llm.arch.num_key_value_heads=2", "train.mixed_precision=no", "stages.sft.batch_size=4",
        "train.log_every=1", "eval.limit=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text")
    text.generate(out, n_train=32, n_test=4, seed=0)
    return out


def cfg(data: Path, *extra: str):
    return load_recipe_config("sft", "tiny", [f"data_dir={data}", *TINY, *extra])


class Planted:
    """Unpickling this writes a file: proof that loading ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_planted_pickle_is_refused_not_run(data, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    sft(cfg(data, "max_steps=4", "train.save_every=2"), run, evaluate=False, stop_after=3)
    with open(run / "sft" / "checkpoint-2" / "optimizer.pt", "wb") as f:
        pickle.dump({"state": Planted(str(marker)), "param_groups": []}, f)
    with pytest.raises(CheckpointError, match="optimizer.pt: refused"):
        sft(cfg(data, "max_steps=4", "train.save_every=2"), run, evaluate=False)
    assert not marker.exists()


def test_nonfinite_loss_stops_naming_stage_step_and_records(data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"stage 'sft' step \d+: non-finite .* records on process 0: \['"):
        sft(cfg(data, "max_steps=6", "stages.sft.lr=1e30", "stages.sft.warmup_steps=0"), run)
    assert not (run / "model").exists() and not list((run / "sft").glob("checkpoint-*"))


def test_nonfinite_skip_counts_and_stops_past_the_budget(data, tmp_path):
    over = ["max_steps=6", "stages.sft.lr=1e30", "stages.sft.warmup_steps=0", "train.on_nonfinite=skip"]
    with pytest.raises(NonFiniteError, match="more than train.max_nonfinite_steps=2"):
        sft(cfg(data, *over, "train.max_nonfinite_steps=2"), tmp_path / "a")
    summary = sft(cfg(data, *over, "train.max_nonfinite_steps=6"), tmp_path / "b", evaluate=False)
    stage = summary["stages"]["sft"]
    assert 1 <= stage["nonfinite_skipped"] <= 6 and stage["steps"] == 6


@pytest.mark.parametrize("override, key", [
    ("stages.sft.max_steps=0", "stages.sft.max_steps: must be >= 1"),
    ("stages.sft.batch_size=-3", "stages.sft.batch_size: must be >= 1"),
    ("stages.sft.grad_accum=0", "stages.sft.grad_accum: must be >= 1"),
    ("stages.sft.lr=0", "stages.sft.lr: must be > 0"),
    ("train.max_length=0", "train.max_length: must be >= 1"),
    ("train.log_every=0", "train.log_every: must be >= 1"),
    ("train.save_every=-1", "train.save_every: must be >= 0"),
    ("max_steps=-5", "max_steps: must be >= 1"),
    ("train.mixed_precision=fp8", "train.mixed_precision: 'fp8' is not one of"),
])
def test_out_of_range_values_name_the_key_at_load_time(data, override, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        cfg(data, override)


def test_user_errors_are_one_line_with_exit_2(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["train", "nope", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unknown recipe 'nope'; known: " in err and "llava" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        cli(["train", "sft", "--config", "nope", "--output-dir", str(tmp_path)])
    assert "is neither a YAML file nor one of sft's packaged configs" in capsys.readouterr().err


def test_epochs_replace_max_steps_and_the_shorthand_sets_every_stage(data, tmp_path):
    # 32 records, batch 4: 8 steps an epoch.
    summary = sft(cfg(data, "epochs=1.5"), tmp_path / "run", evaluate=False)
    assert summary["stages"]["sft"]["steps"] == 12
    c = load_recipe_config("llava", "tiny", ["max_steps=5"])
    assert {s.max_steps for s in c.stages.values()} == {5}


@pytest.mark.parametrize("schedule, at_end", [("cosine", 0.1), ("linear", 0.0), ("constant", 1.0)])
def test_named_schedules_after_warmup(schedule, at_end):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, StageConfig(lr=1.0, warmup_steps=4, max_steps=20, lr_schedule=schedule))
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert sched.get_last_lr()[0] == pytest.approx(at_end, abs=1e-6)


def test_a_stage_without_the_previous_model_is_an_error_unless_fresh(tmp_path, capsys):
    data = tmp_path / "shapes"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", "8", "--n-test", "4"])
    args = ["train", "llava", "--output-dir", str(tmp_path / "run"), "--data", str(data), "--stage", "finetune"]
    with pytest.raises(SystemExit):
        cli(args)
    assert f"{tmp_path / 'run' / 'pretrain' / 'model'} does not exist" in capsys.readouterr().err
    cli([*args, "--fresh", "max_steps=1", "stages.finetune.batch_size=4", "eval.limit=2",
         "train.mixed_precision=no"])
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["stages"]["finetune"]["steps"] == 1
