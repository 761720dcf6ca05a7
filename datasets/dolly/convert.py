#!/usr/bin/env python
"""Convert databricks-dolly-15k.jsonl to mmtune JSONL.

Example:
    python datasets/dolly/convert.py --input databricks-dolly-15k.jsonl --out data/dolly.jsonl

Each line {"instruction", "context", "response", "category"} becomes one user turn (the
instruction, then the context after a blank line when it is not empty) and one assistant turn
(the response), with meta {"category": ...}. Record ids are "dolly-<n>", n being the item's
0-based position in the file (its row index in the Hugging Face dataset). Items whose text
contains a media placeholder (<image>, <video>, <audio>) are left out and counted: the record
format would read each as a media slot with no file.

The same as `mmtune data convert dolly ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "dolly", *sys.argv[1:]]))
