"""`mmtune data convert FORMAT IN --out DIR`: every published dataset shape -> mmtune JSONL.

One command for all converters (the `datasets/*/convert.py` scripts call it with their
historical option names, which stay accepted here: --input/--json, --image-root/--video-root,
--check-images/--check-videos). `--out DIR` writes DIR/train.jsonl (a path ending in .jsonl is
used as the file); media paths are rewritten relative to the output file. Each converter
prints what it read, left out and wrote.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path
from typing import Callable


MEDIA_FORMATS = {"llava": "images", "sharegpt": "images", "webvid": "videos", "videochat": "videos"}


def output_file(out: Path) -> Path:
    return out if out.suffix == ".jsonl" else out / "train.jsonl"


def source_of(image: str) -> str:
    """The dataset an image path belongs to: its first folder ("coco", "gqa", ...)."""
    parts = Path(image).parts
    return parts[0] if len(parts) > 1 else "(image root)"


def _conversations(args) -> int:
    """LLaVA / ShareGPT conversations; counts per image source folder (coco, gqa, ...), so an
    incomplete download shows which subset it is."""
    from .convert import SHOW_MISSING
    from .readers import FORMATS, read_json_or_jsonl, rebase_media, write_jsonl

    reader = FORMATS[args.format]
    out = output_file(args.out)
    read, missing = Counter(), Counter()

    def records():
        for where, item in read_json_or_jsonl(args.input):
            if args.limit is not None and sum(read.values()) >= args.limit:
                return
            record = reader(item, where)
            images = record.get("images", [])
            source = source_of(images[0]) if images else "text-only"
            read[source] += 1
            gone = [p for p in images if args.check and not (args.media_root / p).is_file()]
            if gone:
                missing[source] += 1
                if sum(missing.values()) <= SHOW_MISSING:
                    print(f"missing image: {args.media_root / gone[0]} ({where})", file=sys.stderr)
                continue
            yield rebase_media(record, args.media_root, out.parent, args.absolute)

    written = write_jsonl(records(), out)
    by_source = [f"  {source}: {n}" + (f", {missing[source]} missing images" if args.check and source != "text-only"
                                       else "") for source, n in sorted(read.items())]
    _print_counts(args, sum(read.values()), written, out, sum(missing.values()), "images", by_source)
    return 0


def _print_counts(args, n_read: int, written: int, out: Path, n_missing: int, noun: str,
                  details: list[str] = ()) -> None:
    print(f"read {n_read} items from {args.input}")
    for line in details:
        print(line)
    print(f"wrote {written} records to {out}")
    print(f"missing {noun}: {n_missing} (items left out)" if args.check
          else f"{noun} not checked (pass --check-media to find missing files)")


def _instructions(args) -> int:
    """Alpaca / Dolly single-turn instructions."""
    from .readers import convert_file

    out = output_file(args.out)
    counts = convert_file(args.input, out, args.format, args.limit, id_prefix=args.format)
    print(f"read {counts['read']} items from {args.input}")
    print(f"skipped {counts['skipped']} items (media placeholder in the text)")
    print(f"wrote {counts['written']} records to {out}")
    if args.format == "dolly":
        for category, n in sorted(counts["categories"].items()):
            print(f"  {category}: {n}")
    return 0


def _oasst(args) -> int:
    from .oasst import oasst_threads
    from .readers import read_json_or_jsonl, write_jsonl

    out = output_file(args.out)
    stats: Counter = Counter()
    threads = oasst_threads(read_json_or_jsonl(args.input), str(args.input),
                            lang=None if args.lang == "all" else args.lang, best_only=not args.all_paths, stats=stats)
    written = write_jsonl(itertools.islice(threads, args.limit), out)
    print(f"read {stats['messages']} messages in {stats['trees']} trees from {args.input}")
    skips = {k.removeprefix("skipped: "): n for k, n in sorted(stats.items()) if k.startswith("skipped: ")}
    print(f"skipped {sum(skips.values())} messages" + "".join(f"\n  {why}: {n}" for why, n in skips.items()))
    print(f"trees without an answer: {stats['trees without an answer']}")
    which = "every thread" if args.all_paths else "best thread per tree"
    print(f"wrote {written} records ({which}, lang {args.lang}) to {out}")
    if args.limit is not None and written == args.limit:
        print(f"stopped at --limit {args.limit}: counts above cover only the trees converted so far")
    return 0


def _video(args) -> int:
    from .convert import convert_records
    from .video import VIDEO_INSTRUCT, WEBVID

    out = output_file(args.out)
    readers = WEBVID if args.format == "webvid" else VIDEO_INSTRUCT
    read_items, reader = readers[args.video_format or next(iter(readers))]
    counts = convert_records(read_items(args.input), reader, "videos", args.media_root, out, args.check,
                             args.limit, args.absolute)
    _print_counts(args, counts["read"], counts["written"], out, counts["missing"], "videos")
    return 0


def _pix2pix(args) -> int:
    from .pix2pix import convert_parquet, parquet_files

    files = parquet_files(args.input)
    if not files:
        raise SystemExit(f"no parquet files in {args.input}")
    import json

    print(json.dumps(convert_parquet(files, args.out, args.limit or 0, args.skip_bad)))
    return 0


RUNNERS: dict[str, Callable] = {
    "llava": _conversations, "sharegpt": _conversations,
    "alpaca": _instructions, "dolly": _instructions, "oasst1": _oasst,
    "webvid": _video, "videochat": _video, "instruct_pix2pix": _pix2pix,
}
HELP = {
    "llava": "LLaVA JSON/JSONL (LCS-558K captions, LLaVA-Instruct-150K, mix665k)",
    "sharegpt": "ShareGPT conversations", "alpaca": "Alpaca instructions", "dolly": "databricks-dolly-15k",
    "oasst1": "OpenAssistant oasst1 messages or trees (.jsonl[.gz])",
    "webvid": "WebVid caption CSV", "videochat": "VideoChat (or --video-format llava) video instructions",
    "instruct_pix2pix": "InstructPix2Pix parquet files (a folder or files) -> triplet JSONL + images/",
}


def add_convert_parser(dsub) -> None:
    c = dsub.add_parser("convert", help="convert a published dataset file to mmtune JSONL",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = c.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, help_text in HELP.items():
        f = fsub.add_parser(name, help=help_text)
        f.add_argument("input", nargs="?", type=Path, help=help_text)
        f.add_argument("--input", "--json", dest="input_option", type=Path, help=argparse.SUPPRESS)
        f.add_argument("--out", required=True, type=Path,
                       help="output folder (writes train.jsonl there) or a .jsonl file")
        f.add_argument("--limit", type=int, help="convert only the first N items")
        if name in MEDIA_FORMATS:
            f.add_argument("--media-root", "--image-root", "--video-root", dest="media_root", type=Path,
                           help="folder the media paths are relative to (default: the input's folder)")
            f.add_argument("--check-media", "--check-images", "--check-videos", dest="check", action="store_true",
                           help="leave out, and list, items whose media file is missing")
            f.add_argument("--absolute", action="store_true", help="write absolute media paths")
        if name == "videochat":
            f.add_argument("--video-format", "--format", dest="video_format", choices=["videochat", "llava"])
        if name == "webvid":
            f.set_defaults(video_format=None)
        if name == "oasst1":
            f.add_argument("--lang", default="en", help="language code to keep, or 'all' (default en)")
            f.add_argument("--all-paths", action="store_true", help="every root-to-leaf thread, not the best one")
        if name == "instruct_pix2pix":
            f.add_argument("--skip-bad", action="store_true", help="leave out bad rows and count them")
        f.set_defaults(fn=_convert, parser=f)


def _convert(args) -> None:
    parser = args.parser
    args.input = args.input or args.input_option
    if args.input is None:
        parser.error("the input file is required")
    if args.format in MEDIA_FORMATS:
        args.media_root = args.media_root or args.input.parent
        if not args.media_root.is_dir():
            parser.error(f"--media-root {args.media_root} is not a directory")
    if not args.input.exists() or (args.format != "instruct_pix2pix" and not args.input.is_file()):
        parser.error(f"--input {args.input} is not a file")
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    try:
        code = RUNNERS[args.format](args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    if code:
        raise SystemExit(code)
