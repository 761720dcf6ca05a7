"""What the video and audio synthetic tasks share: record layout, balanced answers, meta.json.

Each task writes the layout `mmtune data synth shapes` writes, with media files in their
own folder::

    out_dir/{videos,audios}/{split}_{i:05d}.{mp4,wav}
    out_dir/train.jsonl      training questions, one record per clip
    out_dir/captions.jsonl   one caption record per training clip (pretraining stages)
    out_dir/test.jsonl       held-out clips, ONE question per record, answers balanced
    out_dir/meta.json        arguments, counts, chance accuracy per question type

and records in mmtune's format, `meta.type` naming the question type for per-type accuracy.
"""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from typing import Iterator

from ..batch import MEDIA_TOKENS
from .shapes import _write_jsonl as write_jsonl

__all__ = ["user_turn", "balanced", "vocab_of", "write_task", "write_jsonl"]


def user_turn(text: str, modalities: tuple[str, ...] = ()) -> dict:
    """A user message: one placeholder line per medium (in the given order), then the text."""
    prefix = "".join(MEDIA_TOKENS[m] + "\n" for m in modalities)
    return {"role": "user", "content": prefix + text}


def balanced(rng: random.Random, answers: tuple[str, ...]) -> Iterator[str]:
    """Answers in shuffled blocks holding each answer once: any prefix is near-uniform."""
    while True:
        block = list(answers)
        rng.shuffle(block)
        yield from block


def vocab_of(texts: list[str]) -> list[str]:
    """Sorted words of `texts` (lowercase words and punctuation separated by single spaces)."""
    return sorted({tok for t in texts for tok in t.split()})


def write_task(out_dir: str, generator: str, args: dict, train: list[dict], captions: list[dict],
               test: list[dict], answers: dict[str, tuple[str, ...]]) -> dict:
    """Write the three JSONL files and meta.json; return the meta dict."""
    write_jsonl(os.path.join(out_dir, "train.jsonl"), train)
    write_jsonl(os.path.join(out_dir, "captions.jsonl"), captions)
    write_jsonl(os.path.join(out_dir, "test.jsonl"), test)
    types = Counter(r["meta"]["type"] for r in test)
    by_answer: dict[str, Counter] = {t: Counter() for t in answers}
    for r in test:
        by_answer[r["meta"]["type"]][r["messages"][-1]["content"]] += 1
    meta = {
        "generator": generator,
        "args": args,
        "files": {"train": "train.jsonl", "captions": "captions.jsonl", "test": "test.jsonl"},
        "counts": {
            "train": {"records": len(train)},
            "captions": {"records": len(captions)},
            "test": {"records": len(test), "types": {t: types[t] for t in answers},
                     "answers": {t: {a: by_answer[t][a] for a in answers[t]} for t in answers}},
        },
        "question_types": {t: {"answers": list(a)} for t, a in answers.items()},
        "chance": {t: 1.0 / len(a) for t, a in answers.items()},  # test answers are uniform
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta
