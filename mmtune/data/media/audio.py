"""Audio files -> mono float32 waveforms at the encoder's rate -> Whisper log-mel features.

`load_audio(path, where, sample_rate)` reads with soundfile (WAV, FLAC, OGG, ...) and falls
back to PyAV for containers libsndfile does not read (an mp4's audio track, mp3 on old
libsndfile). Channels are averaged to mono and the signal is resampled with FFmpeg's
swresample (through PyAV), so no torchaudio is needed.

`AudioSpec` is the preprocessing that travels with an audio encoder; `mel_extractor(spec)`
builds transformers' `WhisperFeatureExtractor` from it (no hub access) and `log_mel` turns a
batch of waveforms into `[n, n_mels, frames]`, padded or cut to the spec's window.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor

from .image import MediaError, media_file


@dataclass(frozen=True)
class AudioSpec:
    """How raw audio becomes the encoder's input. Saved with the model.

    `num_samples` is the window every clip is padded or cut to (Whisper: 30 s = 480000 at
    16 kHz); log-mel frames = num_samples // hop_length (Whisper: 3000).
    """

    sample_rate: int = 16000
    num_samples: int = 480000
    n_mels: int = 80
    hop_length: int = 160
    n_fft: int = 400

    @property
    def num_frames(self) -> int:
        return self.num_samples // self.hop_length


def load_audio(path: str | os.PathLike, where: str, sample_rate: int) -> torch.Tensor:
    """The audio at `path` as a mono float32 waveform [S] at `sample_rate` Hz.

    A missing, empty, truncated or undecodable file raises MediaError naming `path` and
    `where` (the record's source, e.g. "data.jsonl:12").
    """
    path = media_file(path, where, "audio")
    try:
        wave, rate = _read_soundfile(path)
    except sf.LibsndfileError as sf_error:
        try:
            wave, rate = _read_pyav(path)
        except (av.error.FFmpegError, MediaError, ValueError) as av_error:
            # libsndfile names a corrupt file's problem best; PyAV's reason is kept beside it.
            raise MediaError(f"{where}: audio {path} cannot be decoded ({sf_error}; "
                             f"FFmpeg: {str(av_error).splitlines()[0]})") from None
    except MediaError as e:
        raise MediaError(f"{where}: audio {path} {e}", e.reason) from None
    if wave.size == 0:
        raise MediaError(f"{where}: audio {path} has no samples", "no_content")
    if not np.isfinite(wave).all():
        # One NaN sample makes the whole log-mel window NaN, and the projector after it.
        bad = int((~np.isfinite(wave)).sum())
        raise MediaError(f"{where}: audio {path} has {bad} NaN or infinite sample(s)", "non_finite")
    return torch.from_numpy(resample(wave, rate, sample_rate))


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    info = sf.info(path)
    _check_riff_size(path)
    data, rate = sf.read(path, dtype="float32", always_2d=True)  # [S, C]
    if info.frames > 0 and len(data) < info.frames:
        raise MediaError(f"is truncated: the header says {info.frames} samples, {len(data)} could be read",
                         "truncated")
    return data.mean(axis=1), rate


def _check_riff_size(path: str) -> None:
    """libsndfile reads a cut-off WAV without complaint (it trusts the file size); the RIFF
    header's own size field tells the truth. 0 and 0xFFFFFFFF mean "unknown" (streamed, RF64)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    declared = int.from_bytes(head[4:8], "little") + 8
    actual = os.path.getsize(path)
    if 8 < declared < 0xFFFFFFFF and actual < declared:
        raise MediaError(f"is truncated: the WAV header says {declared} bytes, the file has {actual}",
                         "truncated")


def _read_pyav(path: str) -> tuple[np.ndarray, int]:
    with av.open(path) as container:
        if not container.streams.audio:
            raise MediaError("has no audio stream")
        stream = container.streams.audio[0]
        # Planar float mono at the file's own rate; resampling happens in one place below.
        to_mono = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                  for out in to_mono.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in to_mono.resample(None)]
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), stream.rate


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 `wave` from `rate` to `target` Hz with FFmpeg's swresample."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if rate == target:
        return wave
    frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush the filter tail
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> None:
    """Write a mono float waveform in [-1, 1] as 16-bit PCM WAV."""
    sf.write(os.fspath(path), np.asarray(wave, dtype=np.float32), sample_rate, subtype="PCM_16")


def mel_extractor(spec: AudioSpec) -> WhisperFeatureExtractor:
    """Whisper's log-mel front end, built from the spec's numbers (no download)."""
    return WhisperFeatureExtractor(feature_size=spec.n_mels, sampling_rate=spec.sample_rate,
                                   hop_length=spec.hop_length, n_fft=spec.n_fft,
                                   chunk_length=max(1, math.ceil(spec.num_samples / spec.sample_rate)))


def log_mel(waves: list[torch.Tensor | np.ndarray], spec: AudioSpec,
            extractor: WhisperFeatureExtractor | None = None) -> torch.Tensor:
    """Log-mel features [n, n_mels, spec.num_frames] of mono waveforms at spec.sample_rate,
    each padded with silence or cut to spec.num_samples (Whisper's fixed window)."""
    extractor = extractor or mel_extractor(spec)
    arrays = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves]
    out = extractor(arrays, sampling_rate=spec.sample_rate, max_length=spec.num_samples,
                    padding="max_length", truncation=True, return_tensors="pt")
    return out["input_features"]  # [n, n_mels, num_samples // hop_length]
