"""The published InstructPix2Pix data (parquet files) -> mmtune's triplet JSONL + images/.

Reads the columns original_prompt, original_image, edit_prompt, edited_prompt, edited_image,
images stored as {"bytes", "path"} as `datasets` writes them. Writes out/images/<id>_in.<ext>
and <id>_out.<ext> (the stored bytes, not re-encoded) and out/train.jsonl, one triplet per row:

    {"id": "ip2p-<n>", "original_image": "images/ip2p-<n>_in.jpg", "edit_prompt": "...",
     "edited_image": "images/ip2p-<n>_out.jpg", "original_prompt": "...", "edited_prompt": "..."}

n counts rows across the files in order. A row with a missing or undecodable image or an
empty instruction is an error naming the file and row; with skip_bad it is left out and
counted. pyarrow (installed with `datasets`, the diffusion extra) is imported on use.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

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


def convert_parquet(inputs: list[Path], out: Path, limit: int = 0, skip_bad: bool = False) -> dict:
    import pyarrow.parquet as pq

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


def parquet_files(paths: Path | list[Path]) -> list[Path]:
    """Parquet files given directly, or found (sorted) in the folders given."""
    files: list[Path] = []
    for item in [paths] if isinstance(paths, Path) else paths:
        files += sorted(item.rglob("*.parquet")) if item.is_dir() else [item]
    return files
