"""Shared tiny fixtures: models small enough to build, run and save in well under a second."""
from __future__ import annotations

import copy

import pytest
import torch

from mmtune.config import ModelConfig, from_dict, merge
from mmtune.data.text.tokenizer import build_word_tokenizer, synthetic_words

torch.set_num_threads(1)  # the test machine is small and shared


def free_port() -> int:
    """A TCP port nobody listens on, for `accelerate launch --main_process_port`: test workers
    run in parallel, and two launches on the default port would join each other."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_vocab_size() -> int:
    return len(build_word_tokenizer(synthetic_words()))


def tiny_llm_arch(vocab_size: int | None = None) -> dict:
    """Llama, hidden 32, 2 layers, 2 heads: ids follow the synthetic tokenizer's specials."""
    return {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "vocab_size": vocab_size or synthetic_vocab_size(), "max_position_embeddings": 256,
            "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}


def tiny_clip_arch() -> dict:
    """CLIP vision tower, hidden 32, 2 layers, 32 px images, 8 px patches: 16 patch tokens."""
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def tiny_siglip_arch() -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def tiny_model_dict(**updates) -> dict:
    """A ModelConfig mapping; `updates` merge in recursively (e.g. llm={"lora": {"r": 4}})."""
    base = {
        "llm": {"arch": tiny_llm_arch()},
        "encoders": {"image": {"type": "hf_clip", "select_layer": -2, "drop_cls": True,
                               "arch": tiny_clip_arch()}},
        "projectors": {"image": {"type": "mlp2x_gelu"}},
        "tokenizer": {"type": "synthetic"},
    }
    return merge(base, copy.deepcopy(updates))


def tiny_model_config(**updates) -> ModelConfig:
    return from_dict(ModelConfig, tiny_model_dict(**updates), "tiny test config")


@pytest.fixture
def tiny_config():
    """Factory: `tiny_config(**updates) -> ModelConfig`."""
    return tiny_model_config


@pytest.fixture
def tiny_model():
    """Factory: `tiny_model(**updates) -> MultimodalLM` (seeded, eval mode)."""
    from mmtune.model import MultimodalLM

    def make(seed: int = 0, **updates):
        torch.manual_seed(seed)
        return MultimodalLM.build(tiny_model_config(**updates)).eval()

    return make


# Overrides that shrink the tiny LLaVA recipe config to a seconds-long model (32-wide, 2 layers,
# 32 px images) for tests of wiring rather than learning.
SMALL = [
    "model.llm.arch.hidden_size=32", "model.llm.arch.intermediate_size=64",
    "model.llm.arch.num_hidden_layers=2", "model.llm.arch.num_attention_heads=2",
    "model.llm.arch.num_key_value_heads=2",
    "model.encoders.image.arch.hidden_size=32", "model.encoders.image.arch.intermediate_size=64",
    "model.encoders.image.arch.num_attention_heads=2", "model.encoders.image.arch.image_size=32",
    "train.mixed_precision=no",
]


def assert_reads_the_medium(result: dict, types: tuple[str, ...], min_accuracy: float = 0.90) -> None:
    """A learning test's verdict on eval.json: held-out accuracy >= `min_accuracy` with the
    medium, within 10 points of chance with it blanked, every question type well above chance."""
    assert result["n"] >= 300
    assert result["accuracy"] >= min_accuracy, result["by_type"]
    assert abs(result["blank_media_accuracy"] - result["chance"]) <= 0.10, result["by_type"]
    for qtype in types:
        assert result["by_type"][qtype]["accuracy"] > result["by_type"][qtype]["chance"] + 0.3, qtype


def tiny_llava_run(root, n_train: int = 16, *overrides: str):
    """Synthesise shapes data in root/data and train the SMALL LLaVA config for a few steps
    into root/run: a real run directory (config, metrics, model) in seconds."""
    from mmtune.cli import main as cli

    data, run = root / "data", root / "run"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", str(n_train), "--n-test", "4"])
    cli(["train", "llava", "--config", "tiny", "--output-dir", str(run), "--data", str(data), *SMALL,
         "stages.pretrain.max_steps=2", "stages.finetune.max_steps=3", "stages.pretrain.batch_size=4",
         "stages.finetune.batch_size=4", "train.log_every=1", *overrides])
    return data, run


def repo_env() -> dict:
    """The environment for a `python -m mmtune.cli` subprocess that imports this checkout."""
    import os
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
