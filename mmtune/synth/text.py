"""Synthetic text skills whose answers follow a rule, for proving text SFT / QLoRA learn.

- `reverse`: "reverse : red circle two" -> "two circle red" (3-5 words)
- `copy`: "copy : red circle two" -> "red circle two" (3-5 words)
- `recall`: "a = red , b = two , c = blue . what is b ?" -> "two" (3-5 key-value pairs; a tiny
  model from scratch needs far more steps for this one: 0.36 after 600 steps, reverse 0.995)

Held-out questions are new random instances, checked not to occur in the training set, so
exact match on them measures the skill, not memory. Deterministic for a seed.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "one", "two",
         "three", "left", "right", "big", "small", "dog", "cat")
KEYS = ("a", "b", "c", "d", "e", "f", "g", "h")
SKILLS = ("reverse", "copy", "recall")
VOCAB: list[str] = [*WORDS, *KEYS, "reverse", ":", "=", ",", ".", "what", "is", "?", "copy"]


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 5))]
    return "reverse : " + " ".join(words), " ".join(reversed(words))


def _copy(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 5))]
    return "copy : " + " ".join(words), " ".join(words)


def _recall(rng: random.Random) -> tuple[str, str]:
    keys = rng.sample(KEYS, rng.randint(3, 5))
    values = [rng.choice(WORDS) for _ in keys]
    pairs = " , ".join(f"{k} = {v}" for k, v in zip(keys, values))
    i = rng.randrange(len(keys))
    return f"{pairs} . what is {keys[i]} ?", values[i]


_MAKERS = {"reverse": _reverse, "copy": _copy, "recall": _recall}


def generate(out_dir: str | Path, n_train: int = 4000, n_test: int = 400, seed: int = 0,
             skills: tuple[str, ...] = ("reverse",)) -> dict:
    unknown = [s for s in skills if s not in _MAKERS]
    if unknown:
        raise ValueError(f"unknown skill(s) {unknown}; known: {list(_MAKERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        while len(splits[split]) < n:
            skill = skills[len(splits[split]) % len(skills)]
            question, answer = _MAKERS[skill](rng)
            if split == "test" and question in seen:
                continue  # held out means never seen in training
            seen.add(question)
            i = len(splits[split])
            splits[split].append({"id": f"{split}_{i:05d}", "messages": [
                {"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "meta": {"type": skill, "split": skill}})
    for split, records in splits.items():
        with (out / f"{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    meta = {"generator": "mmtune.synth.text", "args": {"n_train": n_train, "n_test": n_test,
            "seed": seed, "skills": list(skills)},
            "counts": {s: {k: sum(r["meta"]["type"] == k for r in recs) for k in skills}
                       for s, recs in splits.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
