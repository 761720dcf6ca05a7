"""Held-out question answering: accuracy with the media, and with the media blanked.

Blank-media accuracy is the proof that answers come from the medium: a model that reads its
image drops to chance when the image is replaced by a flat one; a model that learned the
answer distribution (or a wiring bug that ignores the image) does not.

Further probes run the same questions with the media altered (`probes`: name -> encoder),
each reported as `<name>_accuracy`; e.g. `shuffled_frames`: a video model that really uses
temporal order loses the direction of motion when its frames are put out of order.
"""
from __future__ import annotations

import random
import string
from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from ..data.collate import ExampleBuilder, collate
from ..data.formats.records import Record


def normalise(text: str) -> str:
    words = text.lower().replace("\n", " ").split()
    words = [w for w in words if w not in string.punctuation]
    return " ".join(words)


def first_answer(generated: str, target: str) -> str:
    """The reply's first answer-length words. A model that answers and then fails to stop
    (tiny models given a blank image do) still gave an answer; `exact_match` reports the
    stricter whole-reply comparison beside it."""
    return " ".join(normalise(generated).split()[: len(target.split())])


@torch.no_grad()
def generate_answers(model, records: list[Record], encoder: ExampleBuilder, batch_size: int,
                     max_new_tokens: int, device) -> list[str]:
    was_training = model.training
    model.eval()
    answers: list[str] = []
    for i in range(0, len(records), batch_size):
        examples = [encoder.encode_prompt(r) for r in records[i:i + batch_size]]
        batch = collate(examples, model.tokenizer.pad_token_id, left_pad=True).to(device)
        new = model.generate(batch, max_new_tokens=max_new_tokens)
        answers += model.tokenizer.batch_decode(new, skip_special_tokens=True)
    model.train(was_training)
    return answers


@dataclass(frozen=True)
class ShuffledFrames:
    """A media transform: the frames of a clip [T, ...] in a random order other than the
    original, the same order for the same key (record, medium) on every run."""

    seed: int = 0

    def __call__(self, frames: torch.Tensor, key: str) -> torch.Tensor:
        t = frames.shape[0]
        if t < 2:
            raise ValueError(f"{key}: a clip of {t} frame(s) cannot be shuffled in time")
        rng = random.Random(f"{self.seed}:{key}")
        order = list(range(t))
        while order == sorted(order):
            rng.shuffle(order)
        return frames[order]


def _accuracy(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def evaluate_qa(model, records: list[Record], encoder: ExampleBuilder, blank_encoder: ExampleBuilder | None,
                batch_size: int = 64, max_new_tokens: int = 8, device="cpu",
                separate_splits: tuple[str, ...] = (), probes: dict[str, ExampleBuilder] | None = None) -> dict:
    """Exact-match accuracy (after lower-casing and dropping punctuation) of the last
    assistant turn of each record, by question type and split, with and without media, and
    with the media altered by each of `probes` (reported as `<name>_accuracy`).

    Records whose `meta.split` is in `separate_splits` are scored but kept out of the
    headline `accuracy` (e.g. the harder binding split), and reported on their own.
    """
    probes = probes or {}
    targets = [normalise(r.messages[-1]["content"]) for r in records]
    prompts = [replace(r, messages=r.messages[:-1]) for r in records]
    real = generate_answers(model, prompts, encoder, batch_size, max_new_tokens, device)
    # Text-only models have no medium to blank: their blank scores are reported as null.
    blank = (generate_answers(model, prompts, blank_encoder, batch_size, max_new_tokens, device)
             if blank_encoder is not None else [None] * len(records))
    probed = {name: generate_answers(model, prompts, enc, batch_size, max_new_tokens, device)
              for name, enc in probes.items()}
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    answers_by_type: dict[str, set[str]] = defaultdict(set)
    for i, (r, t, a, b) in enumerate(zip(records, targets, real, blank)):
        qtype, split = r.meta.get("type", "all"), r.meta.get("split", "all")
        answers_by_type[qtype].add(t)
        scores = {"real": first_answer(a, t) == t, "real_exact": normalise(a) == t}
        if b is not None:
            scores.update(blank=first_answer(b, t) == t, blank_exact=normalise(b) == t)
        scores.update({name: first_answer(answers[i], t) == t for name, answers in probed.items()})
        group = "separate" if split in separate_splits else "headline"
        for key in (group, f"type:{qtype}", f"split:{split}"):
            for name, hit in scores.items():
                groups[key][name].append(hit)
    # Chance: guessing uniformly among the answers a question type can have.
    chance = {q: 1 / len(a) for q, a in answers_by_type.items()}

    def summary(g: dict[str, list[bool]]) -> dict:
        return {"accuracy": _accuracy(g["real"]), "blank_media_accuracy": _accuracy(g["blank"]),
                "exact_match": _accuracy(g["real_exact"]), "blank_exact_match": _accuracy(g["blank_exact"]),
                **{f"{name}_accuracy": _accuracy(g[name]) for name in probes}, "n": len(g["real"])}

    head = [r for r in records if r.meta.get("split", "all") not in separate_splits]
    result = {
        **summary(groups["headline"]),
        "chance": round(sum(chance[r.meta.get("type", "all")] for r in head) / max(len(head), 1), 4),
        "scoring": "accuracy: the reply's first answer-length words equal the reference after "
                   "lower-casing and dropping punctuation; exact_match: the whole reply does",
        "by_type": {k[5:]: {**summary(v), "chance": round(chance[k[5:]], 4)}
                    for k, v in sorted(groups.items()) if k.startswith("type:")},
        "by_split": {k[6:]: summary(v) for k, v in sorted(groups.items()) if k.startswith("split:")},
        "reported_separately": list(separate_splits),
        "probes": list(probes),  # each one's score is `<name>_accuracy`, overall and per type
        "examples": [{"id": r.id, "question": r.messages[-2]["content"], "target": t, "answer": a,
                      "blank_answer": b, "media": r.media} for r, t, a, b in list(zip(records, targets, real, blank))[:8]],
    }
    return result


def print_qa_eval(result: dict) -> None:
    """The eval.json of a question-answering run as a table: per question type, with the media,
    with blank media, and chance."""
    def num(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    print(f"{'question type':<16}{'n':>5}{'with media':>12}{'blank media':>13}{'chance':>8}")
    for qtype, r in result["by_type"].items():
        print(f"{qtype:<16}{r['n']:>5}{num(r['accuracy']):>12}{num(r['blank_media_accuracy']):>13}"
              f"{num(r['chance']):>8}")
    sep = ", ".join(result.get("reported_separately", [])) or "none"
    print(f"{'overall':<16}{result['n']:>5}{num(result['accuracy']):>12}"
          f"{num(result['blank_media_accuracy']):>13}{num(result['chance']):>8}   "
          f"(splits reported separately: {sep})")
    for probe in result.get("probes", []):  # e.g. shuffled_frames: media altered, same questions
        print(f"{probe.replace('_', ' ')}: {num(result[f'{probe}_accuracy'])}")
