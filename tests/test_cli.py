"""The `mmtune` command line: synth, train (with overrides and --stage), eval, chat, errors."""
from __future__ import annotations

import json

import pytest

from mmtune.cli import main as cli
from mmtune.config import ConfigError

from conftest import SMALL

QUICK = [*SMALL, "stages.pretrain.max_steps=2", "stages.finetune.max_steps=2",
         "stages.pretrain.batch_size=4", "stages.finetune.batch_size=4", "train.log_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data, run = root / "data", root / "run"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", "24", "--n-test", "12"])
    cli(["train", "llava", "--config", "tiny", "--output-dir", str(run), "--data", str(data), *QUICK])
    return data, run


def test_synth_writes_the_task(trained):
    data, _ = trained
    for name in ("train.jsonl", "captions.jsonl", "test.jsonl", "meta.json"):
        assert (data / name).exists(), name
    assert len((data / "test.jsonl").read_text().splitlines()) == 12


def test_eval_writes_and_prints(trained, capsys):
    data, run = trained
    (run / "eval.json").unlink()
    cli(["eval", str(run), "--data", str(data / "test.jsonl")])
    result = json.loads((run / "eval.json").read_text())
    assert {"accuracy", "blank_media_accuracy", "chance", "by_type", "by_split"} <= set(result)
    assert "with media" in capsys.readouterr().out


def test_chat_answers(trained, capsys):
    data, run = trained
    image = data / "images" / "test_00000.png"
    cli(["chat", str(run), "--image", str(image), "what colour is the shape ?"])
    printed = capsys.readouterr().out.strip()
    from mmtune.cli import answer
    from mmtune.recipes.common import load_run

    cfg, model = load_run(run)
    assert printed == answer(model, cfg, str(image), "what colour is the shape ?")  # greedy: repeatable


def test_single_stage_continues_from_the_previous_stage(trained, tmp_path, capsys):
    data, run = trained
    cli(["train", "llava", "--config", "tiny", "--output-dir", str(run), "--data", str(data),
         "--stage", "finetune", "--no-resume", *QUICK, "stages.finetune.max_steps=3"])
    assert f"starting from {run / 'pretrain' / 'model'}" in capsys.readouterr().out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["stage"] == "finetune" and rows[-1]["step"] == 3


def test_unknown_override_key_is_an_error(trained, tmp_path, capsys):
    data, _ = trained
    with pytest.raises(SystemExit) as exit_:  # a user error: one line, exit 2, no traceback
        cli(["train", "llava", "--config", "tiny", "--output-dir", str(tmp_path), "--data", str(data),
             "stages.finetune.lrr=1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "stages.finetune" in err and "'lrr'" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="lrr"):  # --debug: the exception itself
        cli(["--debug", "train", "llava", "--config", "tiny", "--output-dir", str(tmp_path), "--data", str(data),
             "stages.finetune.lrr=1"])


def test_eval_of_an_empty_dir_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["eval", str(tmp_path)])
    assert exit_.value.code == 2 and "not a run folder" in capsys.readouterr().err


def test_zoo_lists_presets(capsys):
    cli(["zoo"])
    out = capsys.readouterr().out
    assert "llava-1.5-7b" in out and "7,062,902,784" in out and "tiny-llava" in out
