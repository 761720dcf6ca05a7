#!/usr/bin/env python
"""Convert LLaVA's LCS-558K captions (blip_laion_cc_sbu_558k.json) to mmtune JSONL.

Example:
    python datasets/llava_pretrain/convert.py --json LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \\
        --image-root LLaVA-Pretrain/images --out data/llava_pretrain.jsonl --check-images

Image paths in the output are relative to the output file's folder (or absolute with
--absolute), so the JSONL can be read from anywhere. With --check-images, items whose image
file is missing are left out and listed on stderr.

The same as `mmtune data convert llava ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "llava", *sys.argv[1:]]))
