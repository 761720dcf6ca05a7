"""Q-Former projector: same outputs as transformers' BLIP-2 / InstructBLIP Q-Formers after import."""
from __future__ import annotations

import pytest
import torch
from transformers import (Blip2QFormerConfig, Blip2QFormerModel, InstructBlipQFormerConfig,
                          InstructBlipQFormerModel)

from mmtune.batch import Instruction
from mmtune.projectors.qformer import QFormerProjector, load_hf_qformer
from mmtune.parts import FeatureSpec
from mmtune.registry import PROJECTORS

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            encoder_hidden_size=24, vocab_size=50, max_position_embeddings=16)
Q, D_ENC, D_LLM = 4, 24, 40


def ours(freq: int, instruction_aware: bool) -> QFormerProjector:
    return PROJECTORS.get("qformer")(FeatureSpec(D_ENC, 0), D_LLM, num_queries=Q, hidden_size=32, num_layers=2,
                                     num_heads=2, intermediate_size=64, cross_attention_frequency=freq,
                                     instruction_aware=instruction_aware, vocab_size=50,
                                     max_position_embeddings=16)


def randomise(model: torch.nn.Module) -> None:
    """Random everything, LayerNorms included (their default init would hide a mix-up)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)


def hf_parts(hf: torch.nn.Module):
    query_tokens = torch.randn(1, Q, 32)
    proj = torch.nn.Linear(32, D_LLM)
    return query_tokens, proj


@pytest.mark.parametrize("freq", [1, 2])
def test_matches_blip2_qformer(freq):
    torch.manual_seed(0)
    hf = Blip2QFormerModel(Blip2QFormerConfig(**TINY, cross_attention_frequency=freq)).eval()
    randomise(hf)
    query_tokens, proj = hf_parts(hf)
    mine = ours(freq, instruction_aware=False).eval()
    untouched = load_hf_qformer(mine, hf.state_dict(), query_tokens, proj.state_dict())
    assert untouched == []
    assert (mine.layers[1].cross_attn is not None) == (freq == 1)

    features = torch.randn(3, 9, D_ENC)
    with torch.no_grad():
        expected = hf(query_embeds=query_tokens.expand(3, -1, -1),
                      encoder_hidden_states=features).last_hidden_state
        got = mine.qformer(features)
        out = mine(features)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, proj(expected), atol=1e-5, rtol=1e-5)
    assert out.shape == (3, Q, D_LLM) and mine.num_tokens(9) == Q == mine.num_tokens(100)


@pytest.mark.parametrize("freq", [1, 2])
def test_matches_instructblip_qformer_with_instruction(freq):
    torch.manual_seed(1)
    hf = InstructBlipQFormerModel(InstructBlipQFormerConfig(**TINY, cross_attention_frequency=freq)).eval()
    randomise(hf)
    query_tokens, proj = hf_parts(hf)
    mine = ours(freq, instruction_aware=True).eval()
    assert load_hf_qformer(mine, hf.state_dict(), query_tokens, proj.state_dict()) == []

    features = torch.randn(2, 9, D_ENC)
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # second row padded
    ids[1, 3:] = 0
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=torch.cat([torch.ones(2, Q, dtype=mask.dtype), mask], 1),
                      query_embeds=query_tokens.expand(2, -1, -1),
                      encoder_hidden_states=features).last_hidden_state[:, :Q]
        got = mine.qformer(features, Instruction(ids, mask))
        got_tuple = mine.qformer(features, (ids, mask))
        out = mine(features, Instruction(ids, mask))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_tuple, got)
    torch.testing.assert_close(out, proj(expected), atol=1e-5, rtol=1e-5)
    assert out.shape == (2, Q, D_LLM) and mine.num_tokens(9) == Q


def test_instruction_changes_the_queries_and_padding_does_not():
    torch.manual_seed(2)
    mine = ours(2, instruction_aware=True).eval()
    randomise(mine)
    features = torch.randn(1, 9, D_ENC)
    a = torch.tensor([[5, 6, 7]])
    b = torch.tensor([[8, 9, 10]])
    with torch.no_grad():
        plain = mine(features)
        with_a = mine(features, Instruction(a, torch.ones_like(a)))
        with_b = mine(features, Instruction(b, torch.ones_like(b)))
        # the same instruction with two padding tokens appended, masked out
        padded = mine(features, Instruction(torch.tensor([[5, 6, 7, 0, 0]]),
                                                   torch.tensor([[1, 1, 1, 0, 0]])))
    assert not torch.allclose(with_a, with_b, atol=1e-3)
    assert not torch.allclose(with_a, plain, atol=1e-3)
    torch.testing.assert_close(padded, with_a, atol=1e-5, rtol=1e-5)


def test_blip2_projector_refuses_an_instruction_and_import_checks_names():
    mine = ours(2, instruction_aware=False)
    with pytest.raises(ValueError, match="instruction_aware"):
        mine(torch.randn(1, 9, D_ENC), (torch.tensor([[1]]), None))
    hf = InstructBlipQFormerModel(InstructBlipQFormerConfig(**TINY, cross_attention_frequency=2))
    with pytest.raises(KeyError, match="no place"):  # text embeddings have nowhere to go
        load_hf_qformer(mine, hf.state_dict(), torch.zeros(1, Q, 32))
    # BLIP-2 weights into an instruction-aware projector: the text side is reported untouched
    blip2 = Blip2QFormerModel(Blip2QFormerConfig(**TINY, cross_attention_frequency=2))
    untouched = load_hf_qformer(ours(2, instruction_aware=True), blip2.state_dict(), torch.zeros(1, Q, 32))
    assert "word_embeddings.weight" in untouched and "language_projection.weight" in untouched
    assert all(k.startswith(("word_", "position_", "language_")) or ".ffn_text." in k for k in untouched)


def test_builds_from_config_and_survives_save_and_reload(tiny_model, tmp_path):
    from mmtune.model import MultimodalLM

    opts = dict(num_queries=Q, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                cross_attention_frequency=2, vocab_size=50, max_position_embeddings=16)
    model = tiny_model(projectors={"image": {"type": "qformer", "options": opts}})
    assert model.tokens_per_medium("image") == Q
    model.save_pretrained(tmp_path)
    again = MultimodalLM.from_pretrained(tmp_path).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.encode_media("image", images)
        torch.testing.assert_close(again.encode_media("image", images), feats)
    assert feats.shape == (2, Q, model.llm.get_input_embeddings().embedding_dim)
