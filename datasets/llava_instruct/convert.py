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

The same as `mmtune data convert llava ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "llava", *sys.argv[1:]]))
