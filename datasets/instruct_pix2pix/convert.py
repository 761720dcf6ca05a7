#!/usr/bin/env python
"""Convert the published InstructPix2Pix data (parquet files) to mmtune's triplet JSONL.

Example:
    python datasets/instruct_pix2pix/convert.py --input instructpix2pix-clip-filtered/data \
        --out data/ip2p [--limit 1000] [--skip-bad]

Reads every *.parquet under --input (sorted by name) with the columns original_prompt,
original_image, edit_prompt, edited_prompt, edited_image, images stored as {"bytes", "path"}
as `datasets` writes them. Writes out/images/<id>_in.<ext> and <id>_out.<ext> (the stored
bytes, not re-encoded) and out/train.jsonl, one triplet per row:

    {"id": "ip2p-<n>", "original_image": "images/ip2p-<n>_in.jpg", "edit_prompt": "...",
     "edited_image": "images/ip2p-<n>_out.jpg", "original_prompt": "...", "edited_prompt": "..."}

n counts rows across the files in order. A row with a missing or undecodable image or an
empty instruction is an error naming the file and row; with --skip-bad it is left out and
counted.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

COLUMNS = ("original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image")
EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class BadRow(ValueError):
    pass


def _image(cell, where: str) -> tuple[bytes, str]:
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data:
        raise BadRow(f"{where}: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()  # a truncated or corrupt file fails here, not in training
    except Exception as e:  # PIL raises many types for bad data
        raise BadRow(f"{where}: image cannot be decoded ({e})") from None
    return data, EXT.get(fmt, (fmt or "bin").lower())


def convert(inputs: list[Path], out: Path, limit: int = 0, skip_bad: bool = False) -> dict:
    (out / "images").mkdir(parents=True, exist_ok=True)
    n, bad = 0, []
    with (out / "train.jsonl").open("w") as f:
        for path in inputs:
            table = pq.ParquetFile(path)
            missing = [c for c in COLUMNS if c not in table.schema_arrow.names]
            if missing:
                raise SystemExit(f"{path}: missing column(s) {missing}; has {table.schema_arrow.names}")
            row = 0
            for batch in table.iter_batches(batch_size=256, columns=list(COLUMNS)):
                for item in batch.to_pylist():
                    where = f"{path}:row {row}"
                    row += 1
                    if limit and n >= limit:
                        return {"records": n, "bad": len(bad), "bad_examples": bad[:5]}
                    try:
                        if not (item["edit_prompt"] or "").strip():
                            raise BadRow(f"{where}: empty edit_prompt")
                        (src, src_ext), (dst, dst_ext) = (_image(item[c], f"{where}.{c}")
                                                          for c in ("original_image", "edited_image"))
                    except BadRow as e:
                        if not skip_bad:
                            raise SystemExit(str(e)) from None
                        bad.append(str(e))
                        continue
                    rid = f"ip2p-{n}"
                    (out / "images" / f"{rid}_in.{src_ext}").write_bytes(src)
                    (out / "images" / f"{rid}_out.{dst_ext}").write_bytes(dst)
                    f.write(json.dumps({"id": rid, "original_image": f"images/{rid}_in.{src_ext}",
                                        "edit_prompt": item["edit_prompt"],
                                        "edited_image": f"images/{rid}_out.{dst_ext}",
                                        "original_prompt": item["original_prompt"] or "",
                                        "edited_prompt": item["edited_prompt"] or ""}) + "\n")
                    n += 1
    return {"records": n, "bad": len(bad), "bad_examples": bad[:5]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="parquet files or folders holding them")
    p.add_argument("--out", required=True, help="output folder (train.jsonl + images/)")
    p.add_argument("--limit", type=int, default=0, help="stop after this many triplets (0: all)")
    p.add_argument("--skip-bad", action="store_true", help="leave out bad rows and count them")
    args = p.parse_args(argv)
    files: list[Path] = []
    for item in map(Path, args.input):
        files += sorted(item.rglob("*.parquet")) if item.is_dir() else [item]
    if not files:
        raise SystemExit(f"no parquet files in {args.input}")
    result = convert(files, Path(args.out), args.limit, args.skip_bad)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
