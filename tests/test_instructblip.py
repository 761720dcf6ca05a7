"""InstructBLIP wiring: instructions reach the Q-Former, only the Q-Former trains, the saved
run reloads, the Q-Former also serves the LLaVA recipe, the zoo matches transformers' models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL, tiny_model_dict

from mmtune.data.collate import collate
from mmtune.data.text.instructions import medium_instructions, split_turns
from mmtune.data.formats.records import parse_record
from mmtune.synth.shapes import generate
from mmtune.model import MultimodalLM
from mmtune.recipes.common import example_builder, load_recipe_config
from mmtune.registry import RECIPES

QFORMER = {"type": "qformer", "instruction_tokenizer": {"type": "synthetic"},
           "options": {"num_queries": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
                       "intermediate_size": 64, "cross_attention_frequency": 1,
                       "vocab_size": 64, "max_position_embeddings": 32, "dropout": 0.0}}
SMALL_QFORMER = ["model.projectors.image.options.hidden_size=32",
                 "model.projectors.image.options.intermediate_size=64",
                 "model.projectors.image.options.num_heads=2", "model.projectors.image.options.num_queries=4"]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate(out, n_train=24, n_test=8, seed=5, image_size=32)
    return out


@pytest.fixture
def sample_image(shapes_dir) -> Path:
    return sorted((shapes_dir / "images").glob("*.png"))[0]


def record(question: str, image: Path, answer: str = "red") -> object:
    return parse_record({"id": "r", "messages": [{"role": "user", "content": f"<image>\n{question}"},
                                                 {"role": "assistant", "content": answer}],
                         "images": [str(image)]}, "test.jsonl:1", Path("."))


def qformer_model(seed: int = 0) -> MultimodalLM:
    from mmtune.config import ModelConfig, from_dict

    torch.manual_seed(seed)
    return MultimodalLM.build(from_dict(ModelConfig, tiny_model_dict(projectors={"image": QFORMER}))).eval()


def test_instructions_per_medium_and_single_turn_split(tmp_path):
    messages = [{"role": "user", "content": "<image>\nwhat colour is the circle ?"},
                {"role": "assistant", "content": "red"},
                {"role": "user", "content": "how many shapes are there ?"},
                {"role": "assistant", "content": "two"}]
    assert medium_instructions(messages, "image") == ["what colour is the circle ?"]
    r = parse_record({"id": "x", "messages": messages, "images": ["a.png"]}, "f.jsonl:3", tmp_path)
    turns = split_turns(r)
    assert [t.messages for t in turns] == [
        [{"role": "user", "content": "<image>\nwhat colour is the circle ?"}, {"role": "assistant", "content": "red"}],
        [{"role": "user", "content": "<image>\nhow many shapes are there ?"}, {"role": "assistant", "content": "two"}]]
    assert [t.media for t in turns] == [r.media, r.media] and turns[1].id == "x_t1"
    assert medium_instructions(turns[1].messages, "image") == ["how many shapes are there ?"]


def test_instruction_reaches_the_qformer_and_changes_its_tokens(tmp_path, sample_image):
    model = qformer_model()
    cfg = load_recipe_config("instructblip", "tiny", SMALL)
    enc = example_builder(model, cfg, None)
    ex_a = enc.encode(record("what colour is the circle ?", sample_image))
    ex_b = enc.encode(record("how many shapes are there ?", sample_image))
    batch = collate([ex_a, ex_b], model.tokenizer.pad_token_id)
    instr = batch.instructions["image"]
    tok = model.instruction_tokenizers["image"]
    assert instr.input_ids[0, :instr.attention_mask[0].sum()].tolist() == tok("what colour is the circle ?")["input_ids"]
    assert instr.input_ids.shape[0] == batch.media["image"].shape[0] == 2
    with torch.no_grad():
        feats = model.encode_media("image", batch.media["image"], instr)
    assert feats.shape == (2, 4, 32)
    # Same image, different questions -> different visual tokens: the instruction is read.
    assert not torch.allclose(feats[0], feats[1], atol=1e-4)
    assert model.tokens_per_medium("image") == 4 and (batch.input_ids == model.placeholder_ids["image"]).sum() == 8
    logits = model(batch)
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="reads instructions"):
        model.encode_media("image", batch.media["image"])


def test_trains_only_the_qformer_then_reloads(tmp_path, shapes_dir):
    """The paper's setting: encoder and LLM frozen, the Q-Former alone trains."""
    cfg = load_recipe_config("instructblip", "tiny", SMALL + SMALL_QFORMER + [
        f"data_dir={shapes_dir}", "stages.instruct.max_steps=3", "stages.instruct.batch_size=4",
        "stages.instruct.train=[projector]", "model.llm.lora.r=0", "eval.limit=4", "eval.batch_size=4"])
    run = tmp_path / "run"
    summary = RECIPES.get("instructblip")(cfg, run)
    rows = {r["part"]: r for r in summary["stages"]["instruct"]["parameters"]}
    assert rows["projector.image"]["trainable"] == rows["projector.image"]["params"] > 0
    assert rows["encoder.image"]["trainable"] == 0 and rows["llm"]["trainable"] == 0
    assert (run / "eval.json").exists() and (run / "metrics.jsonl").exists()
    # The reloaded model reads instructions with its saved tokenizer and gives the same logits.
    saved = json.loads((run / "model" / "mmtune_config.json").read_text())
    assert saved["projectors"]["image"]["instruction_tokenizer"]["path"] == "instruction_tokenizers/image"
    from mmtune.recipes.common import load_run

    cfg2, model2 = load_run(run)
    assert "image" in model2.instruction_tokenizers
    first = json.loads((shapes_dir / "test.jsonl").read_text().splitlines()[0])
    rec = parse_record(first, "t", shapes_dir)
    batch = collate([example_builder(model2, cfg2, None).encode(rec)], model2.tokenizer.pad_token_id)
    assert batch.instructions["image"].input_ids.shape[0] == 1
    assert torch.isfinite(model2.eval()(batch)).all()


def test_lora_on_the_llm_is_the_only_llm_part_trained(tmp_path, shapes_dir):
    cfg = load_recipe_config("instructblip", "tiny", SMALL + SMALL_QFORMER + [
        f"data_dir={shapes_dir}", "stages.instruct.max_steps=2", "stages.instruct.batch_size=4"])
    summary = RECIPES.get("instructblip")(cfg, tmp_path / "run", evaluate=False)
    rows = {r["part"]: r for r in summary["stages"]["instruct"]["parameters"]}
    base = MultimodalLM.build(cfg.model).llm  # no adapters until a stage trains the LLM
    # Everything trainable in the LLM is adapter weight; the base weights are all frozen.
    assert rows["llm"]["trainable"] == rows["llm"]["params"] - sum(p.numel() for p in base.parameters()) > 0


def test_config_errors_name_the_field(shapes_dir, tmp_path):
    cfg = load_recipe_config("instructblip", "tiny", SMALL + [f"data_dir={shapes_dir}",
                                                              "stages.instruct.train=[projector, encoder]"])
    with pytest.raises(ValueError, match="stages.instruct.train"):
        RECIPES.get("instructblip")(cfg, tmp_path / "run")
    cfg = load_recipe_config("instructblip", "tiny", ["model.projectors.image.instruction_tokenizer=null"])
    with pytest.raises(ValueError, match="model.projectors.image"):
        RECIPES.get("instructblip")(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="stages.instruct.task"):  # now when the config loads
        load_recipe_config("instructblip", "tiny", SMALL + [f"data_dir={shapes_dir}", "stages.instruct.task=turns"])


def test_llava_recipe_takes_a_qformer_projector(tmp_path, shapes_dir):
    """`projector: qformer` in the LLaVA recipe: the collator asks the model for the token count."""
    cfg = load_recipe_config("llava", "tiny", SMALL + [
        f"data_dir={shapes_dir}", "model.projectors.image.type=qformer",
        "model.projectors.image.options={num_queries: 6, hidden_size: 32, num_layers: 1, num_heads: 2, "
        "intermediate_size: 64, instruction_aware: false}",
        "stages.pretrain.max_steps=2", "stages.finetune.max_steps=2", "stages.pretrain.batch_size=4",
        "stages.finetune.batch_size=4", "eval.limit=4"])
    summary = RECIPES.get("llava")(cfg, tmp_path / "run")
    assert summary["stages"]["finetune"]["steps"] == 2
    model = MultimodalLM.from_pretrained(tmp_path / "run" / "model")
    assert model.tokens_per_medium("image") == 6 and model.instruction_tokenizers == {}
