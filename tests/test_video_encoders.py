"""The video encoder (image encoder per frame + frame positions), the conv frame encoder, and the
load / blank interface every encoder shares."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_clip_arch
from PIL import Image

import mmtune.encoders  # noqa: F401  (fills ENCODERS)
from mmtune.config import ConfigError, EncoderConfig
from mmtune.data.media.image import MediaError
from mmtune.data.media.video import write_video
from mmtune.registry import ENCODERS

T = 4


def build(cfg: EncoderConfig):
    return ENCODERS.get(cfg.type)(cfg)


def video_cfg(frame: dict, **arch) -> EncoderConfig:
    return EncoderConfig(type="video_frames", arch={"frame_encoder": frame, "num_frames": T, **arch})


CONV = {"type": "conv", "arch": {"image_size": 32, "channels": [8, 16, 16]}}
CLIP = {"type": "hf_clip", "select_layer": -1, "drop_cls": True, "arch": tiny_clip_arch()}


@pytest.fixture
def clip_file(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = np.zeros((8, 32, 64, 3), np.uint8)  # decord fails on some tiny widths (48, 72)
    for i in range(8):
        frames[i, :, 4 * i:4 * i + 8] = 220
    write_video(path, frames)
    return path


def test_conv_encoder_shapes_and_round_trip(tmp_path):
    enc = build(EncoderConfig(type="conv", image_pad=False, **{k: v for k, v in CONV.items() if k != "type"}))
    pixels = enc.preprocess([Image.new("RGB", (40, 20), (200, 10, 10)), enc.blank()])
    assert pixels.shape == (2, 3, 32, 32) and pixels[1].abs().max() < 0.01  # blank = the mean
    assert enc(pixels).shape == (2, enc.num_tokens(), 16) and enc.num_tokens() == 16
    enc.save_pretrained(tmp_path / "conv")
    again = build(EncoderConfig(type="conv", path=str(tmp_path / "conv")))
    assert torch.equal(enc(pixels), again(pixels))
    with pytest.raises(ValueError, match="multiple of"):
        build(EncoderConfig(type="conv", arch={"image_size": 36, "channels": [8, 8, 8]}))
    with pytest.raises(ConfigError, match="unknown key"):
        build(EncoderConfig(type="conv", arch={"image_size": 32, "width": 8}))


@pytest.mark.parametrize("frame", [CONV, CLIP], ids=["conv", "hf_clip"])
def test_video_frames_layout(frame, clip_file):
    enc = build(video_cfg(frame))
    n_frame = enc.frame_encoder.num_tokens()
    video = enc.load(str(clip_file), "rec:1")
    assert video.shape == (T, 32, 64, 3) and video.dtype == torch.uint8
    pixels = enc.preprocess([video, enc.blank()])
    assert pixels.shape == (2, T, 3, 32, 32)
    feats = enc(pixels)
    assert feats.shape == (2, T * n_frame, enc.hidden_size) and enc.num_tokens() == T * n_frame
    # frame-major layout: tokens t*N .. t*N+N-1 are frame t's, plus frame t's position
    per_frame = enc.frame_encoder(pixels[0])  # [T, N, D]
    expected = per_frame + enc.frame_position.weight[:, None, :]
    assert torch.allclose(feats[0].reshape(T, n_frame, -1), expected, atol=1e-5)


def test_frame_positions_make_order_visible():
    enc = build(video_cfg(CONV))
    still = torch.randn(1, 1, 3, 32, 32).expand(1, T, 3, 32, 32)  # the same frame T times
    feats = enc(still).reshape(T, -1)
    assert not torch.allclose(feats[0], feats[1])
    flat = build(video_cfg(CONV, frame_positions=False))
    assert flat.frame_position is None
    assert torch.allclose(*flat(still).reshape(T, -1)[:2])


def test_blank_video_is_zero_after_preprocessing():
    enc = build(video_cfg(CLIP))
    blank = enc.blank()
    assert blank.shape == (T, 32, 32, 3) and blank.dtype == torch.uint8
    assert enc.preprocess([blank]).abs().max() < 0.02


def test_video_frames_save_and_rebuild_from_path_alone(tmp_path, clip_file):
    for name, frame in (("conv", CONV), ("clip", CLIP)):
        enc = build(video_cfg(frame, fps=4.0))
        with torch.no_grad():
            enc.frame_position.weight.add_(1.0)  # a "trained" value, not the init
        enc.save_pretrained(tmp_path / name)
        again = build(EncoderConfig(type="video_frames", path=str(tmp_path / name)))
        pixels = enc.preprocess([enc.load(str(clip_file), "x")])
        assert again.spec == enc.spec and again.spec.fps == 4.0
        assert torch.equal(enc(pixels), again(pixels))


def test_video_frames_errors(tmp_path, clip_file):
    enc = build(video_cfg(CONV))
    with pytest.raises(ValueError, match="expected 4 frames"):
        enc(torch.zeros(1, T + 1, 3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        enc.preprocess([torch.zeros(T + 1, 32, 32, 3, dtype=torch.uint8)])
    with pytest.raises(FileNotFoundError, match="video_frames.json"):
        build(EncoderConfig(type="video_frames", path=str(tmp_path)))
    with pytest.raises(ValueError, match="backend"):
        build(video_cfg(CONV, backend="opencv"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(clip_file.read_bytes()[:300])
    with pytest.raises(MediaError, match="data.jsonl:5"):
        enc.load(str(bad), "data.jsonl:5")


def test_decord_backend_gives_the_same_input(clip_file):
    a = build(video_cfg(CONV))
    b = build(video_cfg(CONV, backend="decord"))
    assert torch.equal(a.load(str(clip_file), "x"), b.load(str(clip_file), "x"))


def test_image_encoders_share_load_and_blank(tmp_path):
    for cfg in (EncoderConfig(type="hf_clip", arch=tiny_clip_arch()),
                EncoderConfig(type="conv", arch=CONV["arch"])):
        enc = build(cfg)
        path = tmp_path / "x.png"
        Image.new("RGB", (20, 10), (1, 2, 3)).save(path)
        assert enc.load(str(path), "rec:1").size == (20, 10)
        assert enc.blank().size == (enc.spec.size, enc.spec.size)
        with pytest.raises(MediaError, match="rec:2"):
            enc.load(str(tmp_path / "none.png"), "rec:2")
