"""`mmtune data convert` (installed-package converters), `--data FILE`, `mmtune data inspect`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from types import SimpleNamespace

from mmtune.cli import main as cli
from mmtune.config import StageConfig
from mmtune.recipes.common import stage_data

from conftest import SMALL

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_convert_llava_to_a_folder_with_per_source_counts(tmp_path, capsys):
    root = FIXTURES / "llava_instruct"
    out = tmp_path / "mine"
    cli(["data", "convert", "llava", str(root / "llava_v1_5_mix665k.json"), "--out", str(out), "--check-media"])
    printed = capsys.readouterr().out
    records = read(out / "train.jsonl")
    source = json.loads((root / "llava_v1_5_mix665k.json").read_text())
    assert len(records) == len(source)
    assert f"read {len(source)} items" in printed and f"wrote {len(records)} records to {out / 'train.jsonl'}" in printed
    assert "  coco: " in printed and "  gqa: " in printed and "  text-only: " in printed
    assert "missing images: 0" in printed
    for r in records:  # media root defaults to the input's folder; paths follow the output file
        for p in r.get("images", []):
            assert (out / p).is_file(), p


def test_convert_alpaca_counts_and_limit(tmp_path, capsys):
    cli(["data", "convert", "alpaca", str(FIXTURES / "alpaca" / "alpaca_data.json"), "--out", str(tmp_path / "a"),
         "--limit", "2"])
    printed = capsys.readouterr().out
    assert read(tmp_path / "a" / "train.jsonl")[0]["id"] == "alpaca-0"
    assert "read 2 items" in printed and "skipped 0 items" in printed and "wrote 2 records" in printed


def test_convert_missing_input_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["data", "convert", "dolly", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "nope.jsonl is not a file" in capsys.readouterr().err


def test_data_may_be_one_jsonl_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "mine.jsonl").write_text("{}\n")
    assert stage_data(SimpleNamespace(data_dir=str(folder / "mine.jsonl")), StageConfig()) == folder / "mine.jsonl"
    assert stage_data(SimpleNamespace(data_dir=str(folder)), StageConfig()) == folder / "train.jsonl"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    data = tmp_path_factory.mktemp("inspect") / "shapes"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", "8", "--n-test", "4"])
    with (data / "train.jsonl").open("a") as f:
        f.write('{"id": "broken"\n')
        f.write(json.dumps({"id": "gone", "messages": [{"role": "user", "content": "<image>\nwhat ?"},
                                                     {"role": "assistant", "content": "red"}],
                            "images": ["images/does_not_exist.png"]}) + "\n")
    return data


def test_train_with_data_as_a_single_file(shapes, tmp_path):
    run = tmp_path / "run"
    cli(["train", "llava", "--config", "tiny", "--output-dir", str(run), "--data", str(shapes / "captions.jsonl"),
         *SMALL, "stages.pretrain.max_steps=1", "stages.finetune.max_steps=1", "stages.pretrain.batch_size=4",
         "stages.finetune.batch_size=4"])
    assert (run / "model" / "mmtune_config.json").exists()
    assert not (run / "eval.json").exists()  # no test file beside a single file: no eval


def test_inspect_counts_and_marks_the_loss_tokens(shapes, capsys):
    cli(["data", "inspect", str(shapes), "-n", "1", *SMALL])
    out = capsys.readouterr().out
    assert f"[finetune] {shapes / 'train.jsonl'}: 9 records, 1 bad; media: image 9 (1 missing)" in out
    assert "train.jsonl:9: malformed JSON" in out
    assert "[pretrain]" in out and "<image>x4 " in out  # 32 px images, 2x2 merge: 4 tokens
    first = json.loads((shapes / "train.jsonl").read_text().splitlines()[0])["messages"]
    answer = next(m["content"] for m in first if m["role"] == "assistant")
    assert f"ASSISTANT :[ {answer} </s>]" in out  # the answer and end-of-turn carry loss, nothing else
    prompt = next(m["content"] for m in first if m["role"] == "user").replace("<image>\n", "")
    assert f"[{prompt}" not in out and "[ USER" not in out
