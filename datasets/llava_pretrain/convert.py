#!/usr/bin/env python
"""Convert LLaVA's LCS-558K captions (blip_laion_cc_sbu_558k.json) to mmtune JSONL.

Example:
    python datasets/llava_pretrain/convert.py --json LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \\
        --image-root LLaVA-Pretrain/images --out data/llava_pretrain.jsonl --check-images

Image paths in the output are relative to the output file's folder (or absolute with
--absolute), so the JSONL can be read from anywhere. With --check-images, items whose image
file is missing are left out and listed on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmtune.data.formats.convert import convert_records
from mmtune.data.formats.readers import from_llava, read_json_or_jsonl


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, type=Path, help="blip_laion_cc_sbu_558k.json")
    ap.add_argument("--image-root", required=True, type=Path,
                    help="folder images.zip was unpacked into (holds 00000/, 00001/, ...)")
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

    try:
        counts = convert_records(read_json_or_jsonl(args.json), lambda item, where, _: from_llava(item, where),
                                 "images", args.image_root, args.out, args.check_images, args.limit,
                                 args.absolute)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"read {counts['read']} items from {args.json}")
    print(f"wrote {counts['written']} records to {args.out}")
    if args.check_images:
        print(f"missing images: {counts['missing']} (items left out)")
    else:
        print("images not checked (pass --check-images to find missing files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
