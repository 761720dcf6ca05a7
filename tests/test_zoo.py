"""Presets against the published LLaVA-1.5 checkpoints' sizes, counted on the meta device."""
from __future__ import annotations

import json
import time

import pytest
import torch

import mmtune  # noqa: F401  (fills the registries)
from mmtune.cli import main
from mmtune.registry import ENCODERS, PROJECTORS
from mmtune.zoo import count_parameters, preset_config

# Published sizes. LLM: Llama-2 / Vicuna v1.5 (32000 vocab, untied head). Vision tower:
# CLIPVisionModel ViT-L/14-336 (incl. post_layernorm). Projector: mlp2x_gelu, 1024 -> D -> D.
PUBLISHED = {
    "llava-1.5-7b": {"llm": 6_738_415_616, "encoder.image": 303_507_456,
                     "projector.image": 20_979_712, "total": 7_062_902_784},
    "llava-1.5-13b": {"llm": 13_015_864_320, "encoder.image": 303_507_456,
                      "projector.image": 31_467_520, "total": 13_350_839_296},
}


def llama_params(hidden: int, inter: int, layers: int, vocab: int = 32000) -> int:
    """Closed form for Llama-2 (MHA, untied head): embed + head + layers x (attn + mlp + 2 norms) + norm."""
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden


def clip_vit_params(hidden: int, inter: int, layers: int, image: int, patch: int) -> int:
    """CLIPVisionModel: patch conv (no bias), CLS, positions, pre-LN, layers, post-LN."""
    positions = (image // patch) ** 2 + 1
    embeddings = 3 * patch * patch * hidden + hidden + positions * hidden
    per_layer = 4 * (hidden * hidden + hidden) + (hidden * inter + inter) + (inter * hidden + hidden) + 4 * hidden
    return embeddings + 2 * hidden + layers * per_layer + 2 * hidden


def test_closed_forms_match_the_published_numbers():
    """The reference numbers themselves, derived from the published configs' dimensions."""
    assert llama_params(4096, 11008, 32) == PUBLISHED["llava-1.5-7b"]["llm"]
    assert llama_params(5120, 13824, 40) == PUBLISHED["llava-1.5-13b"]["llm"]
    assert clip_vit_params(1024, 4096, 24, 336, 14) == 303_507_456
    assert (1024 * 4096 + 4096) + (4096 * 4096 + 4096) == PUBLISHED["llava-1.5-7b"]["projector.image"]
    assert (1024 * 5120 + 5120) + (5120 * 5120 + 5120) == PUBLISHED["llava-1.5-13b"]["projector.image"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_counts_match_published_checkpoints(name):
    counts = count_parameters(preset_config(name))
    assert counts == PUBLISHED[name], f"{name}: {counts} != published {PUBLISHED[name]}"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_dimensions_match_published_configs(name):
    """If a count is off, this names the dimension that is."""
    cfg = preset_config(name)
    hidden, inter, layers = {"llava-1.5-7b": (4096, 11008, 32), "llava-1.5-13b": (5120, 13824, 40)}[name]
    arch = cfg.llm.arch
    assert arch["model_type"] == "llama"
    assert (arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]) == (hidden, inter, layers)
    assert arch["num_attention_heads"] == arch["num_key_value_heads"] == layers  # 32 / 40 heads, MHA
    assert arch["vocab_size"] == 32000 and arch["tie_word_embeddings"] is False
    enc = cfg.encoders["image"]
    assert enc.type == "hf_clip" and enc.select_layer == -2 and enc.drop_cls is True
    a = enc.arch
    assert (a["hidden_size"], a["intermediate_size"], a["num_hidden_layers"], a["num_attention_heads"],
            a["patch_size"], a["image_size"]) == (1024, 4096, 24, 16, 14, 336)
    assert cfg.projectors["image"].type == "mlp2x_gelu"


def test_counting_is_fast():
    """7B parameters counted in seconds: nothing is initialised or allocated."""
    t0 = time.perf_counter()
    counts = count_parameters(preset_config("llava-1.5-7b"))
    elapsed = time.perf_counter() - t0
    assert counts["total"] == PUBLISHED["llava-1.5-7b"]["total"]
    assert elapsed < 30, f"counting took {elapsed:.1f}s: weights are being materialised"


def test_counting_never_touches_real_memory(monkeypatch):
    """Spy on the builders count_parameters calls: what they return holds only meta tensors."""
    import mmtune.llm as llm_mod

    seen = []
    real_load = llm_mod.load_llm

    def spy_load(cfg):
        m = real_load(cfg)
        seen.append(m)
        return m

    def spy_registry(registry):
        real = registry.get

        def get(name):
            builder = real(name)

            def wrapped(*args, **kwargs):
                m = builder(*args, **kwargs)
                seen.append(m)
                return m

            return wrapped

        return get

    monkeypatch.setattr(llm_mod, "load_llm", spy_load)
    monkeypatch.setattr(ENCODERS, "get", spy_registry(ENCODERS))
    monkeypatch.setattr(PROJECTORS, "get", spy_registry(PROJECTORS))
    count_parameters(preset_config("llava-1.5-13b"))
    assert len(seen) == 3  # llm, encoder, projector
    for module in seen:
        assert {p.device.type for p in module.parameters()} == {"meta"}


def test_tiny_preset_builds_for_real():
    counts = count_parameters(preset_config("tiny-llava"))
    assert counts["total"] == counts["llm"] + counts["encoder.image"] + counts["projector.image"]
    assert 0 < counts["total"] < 10_000_000


def test_cli_zoo_json(capsys):
    main(["zoo", "--json"])
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert {"llava-1.5-7b", "llava-1.5-13b", "tiny-llava"} <= set(by_name)
    for name, expected in PUBLISHED.items():
        assert {k: by_name[name][k] for k in expected} == expected
    tiny = by_name["tiny-llava"]
    assert tiny["total"] == count_parameters(preset_config("tiny-llava"))["total"]


def test_cli_zoo_table(capsys):
    main(["zoo"])
    out = capsys.readouterr().out
    assert "llava-1.5-7b" in out and "7,062,902,784" in out
    assert "llava-1.5-13b" in out and "13,350,839,296" in out
    assert "tiny-llava" in out
