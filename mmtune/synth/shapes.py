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

from .shapes_draw import (
    BACKGROUND,
    COLOUR_RGB,
    COLOURS,
    COUNT_WORDS,
    POSITIONS,
    SHAPES,
    _conditioned_image,
    _random_image,
    render,
)

# The task's own names; the drawing names above (SHAPES, COLOURS, render, ...) come from shapes_draw.
__all__ = [
    "QUESTION_TYPES",
    "ANSWERS",
    "TYPE_SPLIT",
    "CAPTION_PROMPTS",
    "VOCAB",
    "IMAGE_TOKEN",
    "generate",
    "caption_for",
]

IMAGE_TOKEN = "<image>"

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
        "generator": "mmtune.synth.shapes",
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
