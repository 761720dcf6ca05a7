#!/usr/bin/env python
"""Convert OpenAssistant oasst1 message trees to mmtune JSONL, one record per thread.

Examples:
    # English, the best-ranked thread of each tree
    python datasets/oasst1/convert.py --input 2023-04-12_oasst_ready.messages.jsonl.gz \\
        --out data/oasst1_en.jsonl
    # every language, every root-to-leaf thread
    python datasets/oasst1/convert.py --input 2023-04-12_oasst_ready.trees.jsonl.gz \\
        --out data/oasst1_all.jsonl --lang all --all-paths

Reads either published shape: the flat message table (*.messages.jsonl[.gz]) or the nested
trees (*.trees.jsonl[.gz]). The whole file is loaded to rebuild the trees (the ready export is
~88K messages, a few hundred MB of RAM). Deleted messages, messages that failed review, other
languages and messages with a media placeholder in their text are left out with everything
below them; see mmtune.data.formats.oasst.oasst_threads for how threads are chosen.

The same as `mmtune data convert oasst1 ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "oasst1", *sys.argv[1:]]))
