"""`mmtune plan`: the memory arithmetic, the published configs fitting 8 x 80 GB, the command."""
from __future__ import annotations

import argparse
import json

import pytest

from mmtune.cli import main
from mmtune.plan import GiB, Workload, load_any, memory, parse_size, plan
from mmtune.recipes.common import config_path

PUBLISHED = ["llava/llava-1.5-7b", "llava/llava-1.5-13b", "instructblip/instructblip-vicuna-7b",
             "video_llama/video-llama-7b", "sft/llama-2-7b-alpaca", "qlora/llama-2-7b-oasst1",
             "instruct_pix2pix/instruct-pix2pix-sd15"]


def test_state_bytes_per_parameter():
    """Mixed-precision AdamW, everything trained: 16 bytes per parameter in all (ZeRO paper),
    whole under DDP (plus DDP's gradient buckets), divided by N under ZeRO-3 / FSDP."""
    w = Workload("s", params=1000, trainable=1000, frozen_bytes=0, largest_unit=0, compute_bytes=2,
                 activations=0, activations_checkpointed=0, micro_batch=1, seq_len=1)
    state = {s: memory(w, s, 8)["total"] for s in ("ddp", "zero2", "zero3", "fsdp")}
    assert state == {"ddp": 4000 + 8000 + 8000, "zero2": 2000 + (2 + 12) * 1000 / 8,
                     "zero3": 16000 / 8, "fsdp": 16000 / 8}
    assert memory(w, "ddp", 1)["total"] == 16000  # one process: no DDP buckets
    frozen = Workload("s", 1000, 0, frozen_bytes=2000, largest_unit=0, compute_bytes=2,
                      activations=0, activations_checkpointed=0, micro_batch=1, seq_len=1)
    assert memory(frozen, "ddp", 8)["total"] == 2000  # frozen bf16 weights only


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_config_fits_8x80gb(name):
    recipe, config, workloads = load_any(name, None, [])
    result = plan(workloads, 8, parse_size("80GB"))
    assert result["fits"], [(r["stage"], r["strategy"], round(r["total"] / GiB, 1)) for r in result["rows"]]
    for w in workloads:  # the activations grow with the micro-batch: real numbers, not zeros
        assert w.activations > w.activations_checkpointed > 0
    header = config_path(recipe, config).read_text().split("\nmodel:")[0]
    best = result["fits"][0]
    assert f"--config_file mmtune/recipes/launch/{best}.yaml -m mmtune.cli train {recipe}" in header
    assert f"--config {config} " in header


def test_llava_7b_finetune_needs_sharding():
    """7B full finetune: DDP's 16 bytes per parameter alone exceed 80 GB; sharded state fits."""
    _, _, workloads = load_any("llava/llava-1.5-7b", None, [])
    result = plan(workloads, 8, parse_size("80GB"))
    rows = {(r["stage"], r["strategy"]): r for r in result["rows"]}
    assert not rows["finetune", "ddp"]["fits"] and rows["finetune", "fsdp"]["fits"]
    assert rows["finetune", "ddp"]["optimizer"] / GiB == pytest.approx(8 * 6.76e9 / GiB, rel=0.02)


def test_plan_command_json(capsys):
    main(["plan", "qlora/llama-2-7b-oasst1", "--gpus", "8", "--gpu-memory", "80GB", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] == ["ddp"]  # a 4-bit base runs under DDP only
    assert "launch/ddp.yaml" in out["launch"] and "train qlora --config llama-2-7b-oasst1" in out["launch"]


def test_gpu_memory_parsing():
    assert parse_size("80GB") == 80e9 and parse_size("141GiB") == 141 * GiB
    with pytest.raises(argparse.ArgumentTypeError, match="--gpu-memory"):
        parse_size("lots")
