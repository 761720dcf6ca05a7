"""Drawing half of the synthetic shapes task: colours, shape layout and rendering.

Split out of :mod:`mmtune.synth.shapes` (which re-exports the public names);
all randomness comes from the ``random.Random`` passed in, so the generated images
are unchanged.
"""
from __future__ import annotations

import random

from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLOURS",
    "COLOUR_RGB",
    "BACKGROUND",
    "POSITIONS",
    "COUNT_WORDS",
    "render",
]

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
