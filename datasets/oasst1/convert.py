#!/usr/bin/env python
"""Convert OpenAssistant oasst1 message trees to mmtune JSONL, one record per thread.

Examples:
    # English, the best-ranked thread of each tree
    python datasets/oasst1/convert.py --input 2023-04-12_oasst_ready.messages.jsonl.gz \\
        --out data/oasst1_en.jsonl
    # every language, every root-to-leaf thread
    python datasets/oasst1/convert.py --input 2023-04-12_oasst_ready.trees.jsonl.gz \\
        --out data/oasst1_all.jsonl --lang all --all-paths

Reads either published shape: the flat message table (*.messages.jsonl[.gz]) or the nested
trees (*.trees.jsonl[.gz]). The whole file is loaded to rebuild the trees (the ready export is
~88K messages, a few hundred MB of RAM). Deleted messages, messages that failed review, other
languages and messages with a media placeholder in their text are left out with everything
below them; see mmtune.data.formats.oasst.oasst_threads for how threads are chosen.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path

from mmtune.data.formats.readers import parse_convert_args, read_json_or_jsonl, write_jsonl
from mmtune.data.formats.oasst import oasst_threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, type=Path,
                    help="2023-04-12_oasst_ready.messages.jsonl.gz or ...trees.jsonl.gz (gzipped or not)")
    ap.add_argument("--out", required=True, type=Path, help="output .jsonl")
    ap.add_argument("--lang", default="en",
                    help="keep messages in this language code (default en), or 'all' for every language")
    ap.add_argument("--all-paths", action="store_true",
                    help="one record per root-to-leaf thread, not only the best-ranked one per tree")
    ap.add_argument("--limit", type=int, help="write at most N records")
    args = parse_convert_args(ap, argv)
    lang = None if args.lang == "all" else args.lang

    stats = Counter()
    threads = oasst_threads(read_json_or_jsonl(args.input), str(args.input), lang=lang,
                            best_only=not args.all_paths, stats=stats)
    try:
        written = write_jsonl(itertools.islice(threads, args.limit), args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"read {stats['messages']} messages in {stats['trees']} trees from {args.input}")
    skips = {k.removeprefix("skipped: "): n for k, n in sorted(stats.items()) if k.startswith("skipped: ")}
    print(f"skipped {sum(skips.values())} messages" + "".join(f"\n  {why}: {n}" for why, n in skips.items()))
    print(f"trees without an answer: {stats['trees without an answer']}")
    which = "every thread" if args.all_paths else "best thread per tree"
    print(f"wrote {written} records ({which}, lang {args.lang}) to {args.out}")
    if args.limit is not None and written == args.limit:
        print(f"stopped at --limit {args.limit}: counts above cover only the trees converted so far")
    return 0


if __name__ == "__main__":
    sys.exit(main())
