"""The instruction an instruction-aware projector reads for each medium, and single-turn splits.

InstructBLIP feeds the user's instruction to the Q-Former as well as to the LLM, so the visual
tokens it extracts depend on the question. For a medium, the instruction is the text of the
user turn holding its placeholder, placeholders removed.
"""
from __future__ import annotations

from dataclasses import replace

from ...batch import MEDIA_TOKENS
from ..formats.records import PLACEHOLDER_RE, Record


def medium_instructions(messages: list[dict], modality: str) -> list[str]:
    """One instruction per `modality` placeholder, in placeholder order."""
    token = MEDIA_TOKENS[modality]
    out: list[str] = []
    for m in messages:
        if m["role"] != "user":
            continue
        text = " ".join(PLACEHOLDER_RE.sub(" ", m["content"]).split())
        out += [text] * m["content"].count(token)
    return out


def split_turns(record: Record) -> list[Record]:
    """A multi-turn conversation -> one record per (user, assistant) exchange, each opening
    with the conversation's media placeholders. InstructBLIP trains on single instructions:
    in a multi-turn record the Q-Former could read only the question of the turn that holds
    the image, and every later answer would be learned without its own question's features."""
    pairs = [(i, i + 1) for i, m in enumerate(record.messages[:-1])
             if m["role"] == "user" and record.messages[i + 1]["role"] == "assistant"]
    if len(pairs) <= 1:
        return [record]
    placeholders = "".join(PLACEHOLDER_RE.findall(" ".join(m["content"] for m in record.messages)))
    system = [m for m in record.messages if m["role"] == "system"]
    out = []
    for k, (u, a) in enumerate(pairs):
        question = " ".join(PLACEHOLDER_RE.sub(" ", record.messages[u]["content"]).split())
        user = {"role": "user", "content": f"{placeholders}\n{question}" if placeholders else question}
        out.append(replace(record, id=f"{record.id}_t{k}", messages=system + [user, record.messages[a]],
                           source=f"{record.source} (turn {k})"))
    return out

