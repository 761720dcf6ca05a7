#!/usr/bin/env python
"""Convert WebVid video-caption CSVs (results_2M_train.csv, results_10M_train.csv) to mmtune JSONL.

Example:
    python datasets/webvid/convert.py --input webvid/results_2M_train.csv \\
        --video-root webvid/videos --out data/webvid_2m.jsonl --check-videos

Each row becomes one caption record: a short "describe the video" instruction with <video>,
answered by the row's caption ("name"). The clip is <page_dir>/<videoid>.mp4 under
--video-root. Video paths in the output are relative to the output file's folder (or absolute
with --absolute). With --check-videos, rows whose clip is missing are left out and listed.

The same as `mmtune data convert webvid ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "webvid", *sys.argv[1:]]))
