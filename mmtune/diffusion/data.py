"""InstructPix2Pix triplets (input image, edit instruction, edited image) from JSONL or a
local Hugging Face `datasets` folder, read strictly: every problem names its file and line.

JSONL, one object per line, image paths relative to the file (the column names are those
of the published data, timbrooks/instructpix2pix-clip-filtered)::

    {"id": "0001", "original_image": "images/0001_in.png", "edit_prompt": "make the circle blue",
     "edited_image": "images/0001_out.png", "meta": {...}}

A `datasets` folder (`Dataset.save_to_disk`, or parquet files as published) has the
columns original_image, edit_prompt, edited_image (images as `datasets.Image`).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..batch import Dropped
from ..data.errors import DataError
from ..data.media.image import MediaError, load_image, to_rgb
from ..data.formats.records import RecordError, read_jsonl

REQUIRED = ("original_image", "edit_prompt", "edited_image")
OPTIONAL = ("id", "meta", "original_prompt", "edited_prompt")  # the last two: published captions


@dataclass
class Triplet:
    id: str
    prompt: str
    original: Callable[[], Image.Image]  # decoded on use: datasets are larger than memory
    edited: Callable[[], Image.Image]
    source: str  # "file:line" or "folder[row]", for error messages
    meta: dict = field(default_factory=dict)
    names: tuple[str, str] = ("input image", "edited image")  # the two images' paths, for errors


def _parse_line(obj: object, where: str, base: Path) -> Triplet:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a triplet must be a JSON object")
    unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {unknown}; expected {list(REQUIRED)} (+ {list(OPTIONAL)})")
    for key in REQUIRED:
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise RecordError(f"{where}: field {key!r} must be a non-empty string")
    original, edited = (str(base / obj[k]) for k in ("original_image", "edited_image"))
    return Triplet(id=str(obj.get("id", where)), prompt=obj["edit_prompt"], source=where,
                   original=lambda: load_image(original, where), edited=lambda: load_image(edited, where),
                   meta=obj.get("meta") or {}, names=(original, edited))


def _decode(value, where: str) -> Image.Image:
    """A `datasets.Image` cell: a PIL image once decoded, or {"bytes", "path"} raw."""
    if isinstance(value, Image.Image):
        return to_rgb(value, f"{where}: image")
    if isinstance(value, dict) and value.get("bytes"):
        try:
            return to_rgb(Image.open(io.BytesIO(value["bytes"])), f"{where}: image")
        except (OSError, Image.DecompressionBombError) as e:
            raise MediaError(f"{where}: image cannot be decoded ({e})") from None
    raise MediaError(f"{where}: expected an image, got {type(value).__name__}")


def read_hf_folder(path: Path) -> list[Triplet]:
    import datasets

    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    else:
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{path}: neither a saved `datasets` folder nor parquet files")
        ds = datasets.Dataset.from_parquet(files)
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise RecordError(f"{path}: missing column(s) {missing}; has {ds.column_names}")

    def cell(i: int, col: str) -> Callable[[], Image.Image]:
        return lambda: _decode(ds[i][col], f"{path}[row {i}].{col}")

    return [Triplet(id=f"{path.name}_{i}", prompt=ds[i]["edit_prompt"], original=cell(i, "original_image"),
                    edited=cell(i, "edited_image"), source=f"{path}[row {i}]")
            for i in range(len(ds))]


def read_triplets(path: str | Path, skip_bad: bool = False) -> tuple[list[Triplet], list[Dropped]]:
    """A .jsonl file, or a directory holding a `datasets` folder; returns (triplets, bad lines)."""
    path = Path(path)
    if path.is_dir():
        return read_hf_folder(path), []
    return read_jsonl(path, _parse_line, skip_bad)


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """[3, R, R] in [-1, 1], the range diffusers' VAEs and pipelines use."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


class TripletDataset(torch.utils.data.Dataset):
    """(original [3,R,R], edited [3,R,R], instruction ids [L], record id); the same resize for
    both images.

    A pair that cannot be read, or whose two images differ in size (an edit keeps the frame,
    so a mismatch means the pair is wrong: resizing would hide it), raises a DataError naming
    the line and id; with `skip_bad` the item is a `Dropped` that `diffusion.train.collate_edits` counts."""

    def __init__(self, triplets: list[Triplet], tokenizer, resolution: int, random_flip: bool = False,
                 skip_bad: bool = False) -> None:
        self.triplets, self.tokenizer, self.resolution = triplets, tokenizer, resolution
        self.random_flip, self.skip_bad = random_flip, skip_bad

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str] | Dropped:
        t = self.triplets[i]
        try:
            original, edited = t.original(), t.edited()
            if original.size != edited.size:
                raise MediaError(f"{t.source}: the input image {t.names[0]} is {original.size[0]}x{original.size[1]} "
                                 f"but the edited image {t.names[1]} is {edited.size[0]}x{edited.size[1]}",
                                 "size_mismatch")
        except DataError as e:
            if self.skip_bad:
                return Dropped(t.id, str(e), e.reason)
            raise e.for_record(t.id) from None
        ids = tokenize(self.tokenizer, [t.prompt])[0]
        original, edited = to_tensor(original, self.resolution), to_tensor(edited, self.resolution)
        if self.random_flip and torch.rand(()) < 0.5:  # the global RNG: checkpoints restore it
            original, edited = original.flip(-1), edited.flip(-1)
        return original, edited, ids, t.id


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Exactly as diffusers' pipelines tokenize prompts: padded to model_max_length."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids
