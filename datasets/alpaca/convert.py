#!/usr/bin/env python
"""Convert Stanford Alpaca's alpaca_data.json (or a file of the same shape) to mmtune JSONL.

Example:
    python datasets/alpaca/convert.py --input alpaca_data.json --out data/alpaca.jsonl

Each item {"instruction", "input", "output"} becomes one user turn (the instruction, then the
input after a blank line when it is not empty) and one assistant turn (the output). Record ids
are "alpaca-<n>", n being the item's 0-based position in the file. Items whose text contains a
media placeholder (<image>, <video>, <audio>) are left out and counted: the record format would
read each as a media slot with no file.

The same as `mmtune data convert alpaca ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "alpaca", *sys.argv[1:]]))
