"""Audio decoding and log-mel features (mmtune.data.media.audio)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from mmtune.data.media.audio import AudioSpec, load_audio, log_mel, mel_extractor, resample, write_wav
from mmtune.data.media.image import MediaError

SR = 16000


def tone(freq: float, seconds: float = 0.5, rate: int = SR) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.argmax(spectrum) * rate / len(wave))


def write_aac(path, wave: np.ndarray, rate: int) -> None:
    """An m4a (AAC) file: a container libsndfile does not read, so PyAV must."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_wav_round_trip(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, tone(440), SR)
    wave = load_audio(path, "rec:1", SR)
    assert wave.dtype == torch.float32 and wave.shape == (SR // 2,)
    assert np.abs(wave.numpy() - tone(440)).max() < 1e-3  # 16-bit PCM
    assert abs(peak_hz(wave, SR) - 440) < 3


def test_resampled_to_the_encoder_rate_and_mixed_to_mono(tmp_path):
    path = tmp_path / "stereo_44k.flac"
    left = tone(1000, rate=44100)
    sf.write(path, np.stack([left, left], axis=1), 44100)
    wave = load_audio(path, "rec:2", SR)
    assert wave.shape == (SR // 2,)
    assert abs(peak_hz(wave, SR) - 1000) < 3
    assert 0.45 < float(wave.abs().max()) < 0.55


def test_resample_lengths():
    assert resample(np.zeros(16000, np.float32), 16000, 8000).shape == (8000,)
    assert resample(np.zeros(16000, np.float32), 16000, 16000).shape == (16000,)


def test_containers_soundfile_cannot_read_go_through_pyav(tmp_path):
    path = tmp_path / "a.m4a"
    write_aac(path, tone(600, seconds=1.0, rate=48000), 48000)
    wave = load_audio(path, "rec:3", SR)
    assert abs(len(wave) - SR) < 0.05 * SR  # AAC adds priming samples
    assert abs(peak_hz(wave, SR) - 600) < 5


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_truncated_file_names_file_and_record(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    sf.write(path, tone(440, seconds=1.0), SR)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as e:
        load_audio(path, "data.jsonl:7", SR)
    assert str(path) in str(e.value) and "data.jsonl:7" in str(e.value)


def test_empty_garbage_and_missing_files(tmp_path):
    empty, garbage = tmp_path / "empty.wav", tmp_path / "garbage.wav"
    empty.write_bytes(b"")
    garbage.write_bytes(b"RIFF? no, just text " * 8)
    for path, words in ((empty, "empty"), (garbage, "cannot be decoded"), (tmp_path / "gone.wav", "does not exist")):
        with pytest.raises(MediaError, match=words) as e:
            load_audio(path, "data.jsonl:9", SR)
        assert str(path) in str(e.value) and "data.jsonl:9" in str(e.value)


def test_log_mel_pads_and_cuts_to_the_window():
    spec = AudioSpec(num_samples=SR, n_mels=80)
    mel = log_mel([tone(440, 0.25), tone(440, 2.0), np.zeros(SR, np.float32)], spec)
    assert mel.shape == (3, 80, 100) and mel.dtype == torch.float32
    assert torch.equal(mel[2], torch.full_like(mel[2], mel[2, 0, 0]))  # silence is flat
    assert mel[0, :, :20].std() > 0.1 and mel[0, :, 30:].std() < 1e-6  # a quarter second, then padding


def test_extractor_is_built_from_the_spec():
    ext = mel_extractor(AudioSpec(sample_rate=SR, num_samples=3 * SR, n_mels=128, hop_length=160, n_fft=400))
    assert (ext.feature_size, ext.sampling_rate, ext.hop_length, ext.n_fft) == (128, SR, 160, 400)
    assert ext.nb_max_frames == 300
