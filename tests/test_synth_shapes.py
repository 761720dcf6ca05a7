"""Tests for the synthetic shapes image-QA generator (mmtune.synth.shapes).

The key check is a pixel-only solver: every answer in the generated data must be
recoverable from the image pixels alone (not from the stored metadata).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtune.synth import shapes as ss

N_TRAIN, N_TEST, SIZE = 60, 60, 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    meta = ss.generate(out, n_train=N_TRAIN, n_test=N_TEST, seed=0, image_size=SIZE)
    return out, meta


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def load_pixels(root: Path, rec: dict) -> np.ndarray:
    with Image.open(root / rec["images"][0]) as im:
        assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        return np.asarray(im).copy()


# ----------------------------------------------------------------------------- pixel-only solver


def find_objects(arr: np.ndarray) -> list[dict]:
    """Objects in an image from pixels only: one per palette colour present."""
    bg = np.all(arr == ss.BACKGROUND, axis=-1)
    known = np.zeros_like(bg)
    objs = []
    for name, rgb in ss.COLOUR_RGB.items():
        mask = np.all(arr == rgb, axis=-1)
        known |= mask
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = mask.sum() / float(h * w)
        top_w = mask[ys.min()].sum()
        bottom_w = mask[ys.max()].sum()
        if fill > 0.95:
            shape = "square"
        elif 0.68 < fill < 0.9:
            shape = "circle"
        elif fill < 0.65 and top_w < 0.3 * w and bottom_w > 0.9 * w:  # pointing up
            shape = "triangle"
        else:
            shape = "unknown"
        objs.append({"colour": name, "shape": shape, "x": xs.mean(), "y": ys.mean(),
                     "w": int(w), "h": int(h), "pixels": int(mask.sum())})
    # only background and palette colours (no antialiasing, no overlap artefacts)
    assert np.all(bg | known)
    return objs


def solve(arr: np.ndarray, question: str) -> str:
    objs = find_objects(arr)
    W = arr.shape[1]
    if question == ss.Q_COUNT:
        return ss.COUNT_WORDS[len(objs) - 1]
    if question in (ss.Q_COLOUR, ss.Q_SHAPE, ss.Q_POSITION):
        assert len(objs) == 1
        o = objs[0]
        if question == ss.Q_COLOUR:
            return o["colour"]
        if question == ss.Q_SHAPE:
            return o["shape"]
        assert abs(o["x"] - W / 2) >= 0.08 * W, "single shape must be clearly left or right"
        return "left" if o["x"] < W / 2 else "right"
    words = question.split()
    if question.startswith("what colour is the "):
        match = [o for o in objs if o["shape"] == words[4]]
        assert len(match) == 1
        return match[0]["colour"]
    if question.startswith("what shape is the "):
        match = [o for o in objs if o["colour"] == words[4]]
        assert len(match) == 1
        return match[0]["shape"]
    raise AssertionError(f"unexpected question {question!r}")


def qa_pairs(rec: dict) -> list[tuple[str, str]]:
    msgs = rec["messages"]
    out = []
    for u, a in zip(msgs[::2], msgs[1::2]):
        q = u["content"]
        if q.startswith(ss.IMAGE_TOKEN + "\n"):
            q = q[len(ss.IMAGE_TOKEN) + 1:]
        out.append((q, a["content"]))
    return out


# ----------------------------------------------------------------------------- tests


def test_constants():
    assert ss.SHAPES == ("circle", "square", "triangle")
    assert ss.COLOURS == ("red", "green", "blue", "yellow")
    assert ss.POSITIONS == ("left", "right")
    assert ss.COUNT_WORDS == ("one", "two", "three")
    assert isinstance(ss.VOCAB, list) and len(set(ss.VOCAB)) == len(ss.VOCAB)
    for w in (*ss.SHAPES, *ss.COLOURS, *ss.POSITIONS, *ss.COUNT_WORDS, "?", ",", ":", "."):
        assert w in ss.VOCAB
    assert ss.IMAGE_TOKEN not in ss.VOCAB
    # colours clearly distinct from each other and from the background
    rgbs = [np.array(ss.COLOUR_RGB[c], float) for c in ss.COLOURS] + [np.array(ss.BACKGROUND, float)]
    for i in range(len(rgbs)):
        for j in range(i + 1, len(rgbs)):
            assert np.abs(rgbs[i] - rgbs[j]).sum() > 150


def test_files_and_record_format(data):
    root, meta = data
    train = read_jsonl(root / "train.jsonl")
    caps = read_jsonl(root / "captions.jsonl")
    test = read_jsonl(root / "test.jsonl")
    assert len(train) == len(caps) == N_TRAIN and len(test) == N_TEST
    assert len(list((root / "images").glob("*.png"))) == N_TRAIN + N_TEST
    assert json.loads((root / "meta.json").read_text()) == meta
    for i, r in enumerate(train):
        assert r["id"] == f"train_{i:05d}" and r["images"] == [f"images/train_{i:05d}.png"]
    for i, r in enumerate(caps):
        assert r["images"] == [f"images/train_{i:05d}.png"]
        assert len(r["messages"]) == 2
    for i, r in enumerate(test):
        assert r["id"] == f"test_{i:05d}_q0" and r["images"] == [f"images/test_{i:05d}.png"]
        assert len(r["messages"]) == 2  # one question per test record
        assert r["meta"]["split"] == ss.TYPE_SPLIT[r["meta"]["type"]]
    for r in train + caps + test:
        msgs = r["messages"]
        assert (root / r["images"][0]).is_file()
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert msgs[0]["content"].startswith("<image>\n")
        assert sum(m["content"].count("<image>") for m in msgs) == 1
    for r in train:
        assert 3 <= len(r["messages"]) // 2 <= 4
        assert len({q for q, _ in qa_pairs(r)}) == len(r["messages"]) // 2  # no repeated question
    for r in train + test:
        for _, a in qa_pairs(r):
            assert len(a.split()) == 1


def test_text_tokenises_into_vocab(data):
    root, _ = data
    vocab = set(ss.VOCAB)
    used = set()
    for name in ("train.jsonl", "captions.jsonl", "test.jsonl"):
        for r in read_jsonl(root / name):
            for m in r["messages"]:
                text = m["content"]
                if text.startswith("<image>\n"):
                    text = text[len("<image>\n"):]
                assert text == text.lower() and text == " ".join(text.split()), repr(text)
                toks = text.split()
                assert toks and set(toks) <= vocab, (text, set(toks) - vocab)
                used.update(toks)
    assert used >= set(ss.SHAPES) | set(ss.COLOURS) | set(ss.COUNT_WORDS)


def test_test_answers_correct_from_pixels(data):
    root, _ = data
    for r in read_jsonl(root / "test.jsonl"):
        arr = load_pixels(root, r)
        (q, a), = qa_pairs(r)
        assert solve(arr, q) == a, (r["id"], q, a)
        # the stored shape list agrees with the pixels too
        objs = {o["colour"]: o for o in find_objects(arr)}
        assert len(objs) == len(r["meta"]["shapes"])
        for s in r["meta"]["shapes"]:
            assert tuple(arr[s["cy"], s["cx"]]) == ss.COLOUR_RGB[s["colour"]]
            assert objs[s["colour"]]["shape"] == s["shape"]


def test_train_answers_and_captions_correct_from_pixels(data):
    root, _ = data
    train = read_jsonl(root / "train.jsonl")
    caps = read_jsonl(root / "captions.jsonl")
    kinds = Counter()
    for r, c in zip(train, caps):
        arr = load_pixels(root, r)
        kinds[r["meta"]["split"]] += 1
        for q, a in qa_pairs(r):
            assert solve(arr, q) == a, (r["id"], q, a)
        objs = find_objects(arr)
        cap = c["messages"][1]["content"]
        items = {(o["colour"], o["shape"]) for o in objs}
        if r["meta"]["split"] == "single":
            (o,) = objs
            pos = "left" if o["x"] < SIZE / 2 else "right"
            assert cap == f"a {o['colour']} {o['shape']} on the {pos} ."
        else:
            body = cap[:-2].split(" : ")[1]
            parts = body.replace(" and ", " , ").split(" , ")
            assert {tuple(p.split()[1:]) for p in parts} == items
            n = len(objs)
            assert cap.startswith(f"{ss.COUNT_WORDS[n - 1]} shape{'s' if n > 1 else ''} : ")
    assert set(kinds) == {"single", "count", "binding"}


def test_image_kinds(data):
    root, _ = data
    for r in read_jsonl(root / "train.jsonl") + read_jsonl(root / "test.jsonl"):
        split, shapes = r["meta"]["split"], r["meta"]["shapes"]
        if split == "single":
            assert len(shapes) == 1
            s = shapes[0]
            assert 22 <= s["size"] <= 28
            assert s["cx"] <= 0.4 * SIZE or s["cx"] >= 0.6 * SIZE
        else:
            assert (1 if split == "count" else 2) <= len(shapes) <= 3
            assert all(14 <= s["size"] <= 20 for s in shapes)
            assert len({s["colour"] for s in shapes}) == len(shapes)
            assert len({s["shape"] for s in shapes}) == len(shapes)
        # count answers match the number of shapes
        for q, a in qa_pairs(r):
            if q == ss.Q_COUNT:
                assert a == ss.COUNT_WORDS[len(shapes) - 1]


def test_test_balance_and_meta(data):
    root, meta = data
    test = read_jsonl(root / "test.jsonl")
    by_type: dict[str, Counter] = {t: Counter() for t in ss.QUESTION_TYPES}
    for r in test:
        by_type[r["meta"]["type"]][r["messages"][1]["content"]] += 1
    sizes = [sum(c.values()) for c in by_type.values()]
    assert max(sizes) - min(sizes) <= 1
    for t, c in by_type.items():
        assert set(c) == set(ss.ANSWERS[t]), t
        assert max(c.values()) - min(c.values()) <= 1, (t, c)
        assert meta["counts"]["test"]["answers"][t] == dict(c)
        assert meta["counts"]["test"]["types"][t] == sum(c.values())
    expected_chance = {"colour": 1 / 4, "shape": 1 / 3, "position": 1 / 2, "count": 1 / 3,
                       "binding_colour": 1 / 4, "binding_shape": 1 / 3}
    assert meta["chance"] == pytest.approx(expected_chance)
    assert meta["args"] == {"n_train": N_TRAIN, "n_test": N_TEST, "seed": 0, "image_size": SIZE}
    assert meta["counts"]["train"]["records"] == N_TRAIN
    assert meta["counts"]["captions"]["records"] == N_TRAIN
    assert sum(meta["counts"]["train"]["kinds"].values()) == N_TRAIN
    assert sum(meta["counts"]["test"]["splits"].values()) == N_TEST
    for t in ("binding_colour", "binding_shape"):
        assert 1 / 3 <= meta["chance_present"][t] <= 1 / 2


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 3), (b, 3), (c, 4)):
        ss.generate(d, n_train=30, n_test=24, seed=seed)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db  # byte-identical jsonl, meta and PNGs
    for name in ("train.jsonl", "captions.jsonl", "test.jsonl"):
        assert da[name] != dc[name]
    assert sum(da[k] != dc[k] for k in da if k.startswith("images/")) > 40


def test_test_images_are_new(data):
    root, _ = data
    h = lambda p: hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest()  # noqa: E731
    train = {h(p) for p in (root / "images").glob("train_*.png")}
    test = [h(p) for p in (root / "images").glob("test_*.png")]
    assert not train & set(test)


def test_fast(tmp_path):
    t0 = time.perf_counter()
    ss.generate(tmp_path, n_train=400, n_test=100)
    assert time.perf_counter() - t0 < 5.0  # 2000+300 must take well under 10 s


def test_bad_image_size(tmp_path):
    with pytest.raises(ValueError):
        ss.generate(tmp_path, n_train=1, n_test=1, image_size=16)
