"""Synthetic image-editing task: shapes on a dark background, an instruction, the edited target.

Each triplet edits exactly one named shape ("make the circle blue", "remove the square"), so
the edit is only right if the model reads the instruction *and* finds that shape in the
image. Returning the input unchanged scores 0 on the success metric (the target colour
always differs from the current one), which makes learning easy to tell from copying.

``generate(out_dir)`` writes::

    out_dir/images/{split}_{i:05d}_{in,out}.png
    out_dir/train.jsonl, out_dir/test.jsonl   InstructPix2Pix triplets (see mmtune.diffusion.data)
    out_dir/meta.json

A record::

    {"id": "test_00003", "original_image": "images/test_00003_in.png",
     "edit_prompt": "make the circle blue", "edited_image": "images/test_00003_out.png",
     "meta": {"edit": "recolour", "target": "blue", "shape": {"shape": "circle", "cx": ..}}}

``meta.shape`` is the edited shape as drawn in the input: the evaluation re-renders it as
the mask of the region whose colour must change (``meta.target`` is "background" for removal).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from .shapes_draw import BACKGROUND, COLOURS, SHAPES, _draw, _multi_layout, _single_layout, render

RECOLOUR_TEMPLATES = ("make the {shape} {colour}", "turn the {shape} {colour}", "colour the {shape} {colour}")
REMOVE_TEMPLATES = ("remove the {shape}", "delete the {shape}")
REMOVED = "background"  # the target "colour" of a removed shape's region


def edit_words() -> list[str]:
    """Every word an instruction can use, in a fixed order (token ids must not depend on data)."""
    words: list[str] = []
    for text in RECOLOUR_TEMPLATES + REMOVE_TEMPLATES:
        for w in text.split():
            if not w.startswith("{") and w not in words:
                words.append(w)
    return words + list(SHAPES) + list(COLOURS)


def shape_mask(shape: dict, image_size: int) -> Image.Image:
    """The pixels `shape` covers, as a 1-bit image (drawn exactly as the renderer draws it)."""
    mask = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    _draw(ImageDraw.Draw(mask), {**shape, "colour": "red"})
    return mask.convert("L").point(lambda v: 255 if v else 0).convert("1")


def _make_edit(rng: random.Random, image_size: int, remove_share: float,
               max_shapes: int) -> tuple[list, list, str, dict]:
    n = rng.randint(1, max_shapes)
    # One shape is drawn large; several are smaller, distinct in shape and colour, so the
    # instruction's shape name picks exactly one of them.
    shapes = _single_layout(rng, image_size) if n == 1 else _multi_layout(rng, image_size, n)
    target = rng.choice(shapes)
    public = {k: target[k] for k in ("shape", "colour", "cx", "cy", "size")}
    if rng.random() < remove_share:
        edited = [s for s in shapes if s is not target]
        prompt = rng.choice(REMOVE_TEMPLATES).format(shape=target["shape"])
        return shapes, edited, prompt, {"edit": "remove", "target": REMOVED, "shape": public, "n_shapes": n}
    colour = rng.choice([c for c in COLOURS if c != target["colour"]])
    edited = [dict(s, colour=colour) if s is target else s for s in shapes]
    prompt = rng.choice(RECOLOUR_TEMPLATES).format(shape=target["shape"], colour=colour)
    return shapes, edited, prompt, {"edit": "recolour", "target": colour, "shape": public, "n_shapes": n}


def generate(out_dir: str | Path, n_train: int = 3000, n_test: int = 100, seed: int = 0,
             image_size: int = 32, remove_share: float = 0.25, max_shapes: int = 2) -> dict:
    """Write the synthetic edits; returns the meta dict (also in meta.json)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts: dict[str, Counter] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        # string seeds hash stably: train and test are independent streams
        rng = random.Random(f"mmtune.synth_edits:{seed}:{split}")
        counts[split] = Counter()
        with (out / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                before, after, prompt, meta = _make_edit(rng, image_size, remove_share, max_shapes)
                name = f"{split}_{i:05d}"
                render(before, image_size).save(out / "images" / f"{name}_in.png")
                render(after, image_size).save(out / "images" / f"{name}_out.png")
                record = {"id": name, "original_image": f"images/{name}_in.png", "edit_prompt": prompt,
                          "edited_image": f"images/{name}_out.png", "meta": meta}
                f.write(json.dumps(record) + "\n")
                counts[split][meta["edit"]] += 1
    meta = {"generator": "mmtune.synth.edits",
            "args": {"n_train": n_train, "n_test": n_test, "seed": seed, "image_size": image_size,
                     "remove_share": remove_share, "max_shapes": max_shapes},
            "palette": {"background": list(BACKGROUND)},
            "counts": {split: dict(c) for split, c in counts.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
