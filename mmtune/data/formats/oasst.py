"""OpenAssistant (oasst1/oasst2) message trees -> mmtune records, one per conversation thread.

Split out of `formats`, whose helpers it uses; `formats` re-exports `oasst_threads` and
`oasst_tree_messages` so they can be imported from either module.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Iterator

from .readers import _field, _make, placeholders_in

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
