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

The same as `mmtune data convert instruct_pix2pix ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "instruct_pix2pix", *sys.argv[1:]]))
