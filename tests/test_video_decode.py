"""Video decoding (mmtune.data.media.video): frame sampling, PyAV == decord, and broken files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmtune.data.media.audio import write_wav
from mmtune.data.media.image import MediaError
from mmtune.data.media.video import frame_indices, load_video, write_video

T, SIZE = 12, 32


def ramp_clip(n: int = T) -> np.ndarray:
    """Frame i is a flat grey of level 20 * i: the frame's index is readable after lossy coding."""
    return np.stack([np.full((SIZE, SIZE, 3), 20 * i, np.uint8) for i in range(n)])


def frame_ids(frames: torch.Tensor) -> list[int]:
    return [int(round(float(f.float().mean()) / 20)) for f in frames]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "ramp.mp4"
    write_video(path, ramp_clip(), fps=8)
    return path


def test_frame_indices_uniform_keeps_both_ends():
    assert frame_indices(12, 4) == [0, 4, 7, 11]
    assert frame_indices(3, 5) == [0, 0, 1, 2, 2]  # short clips repeat frames: T stays fixed
    assert frame_indices(8, 1) == [0]


def test_frame_indices_fps():
    assert frame_indices(24, 4, fps=4, clip_fps=8) == [0, 2, 4, 6]
    assert frame_indices(5, 4, fps=2, clip_fps=8) == [0, 4, 4, 4]  # past the end: the last frame
    with pytest.raises(ValueError):
        frame_indices(5, 4, fps=2, clip_fps=None)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_uniform_sampling(clip, backend):
    frames = load_video(clip, "rec:1", num_frames=4, backend=backend)
    assert frames.dtype == torch.uint8 and frames.shape == (4, SIZE, SIZE, 3)
    assert frame_ids(frames) == [0, 4, 7, 11]


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_fps_sampling(clip, backend):
    frames = load_video(clip, "rec:1", num_frames=4, fps=2, backend=backend)  # clip is 8 fps
    assert frame_ids(frames) == [0, 4, 8, 11]


def test_round_trip_is_close_to_the_written_frames(clip):
    frames = load_video(clip, "rec:1", num_frames=T)
    err = (frames.float() - torch.from_numpy(ramp_clip()).float()).abs().mean()
    assert err < 3.0  # libx264 at crf 18


@pytest.mark.parametrize("num_frames,fps,height,width", [(T, None, 32, 64), (5, None, 32, 64), (6, 3.0, 32, 64),
                                                          (3, None, 336, 596)])  # WebVid's frame size
def test_decord_returns_the_same_frames_as_pyav(tmp_path, num_frames, fps, height, width):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.mp4"
    write_video(path, rng.integers(0, 256, (T, height, width, 3), dtype=np.uint8), fps=8)
    a = load_video(path, "x", num_frames, fps, backend="pyav")
    b = load_video(path, "x", num_frames, fps, backend="decord")
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_file_names_file_and_record(tmp_path, backend, faststart):
    path = tmp_path / "cut.mp4"
    write_video(path, ramp_clip(), faststart=faststart)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as e:
        load_video(path, "data.jsonl:12", num_frames=8, backend=backend)
    assert str(path) in str(e.value) and "data.jsonl:12" in str(e.value)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_empty_garbage_and_missing_files(tmp_path, backend):
    empty, garbage = tmp_path / "empty.mp4", tmp_path / "garbage.mp4"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a video at all" * 10)
    for path, words in ((empty, "empty"), (garbage, "cannot be decoded"), (tmp_path / "gone.mp4", "does not exist")):
        with pytest.raises(MediaError, match=words) as e:
            load_video(path, "data.jsonl:3", num_frames=4, backend=backend)
        assert str(path) in str(e.value) and "data.jsonl:3" in str(e.value)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    write_wav(path, np.zeros(1600, np.float32), 16000)
    with pytest.raises(MediaError, match="no video stream"):
        load_video(path, "data.jsonl:4", num_frames=4)


def test_unknown_backend_and_bad_frames():
    with pytest.raises(ValueError, match="backend"):
        load_video("x.mp4", "w", 4, backend="opencv")
    with pytest.raises(ValueError, match="uint8"):
        write_video("x.mp4", np.zeros((2, 8, 8, 3), np.float32))
