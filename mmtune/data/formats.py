"""Readers that turn common instruction-data shapes into mmtune records.

An mmtune record is one JSON object per line:

    {"id": str, "messages": [{"role": "user"|"assistant"|"system", "content": str}, ...],
     "images": [path, ...], "videos": [...], "audios": [...], "meta": {...}}

Media keys are omitted when empty and "meta" is optional. Each medium appears in the message
text as a placeholder (`<image>`, `<video>`, `<audio>`), one per file, in order; media paths are
relative to the JSONL file's directory unless absolute.

Every reader takes `where` (e.g. "data.jsonl:12" or "data.json[3]") and puts it in its
errors, so a bad item among hundreds of thousands can be found and fixed by hand.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .records import parse_record

ROLES = ("user", "assistant", "system")
MEDIA = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}

# Any media placeholder, as the record format counts them.
PLACEHOLDER_RE = re.compile("|".join(re.escape(t) for t in MEDIA.values()))

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


def from_alpaca(sample: dict, where: str) -> dict:
    """Alpaca {"instruction", "input"?, "output"}: one user turn, one assistant turn."""
    user = _field(sample, "instruction", where)
    extra = _field(sample, "input", where) if sample.get("input") is not None else ""
    if extra:
        user += "\n\n" + extra
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": _field(sample, "output", where)}]
    return _make(_record_id(sample, where), messages, where, {})


def from_dolly(sample: dict, where: str) -> dict:
    """databricks-dolly-15k {"instruction", "context", "response", "category"}.

    One user turn, the instruction followed by the context after a blank line when the context is
    not empty, and one assistant turn, the response. The category goes to meta.category.
    """
    user = _field(sample, "instruction", where)
    context = _field(sample, "context", where) if sample.get("context") is not None else ""
    if context:
        user += "\n\n" + context
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": _field(sample, "response", where)}]
    meta = ({"category": _field(sample, "category", where)}
            if sample.get("category") is not None else None)
    return _make(_record_id(sample, where), messages, where, {}, meta)


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


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def oasst_tree_messages(tree: dict, where: str) -> Iterator[tuple[str, dict]]:
    """Flatten one line of an OpenAssistant `*.trees.jsonl` file into (where, message) pairs.

    A tree line is {"message_tree_id", "tree_state", "prompt": message with nested "replies"}.
    Messages come out depth-first, as in the `*.messages.jsonl` files, without "replies" and
    with "parent_id" and "message_tree_id" set from their place in the tree. `where` of each
    names its path, e.g. "trees.jsonl:4: prompt.replies[1].replies[0]".
    """
    tree_id = _field(tree, "message_tree_id", where)
    if tree.get("prompt") is None:  # "prompt" is optional in the export schema
        return
    stack: list[tuple[str, Any, str | None]] = [(f"{where}: prompt", tree["prompt"], None)]
    while stack:
        at, node, parent_id = stack.pop()
        if not isinstance(node, dict):
            raise ValueError(f"{at}: expected a JSON object, got {type(node).__name__}")
        message_id = _field(node, "message_id", at)
        replies = _field(node, "replies", at, list) if node.get("replies") is not None else []
        message = {k: v for k, v in node.items() if k != "replies"}
        message["parent_id"] = parent_id
        message["message_tree_id"] = tree_id
        yield at, message
        stack.extend((f"{at}.replies[{i}]", replies[i], message_id) for i in reversed(range(len(replies))))


def _oasst_check(message: dict, at: str) -> None:
    """Check the fields oasst_threads reads, so a bad row is reported with its location."""
    _field(message, "message_id", at)
    if message.get("parent_id") is not None:  # null or absent: the tree's first message
        _field(message, "parent_id", at)
    role = _field(message, "role", at)
    if role not in _OASST_ROLES:
        raise ValueError(f"{at}: field 'role' is {role!r}; expected one of {sorted(_OASST_ROLES)}")
    _field(message, "text", at)
    for key, kind in (("message_tree_id", str), ("lang", str), ("rank", int), ("deleted", bool),
                      ("review_result", bool)):
        if message.get(key) is not None:
            _field(message, key, at, kind)


def oasst_threads(messages: Iterable[dict | tuple[str, dict]], where: str, lang: str | None = "en",
                  best_only: bool = True, stats: Counter | None = None) -> Iterator[dict]:
    """OpenAssistant (oasst1/oasst2) message trees -> one record per conversation thread.

    `messages` is the flat message table (rows of a `*.messages.jsonl` file: "message_id",
    "parent_id", "role" "prompter"|"assistant", "text", "lang", "rank", "deleted",
    "review_result", ...), in any order. Lines of a `*.trees.jsonl` file (nested "replies") are
    accepted too and flattened. Items are dicts, located in errors as `where[i]`, or
    (location, dict) pairs such as `read_json_or_jsonl` yields, located as given.

    Trees are rebuilt from "parent_id". A message is left out, with everything below it, when it
    is deleted, failed review (`review_result` false), is in another language than `lang` (None
    keeps all), or contains a media placeholder. Prompter messages that got no (kept) answer are
    pruned, so every thread ends with an assistant message. Siblings are ordered by "rank"
    (0 = preferred; null ranks last; ties keep input order). With `best_only`, one thread per
    tree follows the first sibling at every step; otherwise every root-to-leaf path is a thread,
    best first. Roles: prompter -> user.

    Records: {"id": the last message's id, "messages", "meta": {"message_tree_id", "lang"}}, in
    the order the trees' first messages appear. Roles must alternate, starting with a prompter;
    anything else is an error naming the message's location. If `stats` is given it is filled
    with counts ("messages", "trees", "threads", "trees without an answer", "skipped: <why>")
    once the iterator is exhausted.
    """
    stats = Counter() if stats is None else stats
    rows: dict[str, tuple[str, dict]] = {}  # message_id -> (where, message), in input order
    children: dict[str | None, list[str]] = {}
    for i, item in enumerate(messages):
        at, obj = item if isinstance(item, tuple) else (f"{where}[{i}]", item)
        if isinstance(obj, dict) and "prompt" in obj and "message_id" not in obj:
            flat: Iterable[tuple[str, dict]] = oasst_tree_messages(obj, at)
        else:
            flat = [(at, obj)]
        for at, message in flat:
            _oasst_check(message, at)
            message_id = message["message_id"]
            if message_id in rows:
                raise ValueError(f"{at}: message_id {message_id!r} already seen at {rows[message_id][0]}")
            rows[message_id] = (at, message)
            children.setdefault(message.get("parent_id"), []).append(message_id)
    stats["messages"] += len(rows)

    def skip_reason(message: dict) -> str | None:
        if message.get("deleted"):
            return "deleted"
        if message.get("review_result") is False:
            return "failed review"
        if lang is not None and message.get("lang") != lang:
            return "other language"
        if placeholders_in(message["text"]):
            return "media placeholder in text"
        return None

    def below(message_id: str) -> int:
        n, stack = 0, list(children.get(message_id, []))
        while stack:
            n += 1
            stack.extend(children.get(stack.pop(), []))
        return n

    def rank(message_id: str) -> tuple[bool, int]:
        r = rows[message_id][1].get("rank")
        return (r is None, r or 0)

    reached = 0
    for root in children.get(None, []):
        stats["trees"] += 1
        reached += 1 + below(root)
        kept: list[str] = []  # this tree's kept messages, parents before children
        stack = [root]
        while stack:
            message_id = stack.pop()
            at, message = rows[message_id]
            reason = skip_reason(message)
            if reason:
                stats[f"skipped: {reason}"] += 1
                n = below(message_id)
                if n:
                    stats["skipped: below a skipped message"] += n
                continue
            parent = message.get("parent_id")
            if parent is None and message["role"] != "prompter":
                raise ValueError(f"{at}: a tree must start with a 'prompter' message, got {message['role']!r}")
            if parent is not None and message["role"] == rows[parent][1]["role"]:
                raise ValueError(f"{at}: {message['role']!r} message replies to a {message['role']!r} "
                                 "message; roles must alternate")
            kept.append(message_id)
            stack.extend(reversed(children.get(message_id, [])))
        if not kept:  # the first message itself was left out
            continue
        live: dict[str, list[str]] = {}  # kept message -> its children that lead to an answer
        for message_id in reversed(kept):
            kids = [c for c in children.get(message_id, []) if c in live]
            if kids or rows[message_id][1]["role"] == "assistant":
                live[message_id] = sorted(kids, key=rank)
        if root not in live:
            stats["trees without an answer"] += 1
            continue
        if best_only:
            paths = [[root]]
            while live[paths[0][-1]]:
                paths[0].append(live[paths[0][-1]][0])
        else:
            paths, todo = [], [[root]]
            while todo:
                path = todo.pop()
                kids = live[path[-1]]
                if not kids:
                    paths.append(path)
                todo.extend(path + [c] for c in reversed(kids))
        root_message = rows[root][1]
        meta = {"message_tree_id": root_message.get("message_tree_id") or root}
        if root_message.get("lang") is not None:
            meta["lang"] = root_message["lang"]
        for path in paths:
            turns = [{"role": _OASST_ROLES[rows[m][1]["role"]], "content": rows[m][1]["text"]}
                     for m in path]
            stats["threads"] += 1
            yield _make(path[-1], turns, rows[path[-1]][0], {}, dict(meta))
    if len(rows) > reached:  # rows whose parent is not in the table, and rows below them
        stats["skipped: parent missing"] += len(rows) - reached


FORMATS: dict[str, Callable[[dict, str], dict]] = {
    "llava": from_llava,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "dolly": from_dolly,
    "mmtune": from_mmtune,
}


def _open_text(path: Path, compressed: bool):
    return gzip.open(path, "rt", encoding="utf-8") if compressed else path.open(encoding="utf-8")


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
            with _open_text(path, compressed) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{lineno}"
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
                    if not isinstance(obj, dict):
                        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                    yield where, obj
        elif suffix == ".json":
            with _open_text(path, compressed) as f:
                try:
                    items = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(items, list):
                raise ValueError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
            for i, obj in enumerate(items):
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}[{i}]: expected a JSON object, got {type(obj).__name__}")
                yield f"{path}[{i}]", obj
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
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    reader = FORMATS[fmt]
    for where, obj in read_json_or_jsonl(path):
        yield reader(obj, where)


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
