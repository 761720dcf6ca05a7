"""The original LLaVA repo's layout and its stage-1 projector file import with llava-hf's logits."""
from __future__ import annotations

import pytest
import torch
from released import llava_hf, llava_original
from safetensors.torch import save_file
from test_interop_llava import hf_inputs, mmtune_logits

from mmtune.model import MultimodalLM


@pytest.mark.parametrize("tower_in_checkpoint", [False, True], ids=["frozen-tower", "trained-tower"])
def test_original_layout_imports_with_the_same_logits(tmp_path, tower_in_checkpoint):
    hf = llava_hf(tmp_path / "hf", "clip")
    llava_original(tmp_path / "orig", hf, tmp_path / "clip", tower_in_checkpoint)
    inputs, images = hf_inputs(tmp_path / "hf")
    with torch.no_grad():
        expected = hf(**inputs).logits
    model = MultimodalLM.from_hf(tmp_path / "orig").eval()
    assert model.config.tokenizer.chat_template == "llava_v1"  # LLaVA-1.5's conversation template
    torch.testing.assert_close(mmtune_logits(model, inputs, images), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_stage1_projector_file_is_loaded_into_a_built_model(tmp_path, tiny_config, suffix):
    hf = llava_hf(tmp_path / "hf", "clip")
    projector = llava_original(tmp_path / "orig", hf, tmp_path / "clip")
    path = tmp_path / f"mm_projector{suffix}"
    torch.save(projector, path) if suffix == ".bin" else save_file(projector, path)
    cfg = tiny_config(init_from=str(path))
    model = MultimodalLM.build(cfg)
    assert model.config.init_from is None  # the saved model is itself, not a pointer back
    net = model.projectors["image"].net
    assert torch.equal(net[0].weight, projector["model.mm_projector.0.weight"])
    assert torch.equal(net[2].bias, projector["model.mm_projector.2.bias"])


def test_projector_file_is_never_unpickled(tmp_path, tiny_config):
    path = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.0.weight": torch.zeros(2), "code": print}, path)
    with pytest.raises(ValueError, match="not a weights-only torch file"):
        MultimodalLM.build(tiny_config(init_from=str(path)))
    save_file({"model.mm_projector.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="do not match model.projectors.image"):
        MultimodalLM.build(tiny_config(init_from=str(tmp_path / "bad.safetensors")))


def test_bad_init_from_is_a_one_line_error_naming_the_file(tmp_path, tiny_config):
    import json

    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder nor a projector file"):
        MultimodalLM.build(tiny_config(init_from=str(tmp_path / "missing")))
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"gpt/config.json: model_type 'gpt2' is not one mmtune imports"):
        MultimodalLM.from_hf(tmp_path / "gpt")
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig" / "config.json").write_text(json.dumps({
        "model_type": "llava_llama", "mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    with pytest.raises(ValueError, match="'openai/clip-vit-large-patch14-336' is not a local folder"):
        MultimodalLM.from_hf(tmp_path / "orig")
