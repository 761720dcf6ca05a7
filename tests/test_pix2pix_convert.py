"""datasets/instruct_pix2pix/convert.py, run as a user would, on parquet files laid out like
the published timbrooks/instructpix2pix-clip-filtered (data/train-0000N-of-0000M-*.parquet)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmtune.diffusion.data import read_triplets

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "datasets" / "instruct_pix2pix" / "convert.py"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _encoded(colour, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    return buf.getvalue()


def _write_shard(path: Path, rows: list[dict]) -> None:
    schema = pa.schema([("original_prompt", pa.string()), ("original_image", IMAGE),
                        ("edit_prompt", pa.string()), ("edited_prompt", pa.string()), ("edited_image", IMAGE)])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _row(i: int, fmt: str = "JPEG", edited: bytes | None = None) -> dict:
    return {"original_prompt": f"a photo of a house {i}", "edit_prompt": f"make it snowy {i}",
            "edited_prompt": f"a photo of a snowy house {i}",
            "original_image": {"bytes": _encoded((200, 30, 30), fmt), "path": None},
            "edited_image": {"bytes": edited if edited is not None else _encoded((240, 240, 240), fmt), "path": None}}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO)


def test_convert_published_layout(tmp_path):
    src = tmp_path / "instructpix2pix-clip-filtered" / "data"
    _write_shard(src / "train-00000-of-00002-0a1b.parquet", [_row(0), _row(1, "PNG")])
    _write_shard(src / "train-00001-of-00002-2c3d.parquet", [_row(2)])
    out = tmp_path / "out"
    proc = _run("--input", str(src.parent), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["records"] == 3
    records = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["ip2p-0", "ip2p-1", "ip2p-2"]
    assert records[1]["original_image"] == "images/ip2p-1_in.png" and records[0]["edited_image"].endswith(".jpg")
    assert records[2]["edited_prompt"] == "a photo of a snowy house 2"
    triplets, _ = read_triplets(out / "train.jsonl")  # the recipe reads the output as is
    assert triplets[1].prompt == "make it snowy 1" and triplets[1].edited().getpixel((0, 0)) == (240, 240, 240)

    limited = _run("--input", str(src), "--out", str(tmp_path / "lim"), "--limit", "2")
    assert json.loads(limited.stdout)["records"] == 2


def test_bad_row_is_named_or_skipped(tmp_path):
    src = tmp_path / "data" / "train-00000-of-00001-ffff.parquet"
    _write_shard(src, [_row(0), _row(1, edited=b"\x89PNG broken")])
    proc = _run("--input", str(src), "--out", str(tmp_path / "out"))
    assert proc.returncode != 0 and f"{src}:row 1.edited_image: image cannot be decoded" in proc.stderr
    proc = _run("--input", str(src), "--out", str(tmp_path / "out2"), "--skip-bad")
    assert proc.returncode == 0 and json.loads(proc.stdout)["bad"] == 1
    assert len((tmp_path / "out2" / "train.jsonl").read_text().splitlines()) == 1
