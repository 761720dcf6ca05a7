"""The loop every dataset converter shares: read items, convert, check media, rebase, write."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

from .readers import rebase_media, write_jsonl

SHOW_MISSING = 10  # how many missing media files to list before only counting


def convert_records(items: Iterator[tuple[str, dict]], reader: Callable[[dict, str, int], dict],
                    media_key: str, media_root: Path, out: Path, check: bool, limit: int | None,
                    absolute: bool) -> dict:
    """`reader(item, where, index) -> record` over the first `limit` items, written to `out`
    with media paths (relative to `media_root`) rebased for `out`'s folder. With `check`,
    records whose `media_key` files ("images", "videos") are missing are left out and the
    first few listed on stderr. Returns {"read", "missing", "written"}."""
    counts = {"read": 0, "missing": 0}
    noun = media_key.rstrip("s")

    def records():
        for index, (where, item) in enumerate(items):
            if limit is not None and index >= limit:
                return
            counts["read"] += 1
            record = reader(item, where, index)
            gone = [p for p in record.get(media_key, []) if check and not (media_root / p).is_file()]
            if gone:
                counts["missing"] += 1
                if counts["missing"] <= SHOW_MISSING:
                    print(f"missing {noun}: {media_root / gone[0]} ({where})", file=sys.stderr)
                continue
            yield rebase_media(record, media_root, out.parent, absolute)

    counts["written"] = write_jsonl(records(), out)
    return counts
