"""The shipped launch configs (mmtune/recipes/launch/): accelerate reads every YAML, nested keys
are accelerate launch options, DeepSpeed JSONs agree with their YAMLs, and the FSDP offload
file really drives mmtune's engine in 2 CPU processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser

from mmtune.recipes.launch import HERE, STRATEGY_FILES, path
from mmtune.train.engine import ShardConfig, shard_config_from_launch

from conftest import free_port

KINDS = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "fsdp_offload": "FSDP", "zero2": "DEEPSPEED",
         "zero3": "DEEPSPEED", "zero3_offload": "DEEPSPEED", "multinode": "FSDP"}


def launch_options() -> set[str]:
    return {opt[2:] for action in launch_command_parser()._actions for opt in action.option_strings
            if opt.startswith("--")}


@pytest.mark.parametrize("name", sorted(STRATEGY_FILES))
def test_accelerate_reads_config(name):
    cfg = ClusterConfig.from_yaml_file(path(name))  # unknown top-level keys raise
    assert cfg.distributed_type.value == KINDS[name]
    assert cfg.mixed_precision == "bf16"
    raw = yaml.safe_load(path(name).read_text())
    nested = {**raw.get("fsdp_config", {}), **raw.get("deepspeed_config", {})}
    assert set(nested) <= launch_options(), set(nested) - launch_options()
    if KINDS[name] == "FSDP":
        assert raw["fsdp_config"]["fsdp_version"] == 2  # mmtune's engine is FSDP2
        assert raw["fsdp_config"]["fsdp_offload_params"] == (name == "fsdp_offload")
    if name == "multinode":
        assert cfg.num_machines > 1 and cfg.main_process_ip and cfg.num_processes % cfg.num_machines == 0


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_json_matches_yaml(name):
    ds = json.loads((HERE / f"{name}.json").read_text())
    inline = yaml.safe_load(path(name).read_text())["deepspeed_config"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == inline["zero_stage"]
    assert zero.get("offload_optimizer", {}).get("device", "none") == inline["offload_optimizer_device"]
    assert zero.get("offload_param", {}).get("device", "none") == inline["offload_param_device"]
    # accelerate fills these "auto"s from model.config.hidden_size, which MultimodalLM lacks.
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        assert zero.get(key, 0) != "auto", key
    # mmtune's loop builds the optimizer and schedule; accelerate refuses them in both places.
    assert "optimizer" not in ds and "scheduler" not in ds
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"]  # one consolidated final save


def test_shard_config_from_launch_env():
    assert shard_config_from_launch({}) is None
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "ACCELERATE_MIXED_PRECISION": "bf16",
           "FSDP_OFFLOAD_PARAMS": "true", "FSDP_RESHARD_AFTER_FORWARD": "false"}
    assert shard_config_from_launch(env) == ShardConfig("bf16", cpu_offload=True, reshard_after_forward=False)
    with pytest.raises(ValueError, match="fsdp_version"):
        shard_config_from_launch({**env, "FSDP_VERSION": "1"})


def test_fsdp_offload_config_drives_engine_on_cpu(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    out = tmp_path / "result.json"
    worker = Path(__file__).parent / "fsdp_launch_worker.py"
    cmd = [accelerate, "launch", "--config_file", str(path("fsdp_offload")), "--num_processes", "2",
           "--main_process_port", str(free_port()), str(worker), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"] == {"mixed_precision": "bf16", "cpu_offload": True, "reshard_after_forward": True}
    assert result["all_dtensor"] and result["devices"] == ["cpu"]
    assert result["master_dtype"] == ["torch.float32"] and result["logits_dtype"] == "torch.bfloat16"
    assert result["loss"] == result["loss"] and result["loss"] > 0  # finite, not NaN
