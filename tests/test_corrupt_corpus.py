"""The corrupt-media corpus (tests/fixtures/make_corrupt.py) through every recipe's data path.

For each recipe that reads a medium (sft: text; llava, instructblip: images; video_llama:
video and audio; instruct_pix2pix: image pairs) and each corpus case that medium meets:
- default policy: the read or the first batch raises a one-line DataError naming the data
  file and line, the record id (when the line parses) and the medium's path, under the
  case's reason;
- `train.on_bad_sample=skip`: one file holding every case between good records reads and
  batches to the end, and the reader's skipped lines plus `DataStats` count each case under
  its reason, and nothing else;
- valid but unusual media ("ok" cases) decode to the reference the corpus wrote.
Two short real runs (`mmtune train llava --stage finetune`, `mmtune train instruct_pix2pix`, one
step over every case) complete with `skip` and report the counts in train_summary.json.
"""
from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_corrupt import MEDIA, Case, make_corpus, triplet_text_cases  # noqa: E402

from mmtune.data.collate import DataStats  # noqa: E402
from mmtune.data.errors import DataError  # noqa: E402
from mmtune.data.formats.records import read_records  # noqa: E402
from mmtune.model import MultimodalLM  # noqa: E402
from mmtune.recipes.common import load_recipe_config, training_data  # noqa: E402

# recipe -> (config overrides, the media its records carry; the first is used for text cases)
LLM_RECIPES = {
    "sft": ([], ("text",)),
    "llava": ([], ("image",)),
    "instructblip": ([], ("image",)),
    "video_llama": (["model.preset=tiny-video-llama-av"], ("video", "audio")),
}
KEYS = {"image": ("images", "<image>"), "video": ("videos", "<video>"), "audio": ("audios", "<audio>")}
GOOD_FILE = {"image": "good.png", "video": "good.mp4", "audio": "good.wav"}


def record(medium: str, rid: str, file: str | None = None) -> dict:
    """A good record (words of the synthetic vocabulary) carrying `file` as its medium."""
    messages = [{"role": "user", "content": "what is ?"}, {"role": "assistant", "content": "red"}]
    if medium == "text":
        return {"id": rid, "messages": messages}
    key, token = KEYS[medium]
    messages[0]["content"] = f"{token}\n" + messages[0]["content"]
    return {"id": rid, "messages": messages, key: [file or f"{MEDIA}/{GOOD_FILE[medium]}"]}


def good_line(medium: str, rid: str) -> bytes:
    return (json.dumps(record(medium, rid)) + "\n").encode()


def line_of(case: Case, medium: str, rid: str) -> bytes:
    if case.medium == "text":
        return case.line(record(medium, rid))
    return (json.dumps(record(case.medium, rid, case.file)) + "\n").encode()


@lru_cache(maxsize=None)
def _model(recipe: str) -> MultimodalLM:
    torch.manual_seed(0)
    return MultimodalLM.build(_cfg(recipe, "error").model)


def _cfg(recipe: str, policy: str):
    return load_recipe_config(recipe, "tiny", [*LLM_RECIPES[recipe][0], f"train.on_bad_sample={policy}",
                                               "train.mixed_precision=no"])


def recipe_batches(recipe: str, policy: str, data_file: Path, batch_size: int = 2, num_workers: int = 0):
    """The recipe's own data path: its last stage's task and template, its collator."""
    cfg = _cfg(recipe, policy)
    stage = list(cfg.stages.values())[-1]
    dataset, collate_fn, n_bad = training_data(_model(recipe), cfg, data_file, stage.chat_template, stage.task)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn,
                                         num_workers=num_workers)
    return loader, n_bad


def llm_cases(cases: list[Case]) -> list[tuple[str, Case]]:
    return [(r, c) for r, (_, media) in LLM_RECIPES.items() for c in cases
            if c.medium == "text" or c.medium in media]


def _case_ids(pairs):
    return [f"{r}-{c.name}" for r, c in pairs]


# The corpus is generated once per test session, at collection (its cases parametrize the tests).
_ROOT = Path(tempfile.mkdtemp(prefix="corrupt_corpus_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
_CASES = make_corpus(_ROOT)


@pytest.fixture(scope="module")
def corpus() -> tuple[Path, list[Case]]:
    return _ROOT, _CASES


def _static_cases() -> list[Case]:
    return _CASES


BAD_LLM = [(r, c) for r, c in llm_cases(_static_cases()) if c.expect != "ok"]
OK_LLM = [(r, c) for r, c in llm_cases(_static_cases()) if c.expect == "ok"]


def assert_names(message: str, data_file: Path, line: int, rid: str | None, case: Case, root: Path) -> None:
    assert "\n" not in message, message
    assert f"{data_file}:{line}" in message, message
    if rid is not None:
        assert repr(rid) in message, message
    if case.file is not None:
        assert str(root / case.file) in message, message


@pytest.mark.parametrize("recipe,case", BAD_LLM, ids=_case_ids(BAD_LLM))
def test_default_policy_error_names_file_line_and_record(corpus, tmp_path, recipe, case):
    root, _ = corpus
    medium = LLM_RECIPES[recipe][1][0]
    data_file = root / f"{recipe}_{case.name}_{tmp_path.name}.jsonl"
    rid = f"bad_{case.name}"
    if case.name == "empty_jsonl":
        data_file.write_bytes(b"")
    else:
        data_file.write_bytes(good_line(medium, "good0") + line_of(case, medium, rid))
    with pytest.raises((DataError, ValueError)) as e:
        loader, _ = recipe_batches(recipe, "error", data_file)
        list(loader)
    assert isinstance(e.value, DataError), repr(e.value)
    assert e.value.reason == case.expect, str(e.value)
    if case.name == "empty_jsonl":
        assert str(data_file) in str(e.value) and "no records" in str(e.value)
        with pytest.raises(DataError, match="no records"):  # not skippable: nothing would train
            recipe_batches(recipe, "skip", data_file)
        return
    parses = case.expect not in ("malformed_json", "not_utf8")
    assert_names(str(e.value), data_file, 2, rid if parses else None, case, root)


def _mixed_file(root: Path, name: str, lines: list[bytes], good: bytes) -> tuple[Path, list[int]]:
    """Every line after a good one, so no batch of 2 is all bad; returns the lines' numbers."""
    path = root / name
    path.write_bytes(b"".join(good + line for line in lines) + good)
    return path, [2 * k + 2 for k in range(len(lines))]


def _line_kinds(drops, data_file: Path) -> dict[int, str]:
    """line number -> kind of each drop: every drop's message names its file and line."""
    out = {}
    for d in drops:
        prefix = f"{data_file}:"
        start = d.reason.index(prefix) + len(prefix)
        out[int(d.reason[start:].split(":", 1)[0].split(" ", 1)[0])] = d.kind
    return out


def skip_file(root: Path, cases: list[Case], recipe: str) -> tuple[Path, list[int], list[Case]]:
    """One JSONL with every case of `recipe` (each after a good record); the line numbers."""
    media = LLM_RECIPES[recipe][1]
    mine = [c for r, c in llm_cases(cases) if r == recipe and c.name != "empty_jsonl"]
    lines = [line_of(c, c.medium if c.medium != "text" else media[0], f"case_{c.name}") for c in mine]
    data_file, numbers = _mixed_file(root, f"{recipe}_skip.jsonl", lines, good_line(media[0], "good"))
    return data_file, numbers, mine


@pytest.mark.parametrize("recipe", list(LLM_RECIPES))
def test_skip_policy_counts_every_case_per_reason(corpus, recipe):
    root, cases = corpus
    data_file, numbers, mine = skip_file(root, cases, recipe)

    loader, n_bad = recipe_batches(recipe, "skip", data_file)
    _, skipped_lines = read_records(data_file, skip_bad=True)  # what training_data skipped
    stats = DataStats()
    stats.add_dropped(skipped_lines)
    drops = list(skipped_lines)
    for batch in loader:  # to the end: no crash, no hang
        stats.update(batch)
        drops += batch.dropped
    bad = {n: c for n, c in zip(numbers, mine) if c.expect != "ok"}
    assert len(n_bad) == len(skipped_lines)
    assert _line_kinds(drops, data_file) == {n: c.expect for n, c in bad.items()}
    # the len(mine) + 1 good records and every unusual medium train
    assert stats.examples == (len(mine) + 1) + (len(mine) - len(bad))
    assert stats.as_dict()["dropped_by_reason"] == dict(sorted(Counter(c.expect for c in bad.values()).items()))
    for d in drops:  # each names its record (when the line parsed) and its medium's path
        case = bad[_line_kinds([d], data_file).popitem()[0]]
        if case.expect not in ("malformed_json", "not_utf8"):
            assert d.id == f"case_{case.name}"
        if case.file:
            assert str(root / case.file) in d.reason


@pytest.mark.parametrize("recipe,case", OK_LLM, ids=_case_ids(OK_LLM))
def test_unusual_media_are_converted_not_clipped(corpus, recipe, case):
    root, _ = corpus
    encoder = _model(recipe).encoders[case.medium]
    raw = encoder.load(str(root / case.file), "corpus")
    check_reference(case, raw)
    data_file = root / f"{recipe}_{case.name}.jsonl"
    data_file.write_bytes(line_of(case, case.medium, "unusual"))
    (batch,) = list(recipe_batches(recipe, "error", data_file, batch_size=1)[0])
    assert batch.ids == ["unusual"] and not batch.dropped
    assert torch.equal(batch.media[case.medium], encoder.preprocess([raw]))


def check_reference(case: Case, raw) -> None:
    """`raw`, the decoded medium, against what the corpus wrote."""
    if case.medium in ("image", "pair"):
        got = np.asarray(raw).astype(int)
        assert got.shape == case.reference.shape
        tolerance = 8 if case.file.endswith(".jpg") else 0  # JPEG is lossy; the rest is exact
        assert np.abs(got - case.reference).max() <= tolerance, case.name
        if case.name == "png_16bit":  # the old failure: 16-bit values clipped to 255
            assert (got == 255).mean() < 0.01
    elif case.medium == "video":  # 3 frames sampled 8 times: first and last kept, others repeated
        ref = case.reference.astype(float)
        got = raw.numpy().astype(float)
        assert got.shape == (8, *ref.shape[1:])
        assert np.abs(got[0] - ref[0]).mean() < 6 and np.abs(got[-1] - ref[-1]).mean() < 6
        assert len({f.tobytes() for f in raw.numpy()}) == 3
    elif case.medium == "audio":  # 8 kHz stereo -> 16 kHz mono, the tone's pitch kept
        wave = raw.numpy()
        assert abs(len(wave) - 16000) <= 64 and np.isfinite(wave).all()
        spectrum = np.abs(np.fft.rfft(wave))
        peak_hz = np.argmax(spectrum) * 16000 / len(wave)
        assert abs(peak_hz - case.reference) < 3, peak_hz
        assert 0.15 < np.abs(wave).max() < 0.45  # averaged channels, not summed
    else:
        raise AssertionError(f"no reference check for {case.medium}")


# ---------------------------------------------------------------- InstructPix2Pix: image pairs

def triplet(rid: str, original: str = f"{MEDIA}/good.png", edited: str = f"{MEDIA}/good.png") -> dict:
    return {"id": rid, "original_image": original, "edit_prompt": "make the circle blue", "edited_image": edited}


def triplet_line(case: Case, rid: str) -> bytes:
    if case.medium == "text":
        return case.line(triplet(rid))
    if case.medium == "pair":  # a good input image, an edited image of another size
        return (json.dumps(triplet(rid, edited=case.file)) + "\n").encode()
    return (json.dumps(triplet(rid, original=case.file)) + "\n").encode()


PAIR_CASES = [c for c in _CASES if c.medium in ("image", "pair")] + triplet_text_cases()
BAD_PAIR = [c for c in PAIR_CASES if c.expect != "ok"]
OK_PAIR = [c for c in PAIR_CASES if c.expect == "ok"]


@lru_cache(maxsize=None)
def _edit_tokenizer():
    from mmtune.diffusion.components import build_components
    from mmtune.recipes.instruct_pix2pix import load_edit_config

    return build_components(load_edit_config("tiny").model).tokenizer


def pair_batches(data_file: Path, skip: bool, batch_size: int = 2):
    """InstructPix2Pix's data path: read_triplets -> TripletDataset -> collate_edits."""
    from mmtune.diffusion.data import TripletDataset, read_triplets
    from mmtune.diffusion.train import collate_edits

    triplets, bad = read_triplets(data_file, skip_bad=skip)
    dataset = TripletDataset(triplets, _edit_tokenizer(), resolution=32, skip_bad=skip)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_edits), bad


@pytest.mark.parametrize("case", BAD_PAIR, ids=[c.name for c in BAD_PAIR])
def test_pix2pix_default_policy_error_names_file_line_and_record(corpus, tmp_path, case):
    root, _ = corpus
    data_file = root / f"pix2pix_{case.name}_{tmp_path.name}.jsonl"
    rid = f"bad_{case.name}"
    good = (json.dumps(triplet("good0")) + "\n").encode()
    data_file.write_bytes(b"" if case.name == "empty_jsonl" else good + triplet_line(case, rid))
    with pytest.raises((DataError, ValueError)) as e:
        list(pair_batches(data_file, skip=False)[0])
    assert isinstance(e.value, DataError), repr(e.value)
    assert e.value.reason == case.expect, str(e.value)
    if case.name == "empty_jsonl":
        assert str(data_file) in str(e.value) and "no records" in str(e.value)
        return
    assert_names(str(e.value), data_file, 2, None if case.expect in ("malformed_json", "not_utf8") else rid,
                 case, root)


def pair_skip_file(root: Path) -> tuple[Path, list[int], list[Case]]:
    mine = [c for c in PAIR_CASES if c.name != "empty_jsonl"]
    good = (json.dumps(triplet("good")) + "\n").encode()
    lines = [triplet_line(c, f"case_{c.name}") for c in mine]
    data_file, numbers = _mixed_file(root, "pix2pix_skip.jsonl", lines, good)
    return data_file, numbers, mine


def test_pix2pix_skip_policy_counts_every_case_per_reason(corpus):
    root, _ = corpus
    data_file, numbers, mine = pair_skip_file(root)
    loader, skipped_lines = pair_batches(data_file, skip=True)
    stats = DataStats()
    stats.add_dropped(skipped_lines)
    drops = list(skipped_lines)
    for batch in loader:
        stats.examples += len(batch)
        stats.add_dropped(batch.dropped)
        drops += batch.dropped
        assert batch.original.shape == batch.edited.shape and torch.isfinite(batch.original).all()
    bad = {n: c for n, c in zip(numbers, mine) if c.expect != "ok"}
    assert _line_kinds(drops, data_file) == {n: c.expect for n, c in bad.items()}
    assert stats.examples == (len(mine) + 1) + (len(mine) - len(bad))
    assert stats.as_dict()["dropped_by_reason"] == dict(sorted(Counter(c.expect for c in bad.values()).items()))


@pytest.mark.parametrize("case", OK_PAIR, ids=[c.name for c in OK_PAIR])
def test_pix2pix_unusual_images_are_converted_not_clipped(corpus, case):
    from mmtune.diffusion.data import to_tensor

    root, _ = corpus
    data_file = root / f"pix2pix_{case.name}.jsonl"
    data_file.write_bytes(triplet_line(case, "unusual"))
    (batch,) = list(pair_batches(data_file, skip=False, batch_size=1)[0])
    expected = to_tensor(Image.fromarray(case.reference), 32)
    tolerance = 8 / 127.5 if case.file.endswith(".jpg") else 1e-6  # JPEG is lossy
    assert (batch.original[0] - expected).abs().max() <= tolerance


# ---------------------------------------------------------------- two real runs, through the CLI

def assert_run_counts(summary: dict, cases: list[Case], read_time: set[str], n_records: int) -> None:
    """A stage summary: lines the reader skipped in `bad_records`; every bad record, whether the
    reader or the batches left it out, per reason in `data`."""
    bad = [c for c in cases if c.expect != "ok"]
    assert summary["bad_records"] == sum(c.expect in read_time for c in bad)
    counted = summary["data"]
    assert counted["dropped_by_reason"] == dict(sorted(Counter(c.expect for c in bad).items()))
    assert counted["examples"] == n_records - sum(c.expect not in read_time for c in bad)
    assert np.isfinite(summary["final_loss"])


def test_llava_run_with_skip_completes_and_counts(corpus, tmp_path):
    """`mmtune train llava --stage finetune` on every image and text case, all in one step."""
    from mmtune.cli import main as cli

    root, cases = corpus
    data_file, numbers, mine = skip_file(root, cases, "llava")
    read_time = {"malformed_json", "not_utf8", "placeholder_mismatch"}  # the rest fail when batched
    n_records = 2 * len(mine) + 1 - sum(c.expect in read_time for c in mine)  # all in one batch
    cli(["train", "llava", "--config", "tiny", "--output-dir", str(tmp_path / "run"), "--data", str(root),
         "--stage", "finetune", "--fresh", f"stages.finetune.data={data_file.name}", "train.on_bad_sample=skip",
         "train.max_bad_fraction=1.0",
         f"stages.finetune.batch_size={n_records}", "stages.finetune.max_steps=1", "train.mixed_precision=no"])
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())["stages"]["finetune"]
    assert_run_counts(summary, mine, read_time, n_records)


def test_pix2pix_run_with_skip_completes_and_counts(corpus, tmp_path):
    from mmtune.cli import main as cli

    root, _ = corpus
    data_file, numbers, mine = pair_skip_file(root)
    read_time = {"malformed_json", "not_utf8", "bad_record"}
    n_records = 2 * len(mine) + 1 - sum(c.expect in read_time for c in mine)
    cli(["train", "instruct_pix2pix", "--config", "tiny", "--output-dir", str(tmp_path / "run"), "--data", str(root),
         f"stages.train.data={data_file.name}", "train.on_bad_sample=skip", "train.max_bad_fraction=1.0",
         f"stages.train.batch_size={n_records}", "max_steps=1", "stages.train.warmup_steps=0",
         "model.unet.block_out_channels=[8,16]", "model.unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
         "model.unet.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]", "edit.resolution=16"])
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert_run_counts(summary, mine, read_time, n_records)


def test_corpus_covers_every_reason():
    """Each way a record can be bad has a case (so a new reason needs a new corpus file)."""
    from mmtune.data.errors import REASONS

    covered = {c.expect for c in _CASES + triplet_text_cases()} - {"ok"}
    # no_supervised_tokens: only a template that renders an answer to nothing reaches it
    assert covered == set(REASONS) - {"no_supervised_tokens"}


def test_damaged_bytes_give_a_data_error_or_a_medium(corpus, tmp_path):
    """Random damage (bytes overwritten, cut short, zeroed runs) to each kind of file: the
    decoder returns a medium or raises DataError, never another exception (fixed seed)."""
    from mmtune.data.media.audio import load_audio
    from mmtune.data.media.image import load_image
    from mmtune.data.media.video import load_video

    root, _ = corpus
    loaders = {".png": lambda f: load_image(f, "x"), ".jpg": lambda f: load_image(f, "x"),
               ".tif": lambda f: load_image(f, "x"), ".mp4": lambda f: load_video(f, "x", 8),
               ".wav": lambda f: load_audio(f, "x", 16000)}
    rng = np.random.default_rng(0)
    outcomes = Counter()
    for name in ("good.png", "cmyk.jpg", "grey32.tif", "good.mp4", "stereo_8k.wav"):
        data = (root / MEDIA / name).read_bytes()
        for k in range(25):
            b = bytearray(data)
            at = int(rng.integers(len(b)))
            if k % 3 == 0:
                b[at:at + 8] = rng.integers(0, 256, len(b[at:at + 8]), dtype=np.uint8).tobytes()
            elif k % 3 == 1:
                b = b[:max(at, 1)]
            else:
                b[at:at + 200] = bytes(len(b[at:at + 200]))
            path = tmp_path / f"{k}_{name}"
            path.write_bytes(bytes(b))
            try:
                loaders[path.suffix](str(path))
                outcomes["decoded"] += 1
            except DataError as e:
                assert "\n" not in str(e) and str(path) in str(e)
                outcomes[e.reason] += 1
    assert sum(outcomes.values()) == 125 and outcomes["decoded"] < 125


def test_in_memory_16bit_image_preprocesses_like_the_file(corpus):
    """The Python API path (a PIL image handed to an encoder) converts as the file path does."""
    root, _ = corpus
    encoder = _model("llava").encoders["image"]
    path = str(root / MEDIA / "grey16.png")
    with Image.open(path) as im:
        assert im.mode == "I;16"
        in_memory = encoder.preprocess([im])
    assert torch.equal(in_memory, encoder.preprocess([encoder.load(path, "x")]))


def test_error_from_a_dataloader_worker_is_still_one_line(corpus, tmp_path):
    """torch re-raises a worker's error with the worker's traceback as its text; the one line
    that names file, line, record and path is what the DataError keeps."""
    root, cases = corpus
    case = next(c for c in cases if c.name == "bomb_png")
    data_file = root / f"worker_{tmp_path.name}.jsonl"
    data_file.write_bytes(good_line("image", "good0") + line_of(case, "image", "bad_bomb"))
    with pytest.raises(DataError) as e:
        list(recipe_batches("llava", "error", data_file, num_workers=1)[0])
    assert_names(str(e.value), data_file, 2, "bad_bomb", case, root)
