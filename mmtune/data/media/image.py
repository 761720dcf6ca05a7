"""Reading media files, with errors that name the file and the record."""
from __future__ import annotations

from PIL import Image, UnidentifiedImageError


class MediaError(ValueError):
    pass


def load_image(path: str, where: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not deep in the collator
            return im.convert("RGB")
    except FileNotFoundError:
        raise MediaError(f"{where}: image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise MediaError(f"{where}: image {path} cannot be decoded ({e})") from None
