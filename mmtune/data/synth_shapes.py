"""Synthetic image-QA task: coloured shapes on a dark background.

A small, fully controlled benchmark that proves a tiny LLaVA-style model
actually *reads the image*: every answer is a single word that can only be
inferred from the pixels (colour, shape, left/right position, count, and
colour<->shape binding).

``generate(out_dir)`` writes::

    out_dir/images/{split}_{i:05d}.png   RGB, image_size x image_size
    out_dir/train.jsonl                  multi-turn QA, one record per train image
    out_dir/captions.jsonl               one caption record per train image
    out_dir/test.jsonl                   held-out images, ONE question per record
    out_dir/meta.json                    arguments, counts, chance accuracy

Record format (image paths relative to the JSONL file's directory)::

    {"id": "test_00012_q0",
     "messages": [{"role": "user", "content": "<image>\\nwhat colour is the shape ?"},
                  {"role": "assistant", "content": "red"}],
     "images": ["images/test_00012.png"],
     "meta": {"type": "colour", "split": "single", "shapes": [...]}}

Text is lowercase words and punctuation separated by single spaces, so
``text.split()`` yields tokens that are all in :data:`VOCAB` (the ``<image>``
placeholder and the newline after it are not part of ``VOCAB``).

Everything is deterministic in ``seed`` (private ``random.Random`` streams,
train and test use different streams).
"""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from typing import Any

from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLOURS",
    "COLOUR_RGB",
    "BACKGROUND",
    "POSITIONS",
    "COUNT_WORDS",
    "QUESTION_TYPES",
    "ANSWERS",
    "TYPE_SPLIT",
    "CAPTION_PROMPTS",
    "VOCAB",
    "IMAGE_TOKEN",
    "generate",
    "render",
    "caption_for",
]

IMAGE_TOKEN = "<image>"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
BACKGROUND: tuple[int, int, int] = (40, 40, 40)
POSITIONS: tuple[str, ...] = ("left", "right")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")

# question type -> the possible answers (test answers are drawn uniformly from these)
ANSWERS: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "position": POSITIONS,
    "count": COUNT_WORDS,
    "binding_colour": COLOURS,  # "what colour is the circle ?"
    "binding_shape": SHAPES,  # "what shape is the red one ?"
}
QUESTION_TYPES: tuple[str, ...] = tuple(ANSWERS)
# question type -> image kind ("split") it is asked about in the test set
TYPE_SPLIT: dict[str, str] = {
    "colour": "single",
    "shape": "single",
    "position": "single",
    "count": "count",
    "binding_colour": "binding",
    "binding_shape": "binding",
}

Q_COLOUR = "what colour is the shape ?"
Q_SHAPE = "what shape is it ?"
Q_POSITION = "is the shape on the left or the right ?"
Q_COUNT = "how many shapes are there ?"
Q_BIND_COLOUR = "what colour is the {shape} ?"
Q_BIND_SHAPE = "what shape is the {colour} one ?"

CAPTION_PROMPTS: tuple[str, ...] = (
    "describe the image .",
    "what is in the image ?",
    "describe what you see .",
    "give a short description of the image .",
)

# image kinds used for training records and their sampling weights
TRAIN_KINDS: tuple[tuple[str, float], ...] = (("single", 0.5), ("count", 0.25), ("binding", 0.25))


def _question(qtype: str, shapes: list[dict], target: dict | None) -> tuple[str, str]:
    """(question, answer) of type ``qtype`` about ``target`` (one of ``shapes``)."""
    if qtype == "colour":
        return Q_COLOUR, target["colour"]
    if qtype == "shape":
        return Q_SHAPE, target["shape"]
    if qtype == "position":
        return Q_POSITION, target["position"]
    if qtype == "count":
        return Q_COUNT, COUNT_WORDS[len(shapes) - 1]
    if qtype == "binding_colour":
        return Q_BIND_COLOUR.format(shape=target["shape"]), target["colour"]
    if qtype == "binding_shape":
        return Q_BIND_SHAPE.format(colour=target["colour"]), target["shape"]
    raise ValueError(f"unknown question type {qtype!r}")


def caption_for(shapes: list[dict], kind: str) -> str:
    """Caption text; multi-shape captions list shapes left to right."""
    if kind == "single":
        s = shapes[0]
        return f"a {s['colour']} {s['shape']} on the {s['position']} ."
    ordered = sorted(shapes, key=lambda s: (s["cx"], s["cy"]))
    items = [f"a {s['colour']} {s['shape']}" for s in ordered]
    n = len(items)
    if n == 1:
        return f"one shape : {items[0]} ."
    listing = " , ".join(items[:-1]) + " and " + items[-1]
    return f"{COUNT_WORDS[n - 1]} shapes : {listing} ."


def _build_vocab() -> list[str]:
    texts: list[str] = [Q_COLOUR, Q_SHAPE, Q_POSITION, Q_COUNT, *CAPTION_PROMPTS]
    texts += [Q_BIND_COLOUR.format(shape=s) for s in SHAPES]
    texts += [Q_BIND_SHAPE.format(colour=c) for c in COLOURS]
    for answers in ANSWERS.values():
        texts += list(answers)
    for c in COLOURS:
        for s in SHAPES:
            for p in POSITIONS:
                texts.append(caption_for([{"colour": c, "shape": s, "position": p, "cx": 0, "cy": 0}], "single"))
    fake = [{"colour": c, "shape": s, "cx": i, "cy": 0} for i, (c, s) in enumerate(zip(COLOURS, SHAPES))]
    for n in (1, 2, 3):
        texts.append(caption_for(fake[:n], "count"))
    return sorted({tok for t in texts for tok in t.split()})


VOCAB: list[str] = _build_vocab()


# ----------------------------------------------------------------------------- layout / drawing


def _size_range(image_size: int, lo: int, hi: int) -> tuple[int, int]:
    f = image_size / 64.0
    return max(3, round(lo * f)), max(3, round(hi * f))


def _box(s: dict) -> tuple[int, int, int, int]:
    """Inclusive pixel bbox (x0, y0, x1, y1) of a shape."""
    x0 = s["cx"] - s["size"] // 2
    y0 = s["cy"] - s["size"] // 2
    return x0, y0, x0 + s["size"] - 1, y0 + s["size"] - 1


def _draw(draw: ImageDraw.ImageDraw, s: dict) -> None:
    x0, y0, x1, y1 = _box(s)
    fill = COLOUR_RGB[s["colour"]]
    if s["shape"] == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif s["shape"] == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif s["shape"] == "triangle":  # pointing up
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(s["shape"])


def render(shapes: list[dict], image_size: int = 64) -> Image.Image:
    """Draw ``shapes`` (dicts with shape, colour, cx, cy, size) on the dark background."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    d = ImageDraw.Draw(img)
    for s in shapes:
        _draw(d, s)
    return img


def _single_layout(rng: random.Random, image_size: int, colour: str | None = None,
                   shape: str | None = None, position: str | None = None) -> list[dict]:
    lo, hi = _size_range(image_size, 22, 28)
    size = rng.randint(lo, hi)
    colour = colour or rng.choice(COLOURS)
    shape = shape or rng.choice(SHAPES)
    position = position or rng.choice(POSITIONS)
    margin = max(1, image_size // 32)
    half = size // 2
    cmin, cmax = half + margin, image_size - (size - half) - margin
    if position == "left":  # centre in the left 40 %
        cx = rng.randint(cmin, max(cmin, int(0.4 * image_size)))
    else:  # centre in the right 40 %
        cx = rng.randint(min(cmax, int(0.6 * image_size + 0.999)), cmax)
    cy = rng.randint(cmin, cmax)
    return [{"shape": shape, "colour": colour, "cx": cx, "cy": cy, "size": size, "position": position}]


def _multi_layout(rng: random.Random, image_size: int, n: int, colours: list[str] | None = None,
                  shapes: list[str] | None = None) -> list[dict]:
    """n non-overlapping shapes with distinct colours and distinct shapes."""
    colours = colours if colours is not None else rng.sample(COLOURS, n)
    shapes = shapes if shapes is not None else rng.sample(SHAPES, n)
    lo, hi = _size_range(image_size, 14, 20)
    margin = max(1, image_size // 32)
    gap = max(2, image_size // 32)
    for _ in range(1000):
        placed: list[dict] = []
        for c, sh in zip(colours, shapes):
            for _ in range(100):
                size = rng.randint(lo, hi)
                half = size // 2
                cx = rng.randint(half + margin, image_size - (size - half) - margin)
                cy = rng.randint(half + margin, image_size - (size - half) - margin)
                cand = {"shape": sh, "colour": c, "cx": cx, "cy": cy, "size": size}
                a = _box(cand)
                if all(a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]
                       for b in map(_box, placed)):
                    placed.append(cand)
                    break
            else:
                break
        if len(placed) == n:
            for s in placed:
                s["position"] = "left" if s["cx"] < image_size / 2 else "right"
            return placed
    raise RuntimeError(f"could not place {n} shapes in a {image_size}px image")


def _random_image(rng: random.Random, kind: str, image_size: int) -> list[dict]:
    if kind == "single":
        return _single_layout(rng, image_size)
    n = rng.randint(1, 3) if kind == "count" else rng.randint(2, 3)
    return _multi_layout(rng, image_size, n)


def _conditioned_image(rng: random.Random, qtype: str, answer: str, image_size: int) -> tuple[list[dict], dict]:
    """An image whose correct answer to a ``qtype`` question is ``answer``; returns (shapes, target)."""
    if qtype in ("colour", "shape", "position"):
        shapes = _single_layout(rng, image_size, **{qtype: answer})
        return shapes, shapes[0]
    if qtype == "count":
        shapes = _multi_layout(rng, image_size, COUNT_WORDS.index(answer) + 1)
        return shapes, shapes[0]
    n = rng.randint(2, 3)
    if qtype == "binding_colour":
        colours = [answer] + rng.sample([c for c in COLOURS if c != answer], n - 1)
        shapes_ = rng.sample(SHAPES, n)
    else:  # binding_shape
        shapes_ = [answer] + rng.sample([s for s in SHAPES if s != answer], n - 1)
        colours = rng.sample(COLOURS, n)
    shapes = _multi_layout(rng, image_size, n, colours=colours, shapes=shapes_)
    target = shapes[0]
    rng.shuffle(shapes)  # drawing / listing order carries no information
    return shapes, target


# ----------------------------------------------------------------------------- records


def _user(text: str, first: bool) -> dict:
    return {"role": "user", "content": (IMAGE_TOKEN + "\n" + text) if first else text}


def _public_shapes(shapes: list[dict]) -> list[dict]:
    return [{k: s[k] for k in ("shape", "colour", "cx", "cy", "size")} for s in shapes]


def _train_questions(rng: random.Random, kind: str, shapes: list[dict]) -> list[tuple[str, str, str]]:
    """[(type, question, answer)] for a training image of ``kind``."""
    if kind == "single":
        qs = [(t, *_question(t, shapes, shapes[0])) for t in ("colour", "shape", "position")]
        rng.shuffle(qs)
        return qs
    # distinct (type, target) pairs, so no question repeats (a 1-shape image gets both binding types)
    nbind = 2 if kind == "count" else 3
    cands = [(t, s) for s in shapes for t in ("binding_colour", "binding_shape")]
    qs = [(t, *_question(t, shapes, s)) for t, s in rng.sample(cands, min(nbind, len(cands)))]
    count_q = ("count", *_question("count", shapes, None))
    if kind == "count":
        qs.insert(0, count_q)  # count images: counting first
    else:
        qs.insert(rng.randint(0, len(qs)), count_q)
    return qs


def _write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def generate(out_dir: str | os.PathLike, n_train: int = 2000, n_test: int = 300, seed: int = 0,
             image_size: int = 64) -> dict:
    """Write the synthetic shapes dataset to ``out_dir``; returns the meta dict (also in meta.json)."""
    if image_size < 32:
        raise ValueError("image_size must be >= 32 for shapes to stay recognisable")
    out_dir = os.fspath(out_dir)
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)

    # independent deterministic streams (string seeds are hashed with sha512 -> stable across runs)
    rng_train = random.Random(f"mmtune.synth_shapes:{seed}:train")
    rng_cap = random.Random(f"mmtune.synth_shapes:{seed}:caption")
    rng_test = random.Random(f"mmtune.synth_shapes:{seed}:test")

    # ---- train + captions
    kinds, weights = zip(*TRAIN_KINDS)
    train, captions = [], []
    kind_counts: Counter = Counter()
    q_counts: Counter = Counter()
    for i in range(n_train):
        kind = rng_train.choices(kinds, weights)[0]
        shapes = _random_image(rng_train, kind, image_size)
        name = f"train_{i:05d}"
        rel = f"images/{name}.png"
        render(shapes, image_size).save(os.path.join(out_dir, rel))
        qs = _train_questions(rng_train, kind, shapes)
        msgs = []
        for j, (_, q, a) in enumerate(qs):
            msgs += [_user(q, j == 0), {"role": "assistant", "content": a}]
        kind_counts[kind] += 1
        q_counts.update(t for t, _, _ in qs)
        pub = _public_shapes(shapes)
        train.append({"id": name, "messages": msgs, "images": [rel],
                      "meta": {"type": "qa", "split": kind, "types": [t for t, _, _ in qs], "shapes": pub}})
        captions.append({"id": f"{name}_cap",
                         "messages": [_user(rng_cap.choice(CAPTION_PROMPTS), True),
                                      {"role": "assistant", "content": caption_for(shapes, kind)}],
                         "images": [rel], "meta": {"type": "caption", "split": kind, "shapes": pub}})

    # ---- test: round-robin over question types, each type's answers drawn uniformly (balanced blocks)
    pools: dict[str, list[str]] = {t: [] for t in QUESTION_TYPES}
    test = []
    type_counts: Counter = Counter()
    answer_counts: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES}
    n_present: dict[str, list[int]] = {"binding_colour": [], "binding_shape": []}
    for i in range(n_test):
        qtype = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        if not pools[qtype]:
            pools[qtype] = list(ANSWERS[qtype])
            rng_test.shuffle(pools[qtype])
        answer = pools[qtype].pop()
        shapes, target = _conditioned_image(rng_test, qtype, answer, image_size)
        q, a = _question(qtype, shapes, target)
        assert a == answer
        name = f"test_{i:05d}"
        rel = f"images/{name}.png"
        render(shapes, image_size).save(os.path.join(out_dir, rel))
        test.append({"id": f"{name}_q0",
                     "messages": [_user(q, True), {"role": "assistant", "content": a}],
                     "images": [rel],
                     "meta": {"type": qtype, "split": TYPE_SPLIT[qtype], "shapes": _public_shapes(shapes)}})
        type_counts[qtype] += 1
        answer_counts[qtype][a] += 1
        if qtype in n_present:
            n_present[qtype].append(len(shapes))

    _write_jsonl(os.path.join(out_dir, "train.jsonl"), train)
    _write_jsonl(os.path.join(out_dir, "captions.jsonl"), captions)
    _write_jsonl(os.path.join(out_dir, "test.jsonl"), test)

    meta: dict[str, Any] = {
        "generator": "mmtune.data.synth_shapes",
        "args": {"n_train": n_train, "n_test": n_test, "seed": seed, "image_size": image_size},
        "files": {"train": "train.jsonl", "captions": "captions.jsonl", "test": "test.jsonl", "images": "images"},
        "counts": {
            "train": {"records": len(train), "kinds": {k: kind_counts[k] for k in kinds},
                      "questions": {t: q_counts[t] for t in QUESTION_TYPES}},
            "captions": {"records": len(captions)},
            "test": {
                "records": len(test),
                "types": {t: type_counts[t] for t in QUESTION_TYPES},
                "splits": {s: sum(type_counts[t] for t in QUESTION_TYPES if TYPE_SPLIT[t] == s)
                           for s in ("single", "count", "binding")},
                "answers": {t: {a: answer_counts[t][a] for a in ANSWERS[t]} for t in QUESTION_TYPES},
            },
        },
        "question_types": {t: {"split": TYPE_SPLIT[t], "answers": list(ANSWERS[t])} for t in QUESTION_TYPES},
        # uniform-guess accuracy per question type (test answers are uniform over these)
        "chance": {t: 1.0 / len(ANSWERS[t]) for t in QUESTION_TYPES},
        # stronger baseline for binding: guessing uniformly among colours/shapes PRESENT in the image
        # (i.e. seeing the image but not binding colour to shape); mean of 1/#shapes over the test set
        "chance_present": {t: (sum(1.0 / k for k in v) / len(v) if v else None) for t, v in n_present.items()},
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta
