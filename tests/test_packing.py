"""Packing: several examples per row, position ids restarting, no attention across them."""
from __future__ import annotations

import pytest
import torch

from mmtune.data.collate import collate, pack
from mmtune.synth.shapes import generate as generate_shapes
from mmtune.synth.text import generate as generate_text
from mmtune.model import MultimodalLM
from mmtune.recipes.common import load_recipe_config, training_data
from mmtune.train.run import seed_everything
from mmtune.train.loop import loss_sum

from conftest import SMALL

TINY_LM = ["model.llm.arch.hidden_size=32", "model.llm.arch.intermediate_size=64",
           "model.llm.arch.num_hidden_layers=2", "model.llm.arch.num_attention_heads=2",
           "model.llm.arch.num_key_value_heads=2", "train.mixed_precision=no"]


def _text_examples(tmp_path, n=12):
    generate_text(tmp_path, n_train=n, n_test=2, seed=4)
    cfg = load_recipe_config("sft", "tiny", [f"data_dir={tmp_path}", *TINY_LM])
    seed_everything(0)
    model = MultimodalLM.build(cfg.model).eval()
    dataset, _, _ = training_data(model, cfg, tmp_path / "train.jsonl", None)
    return model, [dataset[i] for i in range(n)]


def _loss(model, batch):
    with torch.no_grad():
        return float(loss_sum(model(batch), batch.labels)), batch.num_loss_tokens()


def test_packed_loss_equals_unpacked(tmp_path):
    model, examples = _text_examples(tmp_path)
    pad = model.tokenizer.pad_token_id
    padded, packed = collate(examples, pad), pack(examples, pad, max_length=64)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # rows were really shared
    (l1, n1), (l2, n2) = _loss(model, padded), _loss(model, packed)
    assert n1 == n2
    assert l1 == pytest.approx(l2, rel=1e-5)
    # Fewer computed tokens for the same real tokens: better padding efficiency.
    assert packed.input_ids.numel() < padded.input_ids.numel()
    assert int(packed.attention_mask.sum()) == int(padded.attention_mask.sum())


def test_no_attention_across_packed_examples(tmp_path):
    model, examples = _text_examples(tmp_path, n=4)
    pad = model.tokenizer.pad_token_id
    a, b = examples[0], examples[1]
    packed = pack([a, b], pad, max_length=256)
    assert packed.input_ids.shape[0] == 1
    first, second = (a, b) if packed.ids == [a.id, b.id] else (b, a)
    with torch.no_grad():
        logits = model(packed)[0]
        alone = model(collate([second], pad))[0]
    k = len(first.input_ids)
    # The second example's logits do not depend on the first one sharing its row.
    torch.testing.assert_close(logits[k:k + len(second.input_ids)], alone, atol=1e-5, rtol=1e-4)
    assert packed.position_ids[0, k].item() == 0


def test_multimodal_packing_keeps_media_order(tmp_path):
    generate_shapes(tmp_path, n_train=8, n_test=2, seed=2, image_size=32)
    cfg = load_recipe_config("llava", "tiny", [f"data_dir={tmp_path}", *SMALL])
    seed_everything(0)
    model = MultimodalLM.build(cfg.model).eval()
    dataset, _, _ = training_data(model, cfg, tmp_path / "train.jsonl", None)
    examples = [dataset[i] for i in range(8)]
    pad = model.tokenizer.pad_token_id
    packed = pack(examples, pad, max_length=160)
    assert packed.input_ids.shape[0] < 8 and sum(packed.media_per_row["image"]) == 8
    (l1, n1), (l2, n2) = _loss(model, collate(examples, pad)), _loss(model, packed)
    assert n1 == n2 and l1 == pytest.approx(l2, rel=1e-5)
