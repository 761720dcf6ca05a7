"""The Whisper audio encoder: random init from arch, local checkpoints, save / rebuild, load / blank."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

import mmtune.encoders  # noqa: F401  (fills ENCODERS)
from mmtune.config import EncoderConfig
from mmtune.data.media.audio import write_wav
from mmtune.data.media.image import MediaError
from mmtune.encoders.whisper_audio import WhisperAudioEncoder
from mmtune.registry import ENCODERS

ARCH = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
        "num_mel_bins": 80, "max_source_positions": 50}  # 50 positions = 100 mel frames = 1 s


def build(**kw):
    cfg = EncoderConfig(type="whisper_audio", drop_cls=False, select_layer=-1, **kw)
    return ENCODERS.get("whisper_audio")(cfg)


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "beep.wav"
    t = np.arange(8000) / 16000
    write_wav(path, 0.5 * np.sin(2 * np.pi * 440 * t), 16000)
    return path


def test_random_init_shapes(wav):
    enc = build(arch=ARCH)
    assert enc.spec.num_samples == 16000 and enc.spec.sample_rate == 16000
    wave = enc.load(str(wav), "rec:1")
    assert wave.shape == (8000,) and wave.dtype == torch.float32
    mel = enc.preprocess([wave, enc.blank()])
    assert mel.shape == (2, 80, 100)
    out = enc(mel)
    assert out.shape == (2, enc.num_tokens(), enc.hidden_size) == (2, 50, 32)
    assert not torch.allclose(out[0], out[1])  # a beep is not silence


def test_blank_is_silence_one_window_long():
    enc = build(arch=ARCH)
    assert torch.equal(enc.blank(), torch.zeros(16000))


def test_select_layer():
    enc = build(arch=ARCH)
    mel = enc.preprocess([enc.blank()])
    raw = ENCODERS.get("whisper_audio")(EncoderConfig(type="whisper_audio", drop_cls=False, select_layer=-2,
                                                      arch=ARCH))
    raw.load_state_dict(enc.state_dict())
    hidden = enc.encoder(mel, output_hidden_states=True).hidden_states
    assert torch.allclose(raw(mel), hidden[-2])
    with pytest.raises(ValueError, match="select_layer"):
        WhisperAudioEncoder(enc.encoder, enc.spec, enc.extractor, select_layer=5)


def test_save_and_rebuild(tmp_path, wav):
    enc = build(arch=ARCH)
    enc.save_pretrained(tmp_path / "enc")
    again = build(path=str(tmp_path / "enc"))
    assert again.spec == enc.spec
    mel = enc.preprocess([enc.load(str(wav), "x")])
    assert torch.equal(enc(mel), again(mel))


def test_local_whisper_checkpoint_keeps_the_encoder(tmp_path):
    cfg = WhisperConfig(**ARCH, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64,
                        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1)
    full = WhisperForConditionalGeneration(cfg).eval()
    full.save_pretrained(tmp_path / "whisper")
    WhisperFeatureExtractor(feature_size=80, chunk_length=1).save_pretrained(tmp_path / "whisper")
    enc = build(path=str(tmp_path / "whisper")).eval()
    mel = enc.preprocess([torch.randn(16000) * 0.1])
    with torch.no_grad():
        assert torch.allclose(enc(mel), full.model.encoder(mel).last_hidden_state)
    assert not any("decoder" in name for name, _ in enc.named_parameters())


def test_config_errors_and_bad_audio(tmp_path):
    with pytest.raises(ValueError, match="drop_cls"):
        ENCODERS.get("whisper_audio")(EncoderConfig(type="whisper_audio", arch=ARCH))
    enc = build(arch=ARCH)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"")
    with pytest.raises(MediaError, match="data.jsonl:4"):
        enc.load(str(bad), "data.jsonl:4")
