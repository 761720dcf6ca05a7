#!/usr/bin/env python
"""Convert video instructions (VideoChat's JSON, LLaVA-style video conversations) to mmtune JSONL.

Inputs: VideoChat's videochat_instruct_11k.json, or LLaVA-style video conversations such as
Video-ChatGPT's.

Examples:
    python datasets/videochat/convert.py --input videochat_instruct_11k.json \\
        --video-root webvid/videos --out data/videochat_11k.jsonl --check-videos
    python datasets/videochat/convert.py --format llava --input video_chatgpt_instruct.json \\
        --video-root activitynet/videos --out data/video_chatgpt.jsonl

--format videochat (default): items {"video", "QA": [{"i", "q", "a"}, ...]}; each QA entry is
one user turn ("i" then "q") and one assistant turn ("a"), <video> opening the first user turn.
--format llava: items {"id", "video", "conversations": [{"from", "value"}, ...]}.
Video paths in the output are relative to the output file's folder (or absolute with
--absolute). With --check-videos, items whose video is missing are left out and listed.

The same as `mmtune data convert videochat ...` (this script passes its arguments on).
"""
from __future__ import annotations

import sys

from mmtune.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "videochat", *sys.argv[1:]]))
