"""Video datasets Video-LLaMA trains on -> mmtune records, and the converter command line.

- WebVid (video-caption pairs): CSV rows `videoid, contentUrl, duration, page_dir, name`;
  the clip lives at `<page_dir>/<videoid>.mp4` under the download folder (the layout of
  WebVid's download script and of Video-LLaMA's loader). One caption record per row.
- VideoChat instructions (`videochat_instruct_11k.json`): `{"video", "QA": [{"i"?, "q", "a"}]}`,
  one user/assistant exchange per QA entry; "i" is an instruction VideoChat puts before "q".
- LLaVA-style video instructions (Video-ChatGPT, Valley, ...): `{"id", "video",
  "conversations": [{"from": "human"|"gpt", "value"}]}` with `<video>` in the first human turn.

Readers follow `formats`' conventions: `reader(item, where) -> record`, errors name `where`.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from .readers import _LLAVA_ROLES, _field, _make, _record_id, _turns, read_json_or_jsonl

VIDEO = "<video>"
WEBVID_COLUMNS = ("videoid", "page_dir", "name")  # the columns the conversion needs
# Short caption instructions, one picked per row by position (deterministic, varied).
CAPTION_PROMPTS: tuple[str, ...] = ("Describe this video briefly.", "What happens in the video?",
                                    "Write a short caption for the video.", "Summarize the clip in a few words.")


def read_webvid_csv(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, row) for every data row; `where` is "file:line" (the header is line 1)."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in WEBVID_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {missing}; got {reader.fieldnames}")
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def from_webvid(row: dict, where: str, index: int = 0) -> dict:
    """A WebVid CSV row -> one caption record (instruction, then the clip's caption)."""
    video_id, page_dir, caption = (_field(row, k, where).strip() for k in WEBVID_COLUMNS)
    if not video_id or not page_dir or not caption:
        raise ValueError(f"{where}: empty videoid, page_dir or name")
    prompt = CAPTION_PROMPTS[index % len(CAPTION_PROMPTS)]
    messages = [{"role": "user", "content": f"{VIDEO}\n{prompt}"}, {"role": "assistant", "content": caption}]
    meta = {k: row[k] for k in ("contentUrl", "duration") if row.get(k)}
    return _make(video_id, messages, where, {"videos": [f"{page_dir}/{video_id}.mp4"]}, meta)


def from_videochat(item: dict, where: str) -> dict:
    """A VideoChat item -> one record; `<video>` opens the first user turn."""
    qa = _field(item, "QA", where, list)
    if not qa:
        raise ValueError(f"{where}: field 'QA' is empty")
    video = _field(item, "video", where)
    messages = []
    for i, turn in enumerate(qa):
        at = f"{where}: QA[{i}]"
        parts = [_field(turn, k, at).strip() for k in ("i", "q") if turn.get(k) is not None]
        question = "\n".join(p for p in parts if p)
        if not question:
            raise ValueError(f"{at}: empty question (both 'i' and 'q' are empty)")
        messages += [{"role": "user", "content": f"{VIDEO}\n{question}" if i == 0 else question},
                     {"role": "assistant", "content": _field(turn, "a", at)}]
    return _make(Path(video).stem, messages, where, {"videos": [video]})


def from_llava_video(item: dict, where: str) -> dict:
    """A LLaVA-style video item; `<video>\\n` is prepended to the first human turn when the
    conversation holds no placeholder, so the clip still has a place in the text."""
    messages = _turns(_field(item, "conversations", where, list), where, "conversations", "from", "value",
                      _LLAVA_ROLES)
    video = _field(item, "video", where)
    if not any(VIDEO in m["content"] for m in messages):
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise ValueError(f"{where}: field 'conversations' has no human turn to hold {VIDEO}")
        first["content"] = f"{VIDEO}\n{first['content']}"
    return _make(_record_id(item, where), messages, where, {"videos": [video]})


# --video-format name -> (items of the input file, reader), for `mmtune data convert`
WEBVID = {"webvid": (read_webvid_csv, from_webvid)}
VIDEO_INSTRUCT = {"videochat": (read_json_or_jsonl, lambda item, where, index: from_videochat(item, where)),
                  "llava": (read_json_or_jsonl, lambda item, where, index: from_llava_video(item, where))}
