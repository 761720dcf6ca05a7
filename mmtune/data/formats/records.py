"""The JSONL record format, read strictly: every problem names its file and line."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from ...batch import MEDIA_TOKENS, Dropped
from ..errors import RecordError

T = TypeVar("T")

# One placeholder per medium in message content; the collator expands each into the
# number of feature vectors the model's encoder + projector produce for it.
PLACEHOLDER_RE = re.compile("|".join(re.escape(t) for t in MEDIA_TOKENS.values()))
ROLES = ("system", "user", "assistant")
MEDIA_KEYS = {"image": "images", "video": "videos", "audio": "audios"}


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
                              f"messages but {len(paths)} entries in '{key}'", "placeholder_mismatch")
        if paths:
            media[modality] = [str(base_dir / p) for p in paths]
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError(f"{where}: field 'meta' must be an object")
    return Record(id=str(obj.get("id", where)), messages=messages, media=media, source=where, meta=meta)


def read_records(path: str | Path, skip_bad: bool = False) -> tuple[list[Record], list[Dropped]]:
    """All records of a JSONL file, and the bad lines skipped (when `skip_bad`)."""
    return read_jsonl(path, parse_record, skip_bad)


def read_jsonl(path: str | Path, parse: Callable[[object, str, Path], T],
               skip_bad: bool = False) -> tuple[list[T], list[Dropped]]:
    """`parse(obj, "file:line", base_dir)` on every line of a JSONL file; a RecordError (or a
    line that is not UTF-8 or not JSON) stops the read, or with `skip_bad` is returned as a
    `Dropped` (its `kind` says why). A file with no record at all is an error either way:
    a run on it could only fail later, without naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"data file {path} is a directory, not a JSONL file")
    records, skipped = [], []
    # Bytes, decoded line by line: one bad byte names its line instead of ending the read.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            obj = None
            try:
                try:
                    # A byte-order mark opens files saved by some Windows editors: not data.
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise RecordError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                      f"{e.start + 1})", "not_utf8") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(f"{where}: malformed JSON ({e.msg}, column {e.colno})",
                                      "malformed_json") from None
                records.append(parse(obj, where, path.parent))
            except RecordError as e:
                rid = str(obj["id"]) if isinstance(obj, dict) and "id" in obj else ""
                if not skip_bad:
                    raise (e.for_record(rid) if rid else e) from None
                skipped.append(Dropped(rid, str(e), e.reason))
    if not records:
        detail = f"all {len(skipped)} line(s) are bad, e.g. {skipped[0]}" if skipped else "it is empty"
        raise RecordError(f"data file {path} has no records: {detail}")
    return records, skipped
