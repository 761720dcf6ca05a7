"""The JSONL record format, read strictly: every problem names its file and line."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from ...batch import MEDIA_TOKENS

T = TypeVar("T")

# One placeholder per medium in message content; the collator expands each into the
# number of feature vectors the model's encoder + projector produce for it.
PLACEHOLDER_RE = re.compile("|".join(re.escape(t) for t in MEDIA_TOKENS.values()))
ROLES = ("system", "user", "assistant")
MEDIA_KEYS = {"image": "images", "video": "videos", "audio": "audios"}


class RecordError(ValueError):
    pass


@dataclass
class Record:
    id: str
    messages: list[dict]
    media: dict[str, list[str]]  # modality -> absolute paths, in placeholder order
    source: str  # "file:line", for error messages
    meta: dict = field(default_factory=dict)


def parse_record(obj: object, where: str, base_dir: Path) -> Record:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object")
    unknown = set(obj) - {"id", "messages", "meta", *MEDIA_KEYS.values()}
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {sorted(unknown)}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}: field 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RecordError(f"{where}: messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}")
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    first_answer = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first_answer is not None and (first_user is None or first_answer < first_user):
        raise RecordError(f"{where}: messages[{first_answer}] is an assistant turn before any user turn")
    media: dict[str, list[str]] = {}
    for modality, key in MEDIA_KEYS.items():
        paths = obj.get(key) or []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise RecordError(f"{where}: field '{key}' must be a list of paths")
        n_slots = sum(m["content"].count(MEDIA_TOKENS[modality]) for m in messages)
        if n_slots != len(paths):
            raise RecordError(f"{where}: {n_slots} {MEDIA_TOKENS[modality]} placeholder(s) in the "
                              f"messages but {len(paths)} entries in '{key}'")
        if paths:
            media[modality] = [str(base_dir / p) for p in paths]
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError(f"{where}: field 'meta' must be an object")
    return Record(id=str(obj.get("id", where)), messages=messages, media=media, source=where, meta=meta)


def read_records(path: str | Path, skip_bad: bool = False) -> tuple[list[Record], list[str]]:
    """All records of a JSONL file, and the list of problems skipped (when `skip_bad`)."""
    return read_jsonl(path, parse_record, skip_bad)


def read_jsonl(path: str | Path, parse: Callable[[object, str, Path], T],
               skip_bad: bool = False) -> tuple[list[T], list[str]]:
    """`parse(obj, "file:line", base_dir)` on every line of a JSONL file; a RecordError (or
    malformed JSON) stops the read, or with `skip_bad` is counted in the returned list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    records, skipped = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
                records.append(parse(obj, where, path.parent))
            except RecordError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
    return records, skipped
