#!/usr/bin/env python
"""Convert Stanford Alpaca's alpaca_data.json (or a file of the same shape) to mmtune JSONL.

Example:
    python datasets/alpaca/convert.py --input alpaca_data.json --out data/alpaca.jsonl

Each item {"instruction", "input", "output"} becomes one user turn (the instruction, then the
input after a blank line when it is not empty) and one assistant turn (the output). Record ids
are "alpaca-<n>", n being the item's 0-based position in the file. Items whose text contains a
media placeholder (<image>, <video>, <audio>) are left out and counted: the record format would
read each as a media slot with no file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmtune.data.formats import from_alpaca, placeholders_in, read_json_or_jsonl, write_jsonl

TEXT_FIELDS = ("instruction", "input", "output")
SHOW_SKIPPED = 10  # how many left-out items to list before only counting


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, type=Path,
                    help="alpaca_data.json (a JSON list; .jsonl and .gz are read too)")
    ap.add_argument("--out", required=True, type=Path, help="output .jsonl")
    ap.add_argument("--limit", type=int, help="convert only the first N items")
    args = ap.parse_args(argv)
    if not args.input.is_file():
        ap.error(f"--input {args.input} is not a file")
    if args.limit is not None and args.limit < 0:
        ap.error("--limit must be >= 0")

    read, skipped = 0, 0

    def records():
        nonlocal read, skipped
        for n, (where, item) in enumerate(read_json_or_jsonl(args.input)):
            if args.limit is not None and n >= args.limit:
                return
            read += 1
            found = placeholders_in(*(item[k] for k in TEXT_FIELDS if isinstance(item.get(k), str)))
            if found:
                skipped += 1
                if skipped <= SHOW_SKIPPED:
                    print(f"left out: {where}: media placeholder {found[0]} in the text", file=sys.stderr)
                continue
            yield {**from_alpaca(item, where), "id": f"alpaca-{n}"}

    try:
        written = write_jsonl(records(), args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"read {read} items from {args.input}")
    print(f"skipped {skipped} items (media placeholder in the text)")
    print(f"wrote {written} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
