"""Readers that turn common instruction-data shapes into mmtune records.

An mmtune record is one JSON object per line:

    {"id": str, "messages": [{"role": "user"|"assistant"|"system", "content": str}, ...],
     "images": [path, ...], "videos": [...], "audios": [...], "meta": {...}}

Media keys are omitted when empty and "meta" is optional. Each medium appears in the message
text as a placeholder (`<image>`, `<video>`, `<audio>`), one per file, in order; media paths are
relative to the JSONL file's directory unless absolute.

Every reader takes `where` (e.g. "data.jsonl:12" or "data.json[3]") and puts it in its
errors, so a bad item among hundreds of thousands can be found and fixed by hand.
`convert_file` converts a whole file. OpenAssistant trees are read by `formats_oasst`
(`oasst_threads`, also importable from here).
"""
from __future__ import annotations

import gzip
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ...batch import MEDIA_TOKENS
from .records import MEDIA_KEYS, PLACEHOLDER_RE, parse_record

ROLES = ("user", "assistant", "system")
# Record field -> its placeholder, from the record format's own tables.
MEDIA = {MEDIA_KEYS[m]: token for m, token in MEDIA_TOKENS.items()}

# Any media placeholder, as the record format counts them.

# "from" values seen in LLaVA / ShareGPT files, mapped to our roles.
_LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_SHAREGPT_ROLES = {**_LLAVA_ROLES, "user": "user", "assistant": "assistant"}


def _field(sample: dict, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """sample[key], checked for presence and type, or a ValueError naming `where` and `key`."""
    if not isinstance(sample, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(sample).__name__}")
    if key not in sample:
        raise ValueError(f"{where}: missing field {key!r}")
    value = sample[key]
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _record_id(sample: dict, where: str) -> str:
    """The item's own id (LLaVA ids may be ints); the source location when there is none."""
    if "id" not in sample:
        return where
    return str(_field(sample, "id", where, (str, int)))


def _turns(turns: list, where: str, field: str, role_key: str, text_key: str,
           roles: dict[str, str]) -> list[dict[str, str]]:
    """Convert a list of {role_key, text_key} turns using the `roles` name mapping."""
    if not turns:
        raise ValueError(f"{where}: field {field!r} is empty")
    messages = []
    for i, turn in enumerate(turns):
        at = f"{where}: {field}[{i}]"
        role = _field(turn, role_key, at)
        if role not in roles:
            raise ValueError(f"{at}: field {role_key!r} is {role!r}; expected one of {sorted(roles)}")
        messages.append({"role": roles[role], "content": _field(turn, text_key, at)})
    return messages


def _make(id_: str, messages: list[dict[str, str]], where: str, media: dict[str, list[str]],
          meta: dict | None = None) -> dict:
    """Assemble a record in canonical key order and check its placeholders match its media."""
    record: dict[str, Any] = {"id": id_, "messages": messages}
    for key in MEDIA:
        paths = media.get(key) or []
        for i, p in enumerate(paths):
            if not isinstance(p, str) or not p:
                raise ValueError(f"{where}: field {key!r}[{i}] must be a non-empty string path")
        n = sum(m["content"].count(MEDIA[key]) for m in messages)
        if n != len(paths):
            raise ValueError(f"{where}: {n} {MEDIA[key]} placeholder(s) in the messages but "
                             f"{len(paths)} file(s) in {key!r}")
        if paths:
            record[key] = list(paths)
    if meta:
        record["meta"] = meta
    return record


def from_llava(sample: dict, where: str) -> dict:
    """LLaVA item {"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}.

    LLaVA already puts "<image>" in the first human turn and it is kept where it is; when an
    image is given without one, "<image>\\n" is prepended to the first user turn so the image
    still has a place in the text.
    """
    messages = _turns(_field(sample, "conversations", where, list), where, "conversations",
                      "from", "value", _LLAVA_ROLES)
    images = []
    if "image" in sample:
        images = [_field(sample, "image", where)]
        if not any("<image>" in m["content"] for m in messages):
            first_user = next((m for m in messages if m["role"] == "user"), None)
            if first_user is None:
                raise ValueError(f"{where}: field 'conversations' has no human turn to hold <image>")
            first_user["content"] = "<image>\n" + first_user["content"]
    return _make(_record_id(sample, where), messages, where, {"images": images})


def from_sharegpt(sample: dict, where: str) -> dict:
    """ShareGPT {"conversations": [{"from", "value"}]}, or {"messages": [{"role", "content"}]}.

    Optional "images"/"videos"/"audios" lists (as in LLaMA-Factory's multimodal ShareGPT) are kept.
    """
    if "conversations" in sample or "messages" not in sample:
        messages = _turns(_field(sample, "conversations", where, list), where, "conversations",
                          "from", "value", _SHAREGPT_ROLES)
    else:
        messages = _turns(_field(sample, "messages", where, list), where, "messages",
                          "role", "content", {r: r for r in ROLES})
    media = {k: _field(sample, k, where, list) for k in MEDIA if k in sample}
    return _make(_record_id(sample, where), messages, where, media)


def _one_turn(sample: dict, where: str, prompt: str, extra: str, answer: str,
              meta: dict | None = None) -> dict:
    """One user turn (prompt, then a blank line and the extra text when there is any) and one
    assistant turn: the shape Alpaca and Dolly share under different field names."""
    user = _field(sample, prompt, where)
    more = _field(sample, extra, where) if sample.get(extra) is not None else ""
    if more:
        user += "\n\n" + more
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": _field(sample, answer, where)}]
    return _make(_record_id(sample, where), messages, where, {}, meta)


def from_alpaca(sample: dict, where: str) -> dict:
    """Alpaca {"instruction", "input"?, "output"}: one user turn, one assistant turn."""
    return _one_turn(sample, where, "instruction", "input", "output")


def from_dolly(sample: dict, where: str) -> dict:
    """databricks-dolly-15k {"instruction", "context", "response", "category"}.

    One user turn, the instruction followed by the context after a blank line when the context is
    not empty, and one assistant turn, the response. The category goes to meta.category.
    """
    meta = ({"category": _field(sample, "category", where)}
            if sample.get("category") is not None else None)
    return _one_turn(sample, where, "instruction", "context", "response", meta)


def placeholders_in(*texts: str) -> list[str]:
    """The media placeholders (`<image>`, `<video>`, `<audio>`) found in `texts`, in order.

    Text-only datasets can contain them literally (e.g. an answer about the HTML `<video>`
    element). The record format would read each one as a media slot, so converters of text
    data leave such items out rather than produce records that training rejects.
    """
    return [m.group() for text in texts for m in PLACEHOLDER_RE.finditer(text)]


def from_mmtune(sample: dict, where: str) -> dict:
    """An mmtune record, validated and returned in canonical form (empty media keys dropped).

    The record itself (fields, messages, roles, placeholder counts) is checked by
    `records.parse_record`, the same function that reads training data, so a file this accepts
    is one training accepts. On top of that a converted file must be self-describing: "id" is
    required and a string, "meta" an object, media lists lists of non-empty paths. Media paths
    are returned exactly as given (not resolved against any directory).
    """
    checked = parse_record(sample, where, Path())
    id_ = _field(sample, "id", where)
    meta = _field(sample, "meta", where, dict) if "meta" in sample else None
    media = {k: _field(sample, k, where, list) for k in MEDIA if k in sample}
    for key, paths in media.items():
        for i, p in enumerate(paths):
            if not p:
                raise ValueError(f"{where}: field {key!r}[{i}] must be a non-empty string path")
    messages = [{"role": m["role"], "content": m["content"]} for m in checked.messages]
    record: dict[str, Any] = {"id": id_, "messages": messages}
    record.update({k: list(v) for k, v in media.items() if v})
    if meta:
        record["meta"] = meta
    return record


FORMATS: dict[str, Callable[[dict, str], dict]] = {
    "llava": from_llava,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "dolly": from_dolly,
    "mmtune": from_mmtune,
}

# The text fields of the text-only formats: convert_file leaves out items with a media
# placeholder in any of them (see placeholders_in).
_TEXT_FIELDS = {"alpaca": ("instruction", "input", "output"),
                "dolly": ("instruction", "context", "response")}


def _open_bytes(path: Path, compressed: bool):
    """Bytes, decoded by the caller: a bad byte then names its line, not a chunk's offset."""
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def _json_object(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_json_or_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield (where, object) from a .json file holding a list, or a .jsonl file.

    `where` is "file:line" for JSONL and "file[index]" for a JSON list. A .json file is loaded
    whole (LLaVA's files are single JSON lists, up to ~1 GB); JSONL is streamed. Either may be
    gzipped (`.json.gz`, `.jsonl.gz`, as OpenAssistant publishes its files).
    """
    path = Path(path)
    name = path.name.lower()
    compressed = name.endswith(".gz")
    suffix = Path(name[:-3]).suffix if compressed else path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with _open_bytes(path, compressed) as f:
                for lineno, raw in enumerate(f, 1):
                    where = f"{path}:{lineno}"
                    line = _utf8(raw, where)
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
                    yield where, _json_object(obj, where)
        elif suffix == ".json":
            with _open_bytes(path, compressed) as f:
                text = _utf8(f.read(), str(path))
                try:
                    items = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(items, list):
                raise ValueError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
            for i, obj in enumerate(items):
                yield f"{path}[{i}]", _json_object(obj, f"{path}[{i}]")
        else:
            kind = suffix + ".gz" if compressed else suffix
            raise ValueError(f"{path}: unsupported file type {kind or '(none)'!r}; expected .json or "
                             ".jsonl (optionally gzipped)")
    except (gzip.BadGzipFile, EOFError) as e:  # not gzip, or cut short by a partial download
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None


def convert(path: str | os.PathLike, fmt: str) -> Iterator[dict]:
    """Read `path` and convert every item with the reader registered for `fmt` in FORMATS.

    Media paths are passed through unchanged; see `rebase_media` to move them.
    """
    reader = _reader(fmt)
    for where, obj in read_json_or_jsonl(path):
        yield reader(obj, where)


def _reader(fmt: str) -> Callable[[dict, str], dict]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[fmt]


def rebase_media(record: dict, src_root: str | os.PathLike, out_dir: str | os.PathLike,
                 absolute: bool = False) -> dict:
    """Return `record` with media paths relative to `src_root` rewritten for a file in `out_dir`.

    Records are read relative to their JSONL file's directory, so a converter writing to
    `out_dir` must re-express paths that the source gave relative to its image folder.
    Absolute source paths stay as they are. Paths are made absolute without resolving symlinks
    (no file-system calls, which keeps this cheap over ~665K records).
    """
    src_root, out_dir = os.path.abspath(src_root), os.path.abspath(out_dir)
    out = dict(record)
    for key in MEDIA:
        if key in record:
            out[key] = [p if os.path.isabs(p)
                        else os.path.normpath(os.path.join(src_root, p)) if absolute
                        else Path(os.path.relpath(os.path.join(src_root, p), out_dir)).as_posix()
                        for p in record[key]]
    return out


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Write records one per line (UTF-8, not ASCII-escaped); return how many were written.

    Writes to a temporary file and renames it, so an interrupted conversion never leaves a
    truncated file that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def convert_file(input: str | os.PathLike, out: str | os.PathLike, fmt: str, limit: int | None = None,
                 id_prefix: str | None = None, show_skipped: int = 10) -> dict[str, Any]:
    """Convert the items of `input` with FORMATS[fmt] and write them to `out` (see write_jsonl).

    Only the first `limit` items are read when it is given. Items of a text-only format (alpaca,
    dolly) with a media placeholder in their text are left out; the first `show_skipped` of
    them are listed on stderr. With `id_prefix`, record ids are "<id_prefix>-<n>", n being the
    item's 0-based position in the file. Returns the counts {"read", "skipped", "written",
    "categories": Counter of the written records' meta.category, "(none)" for none}. Bad input
    raises ValueError naming the item, a failed write OSError; `out` is then left untouched.
    """
    reader, text_fields = _reader(fmt), _TEXT_FIELDS.get(fmt, ())
    counts: dict[str, Any] = {"read": 0, "skipped": 0, "categories": Counter()}

    def records() -> Iterator[dict]:
        for n, (where, item) in enumerate(read_json_or_jsonl(input)):
            if limit is not None and n >= limit:
                return
            counts["read"] += 1
            found = placeholders_in(*(item[k] for k in text_fields if isinstance(item.get(k), str)))
            if found:
                counts["skipped"] += 1
                if counts["skipped"] <= show_skipped:
                    print(f"left out: {where}: media placeholder {found[0]} in the text", file=sys.stderr)
                continue
            record = reader(item, where)
            if id_prefix is not None:
                record = {**record, "id": f"{id_prefix}-{n}"}
            counts["categories"][record.get("meta", {}).get("category", "(none)")] += 1
            yield record

    counts["written"] = write_jsonl(records(), out)
    return counts


def __getattr__(name: str) -> Any:
    """Re-export formats_oasst's readers, imported on first use (formats_oasst imports this module)."""
    if name in ("oasst_threads", "oasst_tree_messages"):
        from . import oasst as formats_oasst
        return getattr(formats_oasst, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
