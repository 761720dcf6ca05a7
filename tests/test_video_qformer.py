"""Video-LLaMA's video and audio Q-Former projectors (composed from QFormerProjector)."""
from __future__ import annotations

import pytest
import torch
from transformers import Blip2QFormerConfig, Blip2QFormerModel

import mmtune.projectors  # noqa: F401  (fills PROJECTORS)
from mmtune.projectors.qformer import load_hf_qformer
from mmtune.parts import FeatureSpec
from mmtune.registry import PROJECTORS

T, N, D_ENC, D_LLM = 4, 6, 24, 40
SMALL = dict(num_queries=5, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0)
FRAME_QF = dict(num_queries=3, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, dropout=0.0)


def video(**options):
    return PROJECTORS.get("video_qformer")(FeatureSpec(D_ENC, 0, frames=T), D_LLM, **{**SMALL, **options}).eval()


def features(n: int = 2) -> torch.Tensor:
    return torch.randn(n, T * N, D_ENC)  # frame-major, as the video_frames encoder gives


def test_video_qformer_shapes_and_video_llama_defaults():
    proj = video()
    out = proj(features(3))
    assert out.shape == (3, 5, D_LLM) and proj.num_tokens(T * N) == 5
    qf = proj.video_qformer
    assert len(qf.layers) == 2 and all(layer.cross_attn is not None for layer in qf.layers)  # cross-attn every layer
    assert not qf.instruction_aware and proj.frame_position.weight.shape == (T, D_ENC)
    default = PROJECTORS.get("video_qformer")(FeatureSpec(D_ENC, 0, frames=T), D_LLM, hidden_size=32, num_heads=2)
    assert default.num_tokens(1) == 32  # Video-LLaMA's 32 video queries


def test_frame_positions_carry_time():
    """Cross-attention ignores key order: only the frame positions tell frame t from frame t'."""
    torch.manual_seed(0)
    x = features()
    reversed_frames = x.reshape(2, T, N, D_ENC).flip(1).reshape(2, T * N, D_ENC)
    with torch.no_grad():
        no_pos = video(frame_positions=False)
        torch.testing.assert_close(no_pos(x), no_pos(reversed_frames), atol=1e-5, rtol=1e-5)
        with_pos = video()
        assert not torch.allclose(with_pos(x), with_pos(reversed_frames), atol=1e-3)


def test_frame_qformer_reads_each_frame_then_time():
    proj = video(frame_qformer=FRAME_QF)
    assert isinstance(proj.frame_qformer.language_projection, torch.nn.Identity)
    assert proj.frame_position.weight.shape == (T, 16)  # positions live at the frame Q-Former's width
    x = features()
    assert proj(x).shape == (2, 5, D_LLM)
    # the frame Q-Former sees each frame alone: changing frame 0 leaves frames 1.. untouched
    y = x.clone()
    y[:, :N] += 1.0
    with torch.no_grad():
        a = proj.frame_qformer(x.reshape(2 * T, N, D_ENC)).reshape(2, T, 3, 16)
        b = proj.frame_qformer(y.reshape(2 * T, N, D_ENC)).reshape(2, T, 3, 16)
    assert not torch.allclose(a[:, 0], b[:, 0]) and torch.allclose(a[:, 1:], b[:, 1:])


def test_blip2_weights_import_into_the_frame_qformer():
    """Video-LLaMA's frame Q-Former is BLIP-2's: transformers' weights load with load_hf_qformer."""
    torch.manual_seed(0)
    hf = Blip2QFormerModel(Blip2QFormerConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=32, encoder_hidden_size=D_ENC)).eval()
    query_tokens = torch.randn(1, 3, 16)
    proj = video(frame_qformer=FRAME_QF)
    assert load_hf_qformer(proj.frame_qformer, hf.state_dict(), query_tokens) == []
    frames = torch.randn(2 * T, N, D_ENC)
    with torch.no_grad():
        expected = hf(query_embeds=query_tokens.expand(2 * T, -1, -1), encoder_hidden_states=frames).last_hidden_state
        torch.testing.assert_close(proj.frame_qformer(frames), expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_positions_and_queries():
    proj = video().train()
    proj(features()).sum().backward()
    assert proj.frame_position.weight.grad.abs().sum() > 0
    assert proj.video_qformer.query_tokens.grad.abs().sum() > 0


def test_video_qformer_errors():
    with pytest.raises(ValueError, match="num_frames"):
        video()(torch.randn(1, T * N + 1, D_ENC))
    with pytest.raises(ValueError, match="instruction_aware"):
        video()(features(), instruction=(torch.zeros(2, 3, dtype=torch.long), None))
    with pytest.raises(ValueError, match="num_frames"):
        PROJECTORS.get("video_qformer")(FeatureSpec(D_ENC, 0, frames=0), D_LLM)


def test_audio_qformer():
    proj = PROJECTORS.get("audio_qformer")(FeatureSpec(D_ENC, 0), D_LLM, num_positions=8, **SMALL).eval()
    x = torch.randn(2, 8, D_ENC)
    assert proj(x).shape == (2, 5, D_LLM) and proj.num_tokens(8) == 5
    assert len(proj.qformer.layers) == 2 and not proj.qformer.instruction_aware
    with torch.no_grad():  # positions make segment order matter (Video-LLaMA's audio_position_embedding)
        assert not torch.allclose(proj(x), proj(x.flip(1)), atol=1e-3)
    with pytest.raises(ValueError, match="num_positions"):
        proj(torch.randn(1, 9, D_ENC))
    plain = PROJECTORS.get("audio_qformer")(FeatureSpec(D_ENC, 0), D_LLM, hidden_size=32, num_heads=2)
    assert plain.position is None and plain.num_tokens(50) == 8  # Video-LLaMA's 8 audio queries
