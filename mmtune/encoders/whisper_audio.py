"""Whisper's audio encoder (transformers) as an mmtune encoder.

    waveform [S] at 16 kHz --preprocess (Whisper log-mel)--> [n, n_mels, 2 * P]
        --conv1, conv2 (stride 2) + sinusoidal positions + transformer--> [n, P, D]

P is the config's `max_source_positions` (1500 for real Whisper: 30 s windows; a tiny
config with P = 50 reads 1 s). Every clip is padded with silence or cut to 2 * P * hop_length
samples, because Whisper's encoder only accepts that exact mel length.

Config (`type: whisper_audio`, `drop_cls: false`, Whisper has no CLS token)::

    arch: {d_model: 64, encoder_layers: 2, encoder_attention_heads: 2, encoder_ffn_dim: 128,
           num_mel_bins: 80, max_source_positions: 50}   # WhisperConfig kwargs: random init
    path: /models/whisper-small   # or a local Whisper checkpoint (the decoder is dropped)

`select_layer: -1` gives the encoder's output after its final LayerNorm (what Whisper's
decoder reads); any other value gives that raw hidden state, counted like HF hidden_states.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..config import EncoderConfig
from ..data.media.audio import AudioSpec, load_audio, log_mel, mel_extractor
from ..registry import ENCODERS

_SPEC = "mmtune_audio_spec.json"  # written by save_pretrained: marks an encoder-only directory


class WhisperAudioEncoder(nn.Module):
    """`forward(mel [n, n_mels, 2P]) -> [n, P, D]`."""

    modality = "audio"
    num_frames = 1  # a clip's log-mel is one sequence of tokens (mmtune.parts.Encoder)

    def __init__(self, encoder: WhisperEncoder, spec: AudioSpec, extractor: WhisperFeatureExtractor,
                 select_layer: int = -1) -> None:
        super().__init__()
        cfg = encoder.config
        expected = 2 * cfg.max_source_positions
        if spec.num_frames != expected or spec.n_mels != cfg.num_mel_bins:
            raise ValueError(f"audio spec gives {spec.n_mels} mel bins x {spec.num_frames} frames; the Whisper "
                             f"encoder needs {cfg.num_mel_bins} x {expected}")
        n_layers = cfg.encoder_layers
        if not (-n_layers - 1 <= select_layer <= n_layers) or select_layer == 0:
            raise ValueError(f"select_layer {select_layer} is outside 1..{n_layers} / -1..-{n_layers + 1}")
        self.encoder = encoder
        self.spec = spec
        self.extractor = extractor
        self.select_layer = select_layer
        self.hidden_size: int = cfg.d_model

    def num_tokens(self) -> int:
        return self.encoder.config.max_source_positions

    def load(self, path: str, where: str) -> torch.Tensor:
        """Decode `path` to a mono float32 waveform [S] at the spec's rate."""
        return load_audio(path, where, self.spec.sample_rate)

    def blank(self) -> torch.Tensor:
        """Silence, one window long."""
        return torch.zeros(self.spec.num_samples, dtype=torch.float32)

    def preprocess(self, waves: list[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Mono waveforms at spec.sample_rate -> log-mel [n, n_mels, 2P]."""
        return log_mel(waves, self.spec, self.extractor)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        last = self.select_layer == -1
        out = self.encoder(input_features=mel.to(self.encoder.dtype), output_hidden_states=not last)
        return out.last_hidden_state if last else out.hidden_states[self.select_layer]  # [n, P, D]

    def save_pretrained(self, out_dir: Path) -> None:
        """transformers' layout (the encoder alone) + the extractor + mmtune's audio spec."""
        out_dir = Path(out_dir)
        self.encoder.save_pretrained(out_dir)
        self.extractor.save_pretrained(out_dir)
        (out_dir / _SPEC).write_text(json.dumps(asdict(self.spec), indent=2))


def _spec(config: WhisperConfig, extractor: WhisperFeatureExtractor | None) -> AudioSpec:
    """The window the encoder needs, at the extractor's rate / hop / FFT when one is saved."""
    base = AudioSpec() if extractor is None else AudioSpec(
        sample_rate=extractor.sampling_rate, hop_length=extractor.hop_length, n_fft=extractor.n_fft)
    return AudioSpec(sample_rate=base.sample_rate, num_samples=2 * config.max_source_positions * base.hop_length,
                     n_mels=config.num_mel_bins, hop_length=base.hop_length, n_fft=base.n_fft)


@ENCODERS.register("whisper_audio")
def build_whisper_audio(cfg: EncoderConfig) -> WhisperAudioEncoder:
    if cfg.drop_cls:
        raise ValueError("whisper_audio has no CLS token; set drop_cls: false")
    if cfg.path is None:
        encoder = WhisperEncoder(WhisperConfig(**cfg.arch))
        spec = _spec(encoder.config, None)
        return WhisperAudioEncoder(encoder, spec, mel_extractor(spec), cfg.select_layer)
    root = Path(cfg.path)
    if (root / _SPEC).exists():  # a directory this encoder saved: encoder weights only
        encoder = WhisperEncoder.from_pretrained(root)
        spec = AudioSpec(**json.loads((root / _SPEC).read_text()))
        return WhisperAudioEncoder(encoder, spec, mel_extractor(spec), cfg.select_layer)
    # A Whisper checkpoint (WhisperModel / WhisperForConditionalGeneration): keep the encoder.
    encoder = WhisperModel.from_pretrained(root).get_encoder()
    extractor = (WhisperFeatureExtractor.from_pretrained(root)
                 if (root / "preprocessor_config.json").exists() else None)
    spec = _spec(encoder.config, extractor)
    return WhisperAudioEncoder(encoder, spec, mel_extractor(spec), cfg.select_layer)
