#!/usr/bin/env python
"""Convert LLaVA-Instruct-150K or LLaVA-1.5's llava_v1_5_mix665k.json to mmtune JSONL.

Examples:
    # LLaVA-Instruct-150K: image paths are bare COCO train2017 file names
    python datasets/llava_instruct/convert.py --json llava_instruct_150k.json \\
        --image-root coco/train2017 --out data/llava_instruct_150k.jsonl --check-images
    # LLaVA-1.5 mix: image paths start with coco/, gqa/, ocr_vqa/, textvqa/, vg/
    python datasets/llava_instruct/convert.py --json llava_v1_5_mix665k.json \\
        --image-root playground/data --out data/llava_v1_5_mix665k.jsonl --check-images

Items without an "image" key (the ShareGPT part of the mix) become text-only records. Image
paths in the output are relative to the output file's folder (or absolute with --absolute).
With --check-images, items whose image file is missing are left out, listed on stderr, and
counted per image folder, so an incomplete download shows which subset it is.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mmtune.data.formats.readers import from_llava, read_json_or_jsonl, rebase_media, write_jsonl

SHOW_MISSING = 10  # how many missing paths to list before only counting


def source_of(image: str) -> str:
    """The dataset an image path belongs to: its first folder ("coco", "gqa", ...)."""
    parts = Path(image).parts
    return parts[0] if len(parts) > 1 else "(image root)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, type=Path,
                    help="llava_instruct_150k.json or llava_v1_5_mix665k.json")
    ap.add_argument("--image-root", required=True, type=Path,
                    help="folder the JSON's image paths are relative to")
    ap.add_argument("--out", required=True, type=Path, help="output .jsonl")
    ap.add_argument("--check-images", action="store_true",
                    help="leave out, and list, items whose image file does not exist")
    ap.add_argument("--limit", type=int, help="convert only the first N items")
    ap.add_argument("--absolute", action="store_true",
                    help="write absolute image paths instead of paths relative to --out's folder")
    args = ap.parse_args(argv)
    if not args.image_root.is_dir():
        ap.error(f"--image-root {args.image_root} is not a directory")
    if args.limit is not None and args.limit < 0:
        ap.error("--limit must be >= 0")

    read = Counter()  # items per source ("text-only" for items without an image)
    missing = Counter()  # items left out per source

    def records():
        for where, item in read_json_or_jsonl(args.json):
            if args.limit is not None and sum(read.values()) >= args.limit:
                return
            record = from_llava(item, where)
            images = record.get("images", [])
            source = source_of(images[0]) if images else "text-only"
            read[source] += 1
            if args.check_images:
                gone = [p for p in images if not (args.image_root / p).is_file()]
                if gone:
                    missing[source] += 1
                    if sum(missing.values()) <= SHOW_MISSING:
                        print(f"missing image: {args.image_root / gone[0]} ({where})", file=sys.stderr)
                    continue
            yield rebase_media(record, args.image_root, args.out.parent, args.absolute)

    try:
        written = write_jsonl(records(), args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"read {sum(read.values())} items from {args.json}")
    for source, n in sorted(read.items()):
        extra = f", {missing[source]} missing images" if args.check_images and source != "text-only" else ""
        print(f"  {source}: {n}{extra}")
    print(f"wrote {written} records to {args.out}")
    if args.check_images:
        print(f"missing images: {sum(missing.values())} (items left out)")
    else:
        print("images not checked (pass --check-images to find missing files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
